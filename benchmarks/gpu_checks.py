#!/usr/bin/env python
"""The multi-GPU checks of `run_summarization.py`, in one command, on a machine with GPUs as it is:

    python benchmarks/gpu_checks.py                      # every check the machine allows
    python benchmarks/gpu_checks.py --layouts single     # on CPU: the parts that need no GPU (tests run this)

1. Export equality. The same run (generated sample pages, SA-E + Laplacian position encoding, an OPT-125m-shaped
   model from scratch, fp32, dropout off, global batch 8, `--steps` steps, `--dataloader_drop_last`) in each layout:
   `single` (one GPU, or the CPU), `ddp` (`launch/ddp_gpu.yaml`; on CPU `launch/ddp_cpu.yaml`), `fsdp`
   (`launch/fsdp.yaml`: FSDP2 full shard, one unit per decoder layer) and `zero3` (`launch/deepspeed_zero3.yaml`,
   needs `pip install -e ".[deepspeed]"`). Each export is reloaded in a fresh process
   (`AutoModel.from_pretrained(..., trust_remote_code=True)`) and compared with the `single` export: every weight
   (largest difference, attention key biases apart: their true gradient is zero, so Adam turns float noise into
   steps of the learning rate), the training losses step for step, and the test-split predictions (odd count: the
   last batch of a sharded prediction is padded), which must be identical.
2. Throughput: bf16 training samples per second of MMGL (SA-E + LPE, neighbours from the embedding cache) over
   plain OPT (`--context section_only`) of the same shape, side by side on one GPU; their ratio.

Results: `<output_dir>/gpu_checks.json` and a table on stdout. A check that the machine cannot run (no GPU, one GPU
for `ddp`, no `deepspeed`) is reported as skipped with the reason, never as passed. Exit status 1 when a check
that ran failed. The thresholds (`--weight_atol`, `--loss_atol`) are judgment calls for fp32 with different
reduction orders, not yet calibrated on hardware.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
LAYOUTS = ("single", "ddp", "fsdp", "zero3")
MODEL_SIZES = {
    # An OPT-125m-shaped model from scratch (no hub here) and the full-size frozen encoder (random weights).
    "opt-125m": ["--config_overrides", "hidden_size=768,num_hidden_layers=12,ffn_dim=3072,num_attention_heads=12,"
                 "max_position_embeddings=2048,dropout=0.0,attention_dropout=0.0", "--tokenizer_vocab_size", "8000",
                 "--neighbor_encoder_name", "ViT-B-32", "--neighbor_encoder_pretrained", "none"],
    "tiny": ["--config_overrides", "hidden_size=32,num_hidden_layers=2,ffn_dim=64,num_attention_heads=4,"
             "max_position_embeddings=512,dropout=0.0,attention_dropout=0.0,init_std=0.5",
             "--tokenizer_vocab_size", "400", "--neighbor_encoder_config", str(REPO / "demo" / "tiny_clip.json"),
             "--neighbor_encoder_pretrained", "none"],
}
RELOAD = """
import sys
from safetensors.torch import save_file
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
save_file({name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}, sys.argv[2])
print(type(model).__name__, sum(p.numel() for p in model.parameters()))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict:
    import torch

    gpus = torch.cuda.device_count()
    try:
        import deepspeed  # noqa: F401

        has_deepspeed = True
    except Exception:  # not installed, or broken on this machine
        has_deepspeed = False
    return {"gpus": gpus, "gpu": torch.cuda.get_device_name(0) if gpus else None, "deepspeed": has_deepspeed,
            "bf16": bool(gpus) and torch.cuda.is_bf16_supported(), "torch": torch.__version__}


def skip_reason(layout: str, info: dict) -> str | None:
    if layout == "single":
        return None
    if layout == "ddp":
        return None if info["gpus"] != 1 else "data parallel needs 2 GPUs (or none: gloo on CPU)"
    if not info["gpus"]:
        return f"{layout} needs a GPU (FSDP and DeepSpeed do not start on CPU)"
    if layout == "zero3" and not info["deepspeed"]:
        return 'deepspeed is not installed (pip install -e ".[deepspeed]")'
    return None


def processes(layout: str, info: dict) -> int:
    """Processes for ``layout``: the largest divisor of the global batch the machine has GPUs for (2 on CPU)."""
    if layout == "single":
        return 1
    available = info["gpus"] or 2
    return max(n for n in (1, 2, 4, 8) if n <= available and GLOBAL_BATCH % n == 0)


def launcher(layout: str, info: dict) -> list[str]:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    if layout == "single":
        return [sys.executable]
    config = {"ddp": "ddp_gpu.yaml" if info["gpus"] else "ddp_cpu.yaml", "fsdp": "fsdp.yaml",
              "zero3": "deepspeed_zero3.yaml"}[layout]
    command = [accelerate, "launch", "--config_file", str(REPO / "launch" / config), "--num_processes",
               str(processes(layout, info)), "--main_process_port", str(free_port())]
    if layout != "zero3":  # DeepSpeed takes its precision from the TrainingArguments ("auto")
        command += ["--mixed_precision", "no"]
    return command + ["--dynamo_backend", "no"]


def run(command: list[str], log: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    if result.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {result.returncode}; end of {log}:\n{tail}")
    return time.perf_counter() - start


def common_args(args, data: Path, cache: Path) -> list[str]:
    return [
        "--train_files", str(data / "wikiweb2m-sample.tfrecord.gz"), "--image_dir", str(data / "images"),
        *MODEL_SIZES[args.model_size], "--embedding_cache_dir", str(cache), "--max_source_length", "256",
        "--max_target_length", "32", "--generation_max_new_tokens", "8", "--report_to", "none",
        "--save_strategy", "no", "--seed", "0", "--dataloader_drop_last",
    ]


def export_layout(args, layout: str, info: dict, data: Path, cache: Path, out: Path) -> dict:
    """Train ``layout`` for ``args.steps`` steps, predict, export; reload the export in a fresh process."""
    folder = out / layout
    shutil.rmtree(folder, ignore_errors=True)
    n = processes(layout, info)
    command = launcher(layout, info) + [str(REPO / "run_summarization.py"), *common_args(args, data, cache),
                                        "--context", "all", "--neighbor_encoding", "sa_e",
                                        "--position_encoding", "laplacian", "--output_dir", str(folder),
                                        "--do_train", "--do_predict", "--max_steps", str(args.steps),
                                        "--max_predict_samples", "9", "--per_device_eval_batch_size", "2",
                                        "--per_device_train_batch_size", str(GLOBAL_BATCH // n),
                                        "--learning_rate", "1e-4", "--logging_steps", "1"]
    env = {"CUDA_VISIBLE_DEVICES": "0"} if layout == "single" and info["gpus"] else None
    seconds = run(command, out / f"{layout}.log", env)
    reload_seconds = run([sys.executable, "-c", RELOAD, str(folder), str(out / f"{layout}.reloaded.safetensors")],
                         out / f"{layout}.reload.log")
    state = json.loads((folder / "trainer_state.json").read_text())
    predictions = [json.loads(line) for line in (folder / "predict_predictions.jsonl").read_text().splitlines()]
    return {"processes": n, "seconds": round(seconds, 1), "reload_seconds": round(reload_seconds, 1),
            "losses": [entry["loss"] for entry in state["log_history"] if "loss" in entry],
            "predictions": [(p["page"], p["section"], p["prediction"]) for p in predictions]}


def compare(args, out: Path, layout: str, result: dict, reference: dict) -> dict:
    import torch
    from safetensors.torch import load_file

    mine = load_file(out / f"{layout}.reloaded.safetensors")
    single = load_file(out / "single.reloaded.safetensors")
    same_keys = mine.keys() == single.keys()
    diffs = {name: (mine[name].float() - single[name].float()).abs().max().item()
             for name in single if name in mine and mine[name].shape == single[name].shape}
    shapes_differ = sorted(name for name in single if name in mine and mine[name].shape != single[name].shape)
    weights = {name: d for name, d in diffs.items() if not name.endswith("k_proj.bias")}
    worst = max(weights, key=weights.get) if weights else None
    loss_diff = max((abs(a - b) for a, b in zip(result["losses"], reference["losses"])), default=float("inf"))
    same_predictions = result["predictions"] == reference["predictions"]
    keys = [(page, section) for page, section, _ in result["predictions"]]
    checks = {
        "same keys and shapes": same_keys and not shapes_differ,
        f"weights within {args.weight_atol}": worst is not None and weights[worst] <= args.weight_atol,
        f"losses within {args.loss_atol}": len(result["losses"]) == len(reference["losses"]) and loss_diff <= args.loss_atol,
        "predictions identical, each once": same_predictions and len(keys) == len(set(keys)),
    }
    return {"checks": checks, "passed": all(checks.values()), "max_weight_diff": weights.get(worst),
            "worst_weight": worst, "max_key_bias_diff": max((d for n, d in diffs.items() if n.endswith("k_proj.bias")),
                                                            default=None),
            "max_loss_diff": loss_diff, "processes": result["processes"], "seconds": result["seconds"],
            "parameters": sum(t.numel() for t in single.values()), "torch_allclose_1e-5": same_keys and all(
                torch.allclose(mine[n].float(), single[n].float(), atol=1e-5) for n in weights)}


def throughput(args, info: dict, data: Path, cache: Path, out: Path) -> dict:
    """bf16 training samples/s of MMGL (SA-E + LPE) and of plain OPT of the same shape, side by side, one GPU."""
    rates = {}
    for name, design in (("mmgl", ["--context", "all", "--neighbor_encoding", "sa_e", "--position_encoding",
                                   "laplacian"]), ("opt", ["--context", "section_only"])):
        folder = out / f"throughput_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        command = [sys.executable, str(REPO / "run_summarization.py"), *common_args(args, data, cache), *design,
                   "--output_dir", str(folder), "--do_train", "--bf16", "--max_steps", str(args.throughput_steps),
                   "--per_device_train_batch_size", "16", "--dataloader_num_workers", "2", "--logging_steps", "10"]
        run(command, out / f"throughput_{name}.log", {"CUDA_VISIBLE_DEVICES": "0"})
        results = json.loads((folder / "train_results.json").read_text())
        rates[name] = results["train_samples_per_second"]
    return {"samples_per_second": rates, "ratio_mmgl_over_opt": round(rates["mmgl"] / rates["opt"], 3),
            "steps": args.throughput_steps, "batch": 16}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="out/gpu_checks")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of %(default)s")
    parser.add_argument("--steps", type=int, default=20, help="training steps per layout")
    parser.add_argument("--throughput_steps", type=int, default=60)
    parser.add_argument("--num_pages", type=int, default=200, help="generated sample pages")
    parser.add_argument("--model_size", choices=sorted(MODEL_SIZES), default=None,
                        help="default: opt-125m on a GPU, tiny on CPU")
    parser.add_argument("--weight_atol", type=float, default=1e-4)
    parser.add_argument("--loss_atol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    layouts = [layout for layout in args.layouts.split(",") if layout]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown or "single" not in layouts:
        parser.error(f"--layouts: 'single' (the reference) plus any of {LAYOUTS}; got {args.layouts!r}")
    info = machine()
    args.model_size = args.model_size or ("opt-125m" if info["gpus"] else "tiny")
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, cache = out / "data", out / "cache" / "clip"
    if not (data / "wikiweb2m-sample.tfrecord.gz").exists():
        run([sys.executable, "-m", "processing.data.sample_data", str(data), "--num_pages", str(args.num_pages)],
            out / "data.log")

    report = {"machine": info, "model_size": args.model_size, "steps": args.steps, "global_batch": GLOBAL_BATCH,
              "layouts": {}, "throughput": None}
    results = {}
    for layout in layouts:
        reason = skip_reason(layout, info)
        if reason:
            report["layouts"][layout] = {"skipped": reason}
            continue
        results[layout] = export_layout(args, layout, info, data, cache, out)
        report["layouts"][layout] = ({"reference": True, "processes": 1, "seconds": results[layout]["seconds"]}
                                     if layout == "single" else compare(args, out, layout, results[layout],
                                                                         results["single"]))
    if "single" in results:
        # The reference against itself, reloaded in a second fresh process: the reload is deterministic.
        run([sys.executable, "-c", RELOAD, str(out / "single"), str(out / "single.again.safetensors")],
            out / "single.again.log")
        from safetensors.torch import load_file

        first, again = load_file(out / "single.reloaded.safetensors"), load_file(out / "single.again.safetensors")
        report["layouts"]["single"]["reload_deterministic"] = first.keys() == again.keys() and all(
            first[name].equal(again[name]) for name in first)
    if not info["gpus"]:
        report["throughput"] = {"skipped": "bf16 throughput needs a GPU"}
    elif not info["bf16"]:
        report["throughput"] = {"skipped": f"{info['gpu']} has no bf16"}
    else:
        report["throughput"] = throughput(args, info, data, cache, out)

    (out / "gpu_checks.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {info}")
    failed = False
    for layout, entry in report["layouts"].items():
        if "skipped" in entry:
            print(f"{layout:>7}: skipped ({entry['skipped']})")
        elif entry.get("reference"):
            ok = entry["reload_deterministic"]
            failed |= not ok
            print(f"{layout:>7}: reference, {entry['seconds']} s, reload {'deterministic' if ok else 'NOT deterministic'}")
        else:
            failed |= not entry["passed"]
            status = "passed" if entry["passed"] else "FAILED " + ", ".join(k for k, v in entry["checks"].items() if not v)
            print(f"{layout:>7}: {status}; {entry['processes']} processes, max weight diff {entry['max_weight_diff']:.2e} "
                  f"({entry['worst_weight']}), max loss diff {entry['max_loss_diff']:.2e}, {entry['seconds']} s")
    tp = report["throughput"]
    print("throughput: " + (f"skipped ({tp['skipped']})" if "skipped" in tp else
                            f"MMGL / OPT = {tp['ratio_mmgl_over_opt']} ({tp['samples_per_second']} samples/s, bf16)"))
    print(f"report: {out / 'gpu_checks.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
