"""run_summarization.main(): a CPU smoke run for each neighbour encoding and tuning method, and argument checks."""

import json
from pathlib import Path

import pytest

import run_summarization
from processing.data.sample_data import generate_sample
from processing.data.neighbor_inputs import processor_neighbor_inputs

TINY_CLIP_JSON = Path(__file__).resolve().parents[1] / "demo" / "tiny_clip.json"


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    generate_sample(root, num_pages=30, seed=0)
    return root


def base_args(sample_dir: Path, output_dir: Path) -> list[str]:
    return [
        "--train_files", str(sample_dir / "wikiweb2m-sample.tfrecord.gz"), "--image_dir", str(sample_dir / "images"),
        "--config_overrides", "hidden_size=32,num_hidden_layers=4,ffn_dim=64,num_attention_heads=4,max_position_embeddings=512",
        "--tokenizer_vocab_size", "400", "--neighbor_encoder_config", str(TINY_CLIP_JSON),
        "--neighbor_encoder_pretrained", "none", "--embedding_cache_dir", str(sample_dir / "cache"),
        "--output_dir", str(output_dir), "--do_train", "--do_eval", "--do_predict", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_train_samples", "8",
        "--max_eval_samples", "4", "--max_predict_samples", "4", "--max_source_length", "128",
        "--max_target_length", "24", "--generation_max_new_tokens", "4", "--report_to", "none",
        "--save_strategy", "no", "--cross_attention_interval", "2", "--num_virtual_tokens", "3",
        "--use_cpu", "--seed", "0",
    ]


@pytest.mark.parametrize(
    "encoding,position,tuning",
    [
        ("sa_te", "sequence", "full"),
        ("sa_e", "laplacian", "full"),
        ("ca_e", "gnn", "full"),
        ("sa_e", "sequence", "lora"),
        ("sa_e", "none", "prefix"),
        ("sa_e", "none", "prompt"),
        ("ca_e", "sequence", "flamingo"),
    ],
)
def test_main_smoke(sample_dir, tmp_path, encoding, position, tuning, capsys):
    output_dir = tmp_path / "out"
    metrics = run_summarization.main(base_args(sample_dir, output_dir) + [
        "--context", "all", "--neighbor_encoding", encoding, "--position_encoding", position, "--tuning", tuning,
    ])
    for key in ("eval_loss", "eval_bleu4", "eval_rougeL", "eval_cider", "predict_rougeL"):
        assert key in metrics, key
    printed = capsys.readouterr().out
    assert "trainable parameters:" in printed
    trainable, total = (int(x.replace(",", "")) for x in printed.split("trainable parameters: ")[1].split("\n")[0].split(" / total: "))
    assert (trainable == total) == (tuning == "full")
    predictions = [json.loads(line) for line in (output_dir / "predict_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all({"prediction", "reference"} <= set(p) for p in predictions)
    assert (output_dir / "README.md").exists() and (output_dir / "config.json").exists()


def test_json_arguments_and_validation(sample_dir, tmp_path):
    args = base_args(sample_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="--tuning flamingo .* needs --neighbor_encoding ca_e"):
        run_summarization.main(args + ["--tuning", "flamingo", "--neighbor_encoding", "sa_e"])
    with pytest.raises(ValueError, match="--position_encoding laplacian needs neighbours .* --context section_only"):
        run_summarization.main(args + ["--context", "section_only", "--position_encoding", "laplacian"])
    with pytest.raises(ValueError, match="--context must be one of"):
        run_summarization.main(args + ["--context", "everything"])
    for flag in ("--resume_from_checkpoint", "--model_name_or_path", "--image_dir"):
        with pytest.raises(FileNotFoundError, match=f"{flag} .*missing: no such directory"):
            run_summarization.main(args + [flag, str(tmp_path / "missing")])
    config_file = tmp_path / "args.json"
    config_file.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "tuning": "flamingo", "do_train": True,
                                       "train_files": "x", "config_overrides": "hidden_size=32"}))
    with pytest.raises(ValueError, match="--tuning flamingo"):
        run_summarization.main([str(config_file)])


# ------------------------------------------------------------------ data parallel and resume (subprocesses)

REPO = Path(__file__).resolve().parents[1]


def deterministic_args(sample_dir: Path, output_dir: Path) -> list[str]:
    """Dropout off, sequential sampling, a deterministic position encoding (LPE flips signs at random in training)."""
    args = base_args(sample_dir, output_dir)
    args[args.index("--config_overrides") + 1] += ",dropout=0.0,attention_dropout=0.0"
    for flag in ("--do_eval", "--do_predict", "--use_cpu"):
        args.remove(flag)
    args[args.index("--max_steps") + 1] = "4"
    args[args.index("--max_train_samples") + 1] = "16"
    return args + ["--context", "all", "--neighbor_encoding", "sa_e", "--position_encoding", "sequence",
                   "--logging_steps", "1"]


def run_script(args: list[str], launcher: list[str] = ()) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [*launcher, str(REPO / "run_summarization.py"), *args] if launcher else [
        sys.executable, str(REPO / "run_summarization.py"), *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def logged_losses(output_dir: Path) -> list[tuple[int, float, float]]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [(h["step"], h["loss"], h["grad_norm"]) for h in state["log_history"] if "loss" in h]


def checkpoints(output_dir: Path) -> Path:
    """The Trainer's checkpoint folder of a run (beside its Hub folder)."""
    return Path(f"{output_dir}-checkpoints")


def final_weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(output_dir / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def realwiki_args(realwiki_dir: Path, output_dir: Path, cache_dir: Path) -> list[str]:
    """Real pages, SA-E with the Laplacian position encoding (random sign flips while training), an odd number of
    training samples (9: with a global batch of 4, every epoch ends on a remainder) and of eval / predict samples
    (7: the last batch of a 2-process prediction is topped up with copies). Dropout off; `init_std` large enough that
    a barely trained model writes a different summary for each section (so the order of predictions shows)."""
    return [
        "--train_files", str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz"), "--image_dir", str(realwiki_dir / "images"),
        "--config_overrides", "hidden_size=32,num_hidden_layers=2,ffn_dim=64,num_attention_heads=4,"
        "max_position_embeddings=512,dropout=0.0,attention_dropout=0.0,init_std=0.5",
        "--tokenizer_vocab_size", "400", "--neighbor_encoder_config", str(TINY_CLIP_JSON),
        "--neighbor_encoder_pretrained", "none", "--embedding_cache_dir", str(cache_dir), "--output_dir", str(output_dir),
        "--context", "all", "--neighbor_encoding", "sa_e", "--position_encoding", "laplacian",
        "--do_train", "--do_eval", "--do_predict", "--max_steps", "5", "--max_train_samples", "9",
        "--max_eval_samples", "7", "--max_predict_samples", "7", "--per_device_eval_batch_size", "2",
        "--dataloader_drop_last", "--max_source_length", "128", "--max_target_length", "24",
        "--generation_max_new_tokens", "4", "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no",
        "--seed", "0",
    ]


def test_two_processes_match_one_process_on_real_pages(realwiki_dir, tmp_path):
    """`accelerate launch --config_file launch/ddp_cpu.yaml` (2 processes, gloo) equals 1 process at the same global
    batch, step for step, on real pages with LPE and random sampling, across epoch boundaries; its eval / predict
    write each prediction once, in order, equal to 1 process's; its log holds each INFO line once.

    Before: LPE sign flips came from each process's own generator (the losses differed from step 1), evaluation
    generated on the unwrapped model shard by shard, and every process logged."""
    import shutil
    import sys

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    one, two, cache = tmp_path / "one", tmp_path / "two", tmp_path / "cache"
    run_script(realwiki_args(realwiki_dir, one, cache) + ["--per_device_train_batch_size", "4"])
    log = run_script(realwiki_args(realwiki_dir, two, cache) + ["--per_device_train_batch_size", "2"], launcher=[
        accelerate, "launch", "--config_file", str(REPO / "launch" / "ddp_cpu.yaml"),
        "--main_process_port", str(free_port()),
    ])
    single, double = logged_losses(one), logged_losses(two)
    assert [s for s, _, _ in single] == [s for s, _, _ in double] == [1, 2, 3, 4, 5]
    for (_, loss_1, norm_1), (_, loss_2, norm_2) in zip(single, double):
        assert abs(loss_1 - loss_2) < 1e-4 and abs(norm_1 - norm_2) < 1e-4, (single, double)
    assert len({loss for _, loss, _ in single}) == 5  # the steps saw different batches
    # Attention is invariant to the key bias: its true gradient is zero, and Adam turns the float noise left in it
    # into steps of about the learning rate (2e-5 here). Every other weight agrees to float rounding.
    weights = [{k: v for k, v in final_weights(out).items() if not k.endswith("k_proj.bias")} for out in (one, two)]
    assert_same_weights(*weights, atol=1e-6)

    for split in ("eval", "predict"):
        rows = [[json.loads(line) for line in (out / f"{split}_predictions.jsonl").read_text().splitlines()]
                for out in (one, two)]
        keys = [(row["page"], row["section"]) for row in rows[1]]
        assert len(keys) == len(set(keys)) == 7, keys  # each once: the padding copies dropped
        assert rows[1] == rows[0]  # same samples, same order, same summaries
        assert len({row["prediction"] for row in rows[0]}) > 3  # distinct summaries: the order is visible
        results = [json.loads((out / f"{split}_results.json").read_text()) for out in (one, two)]
        for key in (f"{split}_bleu4", f"{split}_rougeL", f"{split}_cider"):
            assert results[0][key] == results[1][key], key

    # One log: every INFO line once (not once per process), the parameter count and the data report too.
    info = [line.split(" - INFO - ", 1)[1] for line in log.splitlines() if " - INFO - " in line]
    assert info and len(info) == len(set(info)), info
    assert sum("data train: 9 samples" in line for line in info) == 1
    assert log.count("trainable parameters:") == 1 and log.count("***** predict metrics *****") == 1


def test_uneven_last_batch_is_warned_and_launch_of_one_process_refused(monkeypatch, caplog):
    """Data parallel without --dataloader_drop_last on a remainder: warned (that step cannot equal one process's).
    `accelerate launch --num_processes 2` without --multi_gpu starts one process: refused before any work."""
    import types

    from processing.training.distributed import check_launch

    args = types.SimpleNamespace(per_device_train_batch_size=2, world_size=2, dataloader_drop_last=False)
    with caplog.at_level("WARNING", logger="run_summarization"):
        run_summarization.warn_uneven_last_batch(9, args)
        run_summarization.warn_uneven_last_batch(8, args)
        args.dataloader_drop_last = True
        run_summarization.warn_uneven_last_batch(9, args)
    assert caplog.text.count("tops it up") == 1 and "9 training samples leave 1 in the last global batch of 4" in caplog.text

    launched = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500"}  # what accelerate's simple launcher exports for --num_processes 2
    with pytest.raises(ValueError, match="asked for several processes .* started this one alone"):
        check_launch(launched)
    check_launch({**launched, "WORLD_SIZE": "2", "RANK": "0"})  # a real data parallel process
    check_launch({**launched, "OMPI_COMM_WORLD_SIZE": "2"})  # accelerate's multi-CPU launch through mpirun
    check_launch({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False"})  # --num_processes 1
    check_launch({"MASTER_PORT": "29500"})  # not launched by accelerate
    for key, value in launched.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="started this one alone"):
        run_summarization.main(["--output_dir", "unused", "--config_overrides", "hidden_size=32"])


def test_resume_from_checkpoint_continues_exactly(sample_dir, tmp_path):
    """Stop after a checkpoint, resume from it: the same later losses (random sampling on) and final weights."""
    import shutil

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    checkpointing = ["--save_strategy", "steps", "--save_steps", "2"]
    args = deterministic_args(sample_dir, straight)
    args.remove("--save_strategy"), args.remove("no")
    run_script(args + checkpointing)
    args = deterministic_args(sample_dir, resumed)
    args.remove("--save_strategy"), args.remove("no")
    run_script(args + checkpointing)
    # Pretend the run was killed right after checkpoint-2: drop everything written later.
    shutil.rmtree(resumed)
    for path in checkpoints(resumed).iterdir():
        if path.name != "checkpoint-2":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_script(args + checkpointing + ["--resume_from_checkpoint", str(checkpoints(resumed) / "checkpoint-2")])
    assert logged_losses(resumed)[2:] == logged_losses(straight)[2:]
    assert len(logged_losses(straight)) == 4
    assert_same_weights(final_weights(straight), final_weights(resumed), atol=0)


def test_model_trained_from_cache_is_exported_with_its_encoder(sample_dir, tmp_path):
    """Trained on cached embeddings, the exported model carries the encoder that filled the cache, so it takes raw
    texts and images (pipeline without a cache) and encodes them as the cache did."""
    import torch
    from PIL import Image

    from modeling_mmgl import MMGLForConditionalGeneration
    from processing.embedding_cache import EmbeddingCache
    from processing.data.sample_index import PageGraphIndex
    from processing.processing_mmgl import MMGLProcessor
    from processing.data.wikiweb2m import load_pages

    output_dir = tmp_path / "out"
    args = base_args(sample_dir, output_dir)
    args[args.index("--max_steps") + 1] = "1"
    run_summarization.main(args + ["--context", "all", "--neighbor_encoding", "sa_e"])
    model = MMGLForConditionalGeneration.from_pretrained(output_dir)
    processor = MMGLProcessor.from_pretrained(output_dir)
    cache = EmbeddingCache(sample_dir / "cache")
    assert model.neighbor_encoder is not None

    index = PageGraphIndex(load_pages(str(sample_dir / "wikiweb2m-sample.tfrecord.gz")))
    inputs = processor_neighbor_inputs(processor, index, image_dir=sample_dir / "images")
    texts, images = inputs.texts, inputs.image_files
    texts, images = list(texts)[:8], list(images)[:4]
    with torch.no_grad():
        raw_texts = model.neighbor_encoder.encode_text(processor.clip_tokenizer(texts)[None])[0]
        pixels = processor.image_processor(images=[Image.open(p) for p in images], return_tensors="pt")
        raw_images = model.neighbor_encoder.encode_image(pixels["pixel_values"][None])[0]
    cached_texts = torch.stack([cache.get_text(t) for t in texts]).float()
    cached_images = torch.stack([cache.get_image(p) for p in images]).float()
    # The cache stores float16; transformers' CLIPImageProcessor resizes a little differently from open_clip.
    torch.testing.assert_close(raw_texts, cached_texts, atol=2e-3, rtol=0)
    torch.testing.assert_close(raw_images, cached_images, atol=2e-2, rtol=0)
    assert torch.nn.functional.cosine_similarity(raw_images, cached_images).min() > 0.999


def test_first_stage_trains_only_projectors_and_position_encoding(sample_dir, tmp_path, monkeypatch, capsys):
    import torch

    snapshots = {}
    original_first_stage, original_apply_tuning = run_summarization.run_first_stage, run_summarization.apply_tuning

    def first_stage(model, *args, **kwargs):
        snapshots["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return original_first_stage(model, *args, **kwargs)

    def apply_tuning(model, mmgl_args, **kwargs):
        snapshots["after"] = {k: v.clone() for k, v in model.state_dict().items()}
        snapshots["requires_grad"] = {n: p.requires_grad for n, p in model.named_parameters()}
        return original_apply_tuning(model, mmgl_args, **kwargs)

    monkeypatch.setattr(run_summarization, "run_first_stage", first_stage)
    monkeypatch.setattr(run_summarization, "apply_tuning", apply_tuning)
    output_dir = tmp_path / "out"
    args = base_args(sample_dir, output_dir)
    args[args.index("--max_steps") + 1] = "1"
    run_summarization.main(args + ["--context", "all", "--neighbor_encoding", "sa_e", "--position_encoding",
                                   "sequence", "--first_stage_steps", "3"])
    changed = {k for k in snapshots["before"] if not torch.equal(snapshots["before"][k], snapshots["after"][k])}
    assert changed and all(k.startswith(("neighbor_projection", "position_encoding")) for k in changed), changed
    assert any(k.startswith("position_encoding") for k in changed)
    assert all(snapshots["requires_grad"].values())  # full tuning in the main stage
    printed = capsys.readouterr().out
    assert "first stage: 3 steps, trainable parameters:" in printed
    with pytest.raises(ValueError, match="--first_stage_steps .* --context section_only"):
        run_summarization.main(base_args(sample_dir, tmp_path / "x") + ["--context", "section_only",
                                                                         "--first_stage_steps", "2"])


def test_crash_while_saving_leaves_previous_checkpoint_usable(sample_dir, tmp_path, monkeypatch):
    """Killed while writing checkpoint-4 (save_total_limit 1): checkpoint-2 survives, the partial checkpoint is
    refused with a clear message, and resuming from checkpoint-2 finishes the run."""
    import transformers

    output_dir = tmp_path / "out"
    args = deterministic_args(sample_dir, output_dir)
    args.remove("--save_strategy"), args.remove("no")
    args += ["--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1", "--use_cpu"]
    saves = []
    original = transformers.Trainer._save_rng_state

    def crash_on_second_save(self, output_dir):
        saves.append(output_dir)
        if len(saves) == 2:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        run_summarization.main(args)
    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", original)
    saved = checkpoints(output_dir)
    assert (saved / "checkpoint-2" / "trainer_state.json").exists()
    assert (saved / "checkpoint-4").exists() and not (saved / "checkpoint-4" / "trainer_state.json").exists()
    with pytest.raises(FileNotFoundError, match="checkpoint-4 is incomplete"):
        run_summarization.main(args + ["--resume_from_checkpoint", str(saved / "checkpoint-4")])
    run_summarization.main(args + ["--resume_from_checkpoint", str(saved / "checkpoint-2")])
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 4


def test_push_to_hub_uploads_the_complete_export(sample_dir, tmp_path, monkeypatch):
    """--push_to_hub goes through the Trainer's Hub integration (faked here: no network) and uploads the finished
    Hub folder: merged LoRA weights, no stale root adapter files, remote code, the MMGL model card."""
    import types

    import huggingface_hub
    import transformers.trainer

    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return types.SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in folder.iterdir()),
                            "config": json.loads((folder / "config.json").read_text()),
                            "card": (folder / "README.md").read_text()})

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run offline; the API is fake
    output_dir = tmp_path / "out"
    run_summarization.main(base_args(sample_dir, output_dir) + [
        "--context", "all", "--neighbor_encoding", "sa_e", "--tuning", "lora", "--push_to_hub",
        "--hub_model_id", "me/mmgl-test", "--hub_token", "hf_fake"])
    assert len(uploads) == 1 and uploads[0]["repo_id"] == "me/mmgl-test"
    files, config = uploads[0]["files"], uploads[0]["config"]
    assert {"model.safetensors", "modeling_mmgl.py", "processing_mmgl.py", "tokenizer.json"} <= set(files)
    # Merged LoRA and no adapter beside it (it would apply LoRA twice); no Trainer checkpoint in the Hub folder.
    assert not {"adapter", "adapter_config.json"} & set(files) and not any(f.startswith("checkpoint-") for f in files)
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM"} <= set(config["auto_map"])
    assert "mmgl-summarization" in config["custom_pipelines"]
    card = uploads[0]["card"]
    assert "# me/mmgl-test" in card and "MMGL section summarizer" in card and "predict_rougeL" in card
    assert 'AutoModel.from_pretrained("me/mmgl-test"' in card


def test_push_to_hub_is_checked_before_any_work(sample_dir, tmp_path, monkeypatch, capsys):
    """No --hub_model_id, offline, or no token: one `error:` line at once, before the data is read (it used to fail
    after the preprocessing, in the Trainer, with a 45-line traceback)."""
    import huggingface_hub

    from processing.data.cli import run_command

    monkeypatch.setattr(run_summarization, "open_page_table", lambda *args, **kwargs: pytest.fail("work started"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = base_args(sample_dir, tmp_path / "out") + ["--push_to_hub"]
    command = lambda argv: (run_summarization.main(argv), 0)[1]  # noqa: E731  (as the script's __main__)
    cases = [
        ([], "--push_to_hub needs --hub_model_id"),
        (["--hub_model_id", "me/mmgl"], "--push_to_hub, but the Hub is offline here"),
    ]
    for extra, message in cases:
        assert run_command(command, args + extra) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"error: {message}") and len(err) == 2 and "Traceback" not in err[1], err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert run_command(command, args + ["--hub_model_id", "me/mmgl"]) == 2
    assert capsys.readouterr().err.startswith("error: --push_to_hub needs a Hugging Face token")


def test_training_arguments_debug_and_disable_tqdm_reach_their_owners(sample_dir, tmp_path, monkeypatch, capsys):
    """`--debug underflow_overflow` (a TrainingArguments flag) reaches the Trainer through the command wrapper, which
    used to take `--debug` for its own traceback switch (now `--traceback`) and leave `underflow_overflow` to the
    argument parser. `--disable_tqdm` hides the data preparation's bars too (the token store's was always shown)."""
    import transformers.trainer
    from transformers.debug_utils import DebugUnderflowOverflow

    from processing.data.cli import run_command

    watched = []

    class Watching(DebugUnderflowOverflow):
        def __init__(self, model, *args, **kwargs):
            watched.append(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(transformers.trainer, "DebugUnderflowOverflow", Watching)
    args = base_args(sample_dir, tmp_path / "out")
    for flag in ("--do_eval", "--do_predict"):
        args.remove(flag)
    args[args.index("--max_steps") + 1] = "1"
    command = lambda argv: (run_summarization.main(argv), 0)[1]  # noqa: E731  (as the script's __main__)
    assert run_command(command, args + ["--debug", "underflow_overflow", "--disable_tqdm", "true"]) == 0
    assert len(watched) == 1
    captured = capsys.readouterr()
    assert "token store" not in captured.err and "it/s" not in captured.err, captured.err[-2000:]
    assert run_command(command, args) == 0  # the bars are back when not disabled
    assert "token store" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # mmgl's own switch is documented
        run_summarization.main(["--help"])
    assert "--traceback" in capsys.readouterr().out


def test_token_cache_file_is_reused(sample_dir, tmp_path, monkeypatch):
    """--token_cache_file: the first run writes every text's ids; the next run tokenises nothing the file holds."""
    from processing.processing_mmgl import MMGLProcessor

    cache_file = tmp_path / "tokens.bin"
    args = base_args(sample_dir, tmp_path / "out")
    args[args.index("--max_steps") + 1] = "1"
    args += ["--context", "all", "--neighbor_encoding", "sa_te", "--token_cache_file", str(cache_file)]
    encoded = []
    original = MMGLProcessor._encode_lm

    def counting_encode(self, texts):
        encoded.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(MMGLProcessor, "_encode_lm", counting_encode)
    first = run_summarization.main(args)
    assert cache_file.exists() and len(encoded) > 100
    encoded.clear()
    second = run_summarization.main(args)
    assert set(encoded) <= {"Context:", "Section:", "Summary:"}  # only the processor's fixed prompt words
    assert second["predict_rougeL"] == first["predict_rougeL"]  # same ids, same model, same predictions


# ------------------------------------------------------------------ evaluating a trained checkpoint


def test_exported_checkpoint_is_evaluated_with_its_own_design(sample_dir, tmp_path, caplog):
    """Eval / predict of an exported CA-E model with only the model and the data: the design comes from the
    checkpoint, the metrics are those at the end of training, and nothing is re-exported."""
    trained = tmp_path / "trained"
    args = base_args(sample_dir, trained) + ["--context", "all", "--neighbor_encoding", "ca_e",
                                             "--position_encoding", "sequence", "--max_text_neighbors", "3"]
    at_end_of_training = run_summarization.main(args)
    data = ["--train_files", str(sample_dir / "wikiweb2m-sample.tfrecord.gz"), "--image_dir", str(sample_dir / "images"),
            "--max_eval_samples", "4", "--max_predict_samples", "4", "--generation_max_new_tokens", "4",
            "--per_device_eval_batch_size", "4", "--report_to", "none", "--use_cpu"]
    evaluated = tmp_path / "evaluated"
    caplog.set_level("INFO")
    import transformers

    transformers.utils.logging.enable_propagation()  # the load report (missing / unexpected weights) reaches caplog
    metrics = run_summarization.main(["--model_name_or_path", str(trained), "--output_dir", str(evaluated),
                                      "--do_eval", "--do_predict", *data])
    for key in ("eval_loss", "eval_bleu4", "eval_rougeL", "eval_cider", "predict_rougeL", "predict_bleu4"):
        assert metrics[key] == pytest.approx(at_end_of_training[key], rel=1e-4, abs=1e-6), key
    log = caplog.text
    assert "neighbor_encoding='ca_e'" in log and "cross_attention_interval=2" in log
    assert "missing" not in log.lower() and "unexpected" not in log.lower()
    transformers.utils.logging.disable_propagation()
    assert not (evaluated / "model.safetensors").exists() and not (evaluated / "README.md").exists()
    # A flag that contradicts the checkpoint is refused before any work, naming both values.
    with pytest.raises(ValueError, match=r"--cross_attention_interval 4 contradicts the checkpoint's 2"):
        run_summarization.main(["--model_name_or_path", str(trained), "--output_dir", str(evaluated),
                                "--do_eval", "--cross_attention_interval", "4", *data])
    with pytest.raises(ValueError, match=r"--neighbor_encoding 'sa_e' contradicts the checkpoint's 'ca_e'"):
        run_summarization.main(["--model_name_or_path", str(trained), "--output_dir", str(evaluated),
                                "--do_eval", "--neighbor_encoding", "sa_e", *data])
    # A flag equal to the checkpoint's value is fine; --export writes the Hub folder.
    run_summarization.main(["--model_name_or_path", str(trained), "--output_dir", str(evaluated), "--do_eval",
                            "--neighbor_encoding", "ca_e", "--export", *data])
    assert (evaluated / "model.safetensors").exists() and (evaluated / "README.md").exists()


def test_non_opt_checkpoint_is_refused(sample_dir, tmp_path):
    from transformers import T5Config

    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=100).save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match=r"MMGL extends OPT; got model_type 't5'"):
        run_summarization.main(["--model_name_or_path", str(tmp_path / "t5"), "--output_dir", str(tmp_path / "o"),
                                "--train_files", str(sample_dir / "wikiweb2m-sample.tfrecord.gz"), "--do_eval"])


def test_interval_larger_than_layers_is_refused_and_frozen_random_lm_warned(sample_dir, tmp_path, caplog):
    args = base_args(sample_dir, tmp_path / "out") + ["--neighbor_encoding", "ca_e"]
    with pytest.raises(ValueError, match=r"--cross_attention_interval 6 is larger than the model's 4 decoder layers"):
        run_summarization.main(args + ["--cross_attention_interval", "6"])
    from processing.training.design_checks import check_model_design

    class Args:
        neighbor_encoding, context, cross_attention_interval, tuning = "sa_e", "all", 4, "lora"
        position_encoding, max_text_neighbors, max_image_neighbors = "none", 11, 5

    caplog.set_level("WARNING")
    check_model_design(Args, num_layers=2, from_scratch=True)
    assert "random language model stays frozen" in caplog.text
    caplog.clear()
    check_model_design(Args, num_layers=2, from_scratch=False)
    assert "frozen" not in caplog.text


def test_graph_position_encoding_without_any_possible_edge_is_refused():
    """LPE / GNN read the slots' edges; a design with at most one slot can have none (SA-TE with one image)."""
    from processing.training.design_checks import check_model_design

    class Args:
        neighbor_encoding, context, cross_attention_interval, tuning = "sa_te", "all", 1, "full"
        position_encoding, max_text_neighbors, max_image_neighbors = "laplacian", 11, 1

    for position in ("laplacian", "gnn"):
        Args.position_encoding = position
        with pytest.raises(ValueError, match=rf"--position_encoding {position} reads the edges.*--context all with "
                                             r"--neighbor_encoding sa_te.*at most 1 slot\(s\), so no edge can exist"):
            check_model_design(Args, num_layers=2, from_scratch=False)
    # Two image slots can be adjacent (two images of one section), and so can two text slots in SA-E; the
    # sequence encoding reads no edge at all.
    for encoding, context, texts, images, position in (("sa_te", "all", 11, 2, "gnn"), ("sa_te", "section_all", 0, 2, "laplacian"),
                                                      ("sa_e", "text_only", 2, 0, "laplacian"), ("sa_te", "all", 11, 1, "sequence")):
        Args.neighbor_encoding, Args.context, Args.position_encoding = encoding, context, position
        Args.max_text_neighbors, Args.max_image_neighbors = texts, images
        check_model_design(Args, num_layers=2, from_scratch=False)
    Args.neighbor_encoding, Args.context, Args.position_encoding = "sa_e", "section_all", "gnn"
    Args.max_text_neighbors, Args.max_image_neighbors = 0, 1
    with pytest.raises(ValueError, match=r"at most 1 slot"):
        check_model_design(Args, num_layers=2, from_scratch=False)


def test_every_flag_has_help_and_results_files(sample_dir, tmp_path):
    import dataclasses

    for group in (run_summarization.ModelArguments, run_summarization.MMGLArguments,
                  run_summarization.DataTrainingArguments):
        for f in dataclasses.fields(group):
            assert f.metadata.get("help"), f"--{f.name} has no help"
    output_dir = tmp_path / "out"
    run_summarization.main(base_args(sample_dir, output_dir) + ["--neighbor_encoding", "sa_e", "--eval_strategy", "steps",
                                                                "--eval_steps", "1"])
    for name in ("train", "eval", "predict", "all"):
        assert (output_dir / f"{name}_results.json").exists(), name
    everything = json.loads((output_dir / "all_results.json").read_text())
    for key in ("train_loss", "train_samples", "eval_loss", "eval_samples", "eval_bleu1", "eval_bleu2", "eval_bleu3",
                "eval_bleu4", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_cider", "predict_samples"):
        assert key in everything, key
    assert everything["train_samples"] == 8 and everything["eval_samples"] == 4
    # Generation metrics reach the logs (TensorBoard reads the same log calls) at each evaluation in training.
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "eval_rougeL" in entry] == [1, 2]
    prediction = json.loads((output_dir / "predict_predictions.jsonl").read_text().splitlines()[0])
    assert {"page", "section", "page_url", "page_title", "section_title"} <= set(prediction)
    assert prediction["page_title"] and prediction["section_title"]


def test_truncated_trainer_state_is_one_line_error_naming_the_file(sample_dir, tmp_path):
    import os
    import subprocess
    import sys

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2, "log_hi')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "run_summarization.py"), *base_args(sample_dir, tmp_path / "out"),
         "--resume_from_checkpoint", str(checkpoint), "--skip_corrupt", "--text_errors", "replace"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {checkpoint / 'trainer_state.json'}: invalid JSON (" in result.stderr
    assert "Traceback" not in result.stderr and "FutureWarning" not in result.stderr


def test_data_report_counts_what_the_model_sees(sample_dir, tmp_path):
    """data_report.json (and all_results.json) state truncation, input lengths and real vs masked images, counted
    against the examples themselves; a short source budget shows up as truncation."""
    from processing.data.sample_index import PageGraphIndex

    output_dir = tmp_path / "out"
    args = base_args(sample_dir, output_dir) + ["--context", "all", "--neighbor_encoding", "sa_te",
                                                "--max_source_length", "60", "--do_eval", "false"]
    run_summarization.main(args)
    report = json.loads((output_dir / "data_report.json").read_text())
    assert json.loads((output_dir / "all_results.json").read_text())["data_report"] == report
    train = report["train"]
    assert train["samples"] == 8 and train["examples_checked"] == 8
    assert 0 < train["truncated_source"] <= 8 and train["max_input_tokens"] <= 60
    # The same counts, from the examples as the training set builds them.
    from processing.processing_mmgl import MMGLProcessor
    from processing.embedding_cache import EmbeddingCache

    processor = MMGLProcessor.from_pretrained(output_dir)
    pages = run_summarization.open_page_table(str(sample_dir / "wikiweb2m-sample.tfrecord.gz"))
    index = PageGraphIndex(pages, samples=run_summarization.summarization_samples(pages, split="train")[:8])
    masks = [processor.build_example(g, s, embedding_cache=EmbeddingCache(sample_dir / "cache"),
                                     image_dir=sample_dir / "images")["image_neighbor_mask"] for g, s in index]
    assert train["real_images"] == sum(int(m.sum()) for m in masks)
    assert train["masked_images"] == sum(len(m) - int(m.sum()) for m in masks)
    assert report["design"]["neighbor_encoding"] == "sa_te"


def test_trainer_checkpoint_of_a_cache_run_names_its_encoder(sample_dir, tmp_path, caplog):
    """A run trained from an embedding cache has no encoder inside; its Trainer checkpoints still record which
    encoder filled the cache, so evaluating checkpoint-N with only the data and that cache needs no encoder flag."""
    trained = tmp_path / "trained"
    args = base_args(sample_dir, trained) + ["--context", "all", "--neighbor_encoding", "sa_e",
                                             "--save_strategy", "steps", "--save_steps", "2"]
    at_end_of_training = run_summarization.main(args)
    checkpoint = checkpoints(trained) / "checkpoint-2"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["neighbor_encoder_name"] is None and config["neighbor_encoder_config"] is None  # not inside
    recorded = config["embedding_cache_encoder"]
    assert recorded["config"] == json.loads(TINY_CLIP_JSON.read_text()) and recorded["pretrained"] is None
    exported = json.loads((trained / "config.json").read_text())
    assert exported["embedding_cache_encoder"] is None and exported["neighbor_encoder_config"] == recorded["config"]
    data = ["--train_files", str(sample_dir / "wikiweb2m-sample.tfrecord.gz"), "--image_dir", str(sample_dir / "images"),
            "--embedding_cache_dir", str(sample_dir / "cache"), "--max_eval_samples", "4", "--max_predict_samples", "4",
            "--generation_max_new_tokens", "4", "--per_device_eval_batch_size", "4", "--report_to", "none", "--use_cpu"]
    caplog.set_level("WARNING")
    metrics = run_summarization.main(["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "ev"),
                                      "--do_eval", "--do_predict", *data])
    assert "records no frozen encoder" not in caplog.text
    for key in ("eval_loss", "eval_rougeL", "predict_rougeL"):
        assert metrics[key] == pytest.approx(at_end_of_training[key], rel=1e-4, abs=1e-6), key


def test_complete_covered_cache_collects_nothing_at_startup(sample_dir, tmp_path, monkeypatch):
    """A restart over a complete embedding cache that records this page table and design builds no page graph to
    collect the cache's keys (the first start collected them once per split); another design collects again."""
    collected = []
    original = run_summarization.iter_processor_neighbor_inputs

    def counting(processor, samples, image_dir=None, counts=None):
        collected.append(len(samples))
        return original(processor, samples, image_dir=image_dir, counts=counts)

    monkeypatch.setattr(run_summarization, "iter_processor_neighbor_inputs", counting)
    cache_dir = tmp_path / "cache"

    def start(name, *extra):
        args = base_args(sample_dir, tmp_path / name)
        args[args.index("--embedding_cache_dir") + 1] = str(cache_dir)
        args[args.index("--max_steps") + 1] = "1"
        for flag in ("--do_eval", "--do_predict"):
            args.remove(flag)
        collected.clear()
        run_summarization.main(args + ["--context", "all", "--neighbor_encoding", "sa_e", *extra])
        return list(collected), json.loads((tmp_path / name / "data_report.json").read_text())["train"]

    first, first_report = start("first")
    assert first == [8, 4, 4]  # one collection per split (train, eval, predict samples)
    again, again_report = start("again")
    assert again == []  # covered: no graph built for key collection
    assert again_report["real_images"] == first_report["real_images"] > 0  # and every image found in the cache
    other, _ = start("other", "--max_image_neighbors", "2")
    assert other == [8, 4, 4]  # another design is not covered by the record
