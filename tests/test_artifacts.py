"""Every artifact a run hands over is the model it trained, for every tuning: the export evaluated alone, its
pipeline and the last Trainer checkpoint reproduce the run's predictions exactly; peft adapters (with the base saved
beside them) give the export's logits; the decoding settings and the card travel with the export."""

import json
from pathlib import Path

import pytest
import torch

import run_summarization
from processing.data.sample_data import generate_sample
from tests.test_run_summarization import base_args, checkpoints

TUNINGS = [("full", "sa_e"), ("lora", "sa_e"), ("prefix", "sa_e"), ("prompt", "sa_e"), ("flamingo", "ca_e")]
# The other switches of a run, each with a tuning it can meet: bridges, the target-aware graph, open gates.
DESIGN_CASES = [(tuning, encoding, ()) for tuning, encoding in TUNINGS] + [
    ("full", "sa_e", ("--neighbor_bridge", "perceiver", "--bridge_num_latents", "3")),
    ("flamingo", "ca_e", ("--neighbor_bridge", "qformer", "--bridge_num_latents", "3")),
    ("lora", "sa_e", ("--position_encoding", "laplacian", "--graph_target_feature", "distance")),
    ("full", "ca_e", ("--alpha_initializer", "ones")),
]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    generate_sample(root, num_pages=30, seed=0)
    return root


def data_args(sample_dir: Path) -> list[str]:
    """Only the data: everything else comes from the model's folder."""
    return ["--train_files", str(sample_dir / "wikiweb2m-sample.tfrecord.gz"), "--image_dir", str(sample_dir / "images"),
            "--embedding_cache_dir", str(sample_dir / "cache"), "--max_predict_samples", "4",
            "--per_device_eval_batch_size", "4", "--report_to", "none", "--use_cpu"]


def predictions(folder: Path) -> list[str]:
    return [json.loads(line)["prediction"] for line in (folder / "predict_predictions.jsonl").read_text().splitlines()]


def train(sample_dir: Path, output_dir: Path, tuning: str, encoding: str, *extra: str) -> dict:
    args = base_args(sample_dir, output_dir)
    for flag, value in (("--max_steps", "4"), ("--save_strategy", "steps"), ("--generation_max_new_tokens", "6")):
        args[args.index(flag) + 1] = value
    args.remove("--do_eval")
    return run_summarization.main(args + ["--save_steps", "2", "--learning_rate", "5e-3", "--context", "all",
                                          "--neighbor_encoding", encoding, "--tuning", tuning, *extra])


def logits_batch(folder: Path, sample_dir: Path):
    """A left-padded generation batch of the run's predict samples, built by the export's own processor."""
    from processing.embedding_cache import EmbeddingCache
    from processing.data.sample_index import PageGraphIndex
    from processing.processing_mmgl import MMGLProcessor

    processor = MMGLProcessor.from_pretrained(folder)
    pages = run_summarization.open_page_table(str(sample_dir / "wikiweb2m-sample.tfrecord.gz"))
    index = PageGraphIndex(pages, samples=run_summarization.summarization_samples(pages, split="test")[:4])
    cache = EmbeddingCache(sample_dir / "cache")
    examples = [processor.build_example(g, s, embedding_cache=cache, image_dir=sample_dir / "images",
                                        for_generation=True) for g, s in index]
    return processor.data_collator(for_generation=True)(examples), index


@pytest.mark.parametrize("tuning,encoding,extra", DESIGN_CASES,
                         ids=["-".join((t, e, *(x.lstrip("-") for x in extra[:2]))) for t, e, extra in DESIGN_CASES])
def test_export_pipeline_and_checkpoint_reproduce_the_run(sample_dir, tmp_path, tuning, encoding, extra, capsys):
    from huggingface_hub import ModelCard
    from transformers import AutoModel, GenerationConfig, pipeline

    out = tmp_path / "run"
    train(sample_dir, out, tuning, encoding, "--generation_num_beams", "2", "--no_repeat_ngram_size", "2", *extra)
    expected = predictions(out)
    assert any(expected), "the run must predict some text for the comparisons to mean anything"
    # The Hub folder holds no Trainer checkpoint and no adapter; the checkpoints live beside it.
    assert not any(p.name.startswith("checkpoint-") or p.name == "adapter" for p in out.iterdir())
    last = checkpoints(out) / "checkpoint-4"
    assert last.is_dir()

    # generation_config.json holds the settings the metrics used; everything below decodes with them by default.
    settings = GenerationConfig.from_pretrained(out)
    assert (settings.max_new_tokens, settings.num_beams, settings.no_repeat_ngram_size) == (6, 2, 2)

    # 1. The export evaluated alone (only the model and the data), 2. the last checkpoint the same way.
    for model_path, name in ((out, "export"), (last, "checkpoint")):
        capsys.readouterr()
        run_summarization.main(["--model_name_or_path", str(model_path), "--output_dir", str(tmp_path / name),
                                "--do_predict", *data_args(sample_dir)])
        assert predictions(tmp_path / name) == expected, name
        if name == "export":  # nothing frozen counted as trainable: the encoder inside the export stays frozen
            printed = capsys.readouterr().out.split("trainable parameters: ")[1].split("\n")[0]
            trainable, total = (int(x.replace(",", "")) for x in printed.split(" / total: "))
            model = AutoModel.from_pretrained(out, trust_remote_code=True)
            encoder = sum(p.numel() for p in model.neighbor_encoder.parameters())
            assert encoder > 0 and trainable == total - encoder
            assert not any(p.requires_grad for p in model.neighbor_encoder.parameters())

    # 3. The pipeline, on the same examples in the same batches.
    batch, index = logits_batch(out, sample_dir)
    summarize = pipeline("mmgl-summarization", model=str(out), trust_remote_code=True)
    from processing.embedding_cache import EmbeddingCache

    outputs = summarize([{"page": graph, "section": section} for graph, section in index], batch_size=4,
                        embedding_cache=EmbeddingCache(sample_dir / "cache"), image_dir=str(sample_dir / "images"))
    assert [o["summary_text"] for o in outputs] == expected

    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results and card.data.datasets == ["mmgl-generated-sample"]
    assert f"tuning: `{tuning}`" in card.text and "max_new_tokens `6`, num_beams `2`" in card.text

    if tuning in ("lora", "prefix", "prompt"):
        # 4. Every saved adapter, with peft alone, computes what the export computes.
        from peft import AutoPeftModelForCausalLM, PeftModel

        from modeling_mmgl import MMGLForConditionalGeneration

        adapter = json.loads((last / "adapter_config.json").read_text())
        assert Path(adapter["base_model_name_or_path"]) == checkpoints(out).resolve() / "base_model"
        assert "[More Information Needed]" not in (last / "README.md").read_text()  # peft's card, filled
        export = MMGLForConditionalGeneration.from_pretrained(out).eval()
        with torch.no_grad():
            expected_logits = export(**batch).logits
        base = MMGLForConditionalGeneration.from_pretrained(adapter["base_model_name_or_path"])
        for peft_model in (AutoPeftModelForCausalLM.from_pretrained(last), PeftModel.from_pretrained(base, last)):
            with torch.no_grad():
                logits = peft_model.eval()(**batch).logits[:, -expected_logits.shape[1]:]
            torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)


def test_card_after_export_from_a_checkpoint_and_after_a_resume(sample_dir, tmp_path):
    """--export from a checkpoint writes the setup that trained it (not this command's defaults) and the metrics
    recorded for it; a resumed run reports its loss over the whole run and says it was resumed."""
    from huggingface_hub import ModelCard

    straight = tmp_path / "straight"
    metrics = train(sample_dir, straight, "full", "sa_e", "--seed", "3")
    exported = tmp_path / "exported"
    run_summarization.main(["--model_name_or_path", str(checkpoints(straight) / "checkpoint-2"), "--export",
                            "--output_dir", str(exported), *data_args(sample_dir)])
    text = ModelCard.load(exported / "README.md").text
    assert "steps: `2` (of max_steps `4`)" in text and "learning rate `0.005`" in text and "seed `3`" in text
    assert "resumed" not in text
    assert "no metrics are recorded for this model" in text  # none were measured for checkpoint-2: none invented

    # Resume from checkpoint-2 into a fresh result folder: same final loss over the whole run.
    resumed = tmp_path / "resumed"
    checkpoints(straight).rename(checkpoints(resumed))
    again = train(sample_dir, resumed, "full", "sa_e", "--seed", "3", "--resume_from_checkpoint",
                  str(checkpoints(resumed) / "checkpoint-2"))
    assert again["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-5)
    assert again["train_resumed_at_step"] == 2 and again["train_loss_since_resume"] != pytest.approx(again["train_loss"])
    assert predictions(resumed) == predictions(straight)
    card = ModelCard.load(resumed / "README.md")
    assert "resumed at step `2`" in card.text
    assert f"training loss over the whole run: `{metrics['train_loss']:.4f}`" in card.text


def test_metrics_files_record_their_implementation_and_match_the_predictions(sample_dir, tmp_path):
    """--metrics_style original: every metrics file and the card name the implementation; the recorded numbers are
    that implementation's on the predictions the run wrote; the teacher-forced validation score is a separate metric."""
    from huggingface_hub import ModelCard

    from processing.training.metrics import original_metrics

    out = tmp_path / "run"
    args = base_args(sample_dir, out) + ["--context", "all", "--neighbor_encoding", "sa_e", "--metrics_style",
                                         "original"]
    metrics = run_summarization.main(args)
    for name in ("eval_results.json", "predict_results.json", "all_results.json"):
        assert json.loads((out / name).read_text())["metrics_implementation"]["style"] == "original", name
    for split in ("eval", "predict"):
        rows = [json.loads(line) for line in (out / f"{split}_predictions.jsonl").read_text().splitlines()]
        recomputed = original_metrics([r["prediction"] for r in rows], [r["reference"] for r in rows])
        for key, value in recomputed.items():
            assert metrics[f"{split}_{key}"] == pytest.approx(value, abs=1e-12), (split, key)
    assert {f"eval_teacher_forced_{k}" for k in ("bleu4", "rougeL", "cider")} <= set(metrics)
    card = ModelCard.load(out / "README.md")
    assert {r.metric_config for r in card.data.eval_results} == {"original"} and "`original` style" in card.text
