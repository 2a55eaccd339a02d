"""run_summarization.main(): a CPU smoke run for each neighbour encoding and tuning method, and argument checks."""

import json
from pathlib import Path

import pytest

import run_summarization
from processing.sample_data import generate_sample

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
    config_file = tmp_path / "args.json"
    config_file.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "tuning": "flamingo", "do_train": True,
                                       "train_files": "x", "config_overrides": "hidden_size=32"}))
    with pytest.raises(ValueError, match="--tuning flamingo"):
        run_summarization.main([str(config_file)])
