"""Estimate the complete controlled study's time (issue 23) from short runs of each kind of cell.

A cell's time is its steps times the seconds per step of its kind, plus what does not scale with steps (start-up,
data, prediction and fact scoring). This measures both on short runs (``--steps``, default 30) of one cell per kind
(`KINDS`), each with one torch thread, two at a time (as the spec runs them: ``jobs`` 2, ``OMP_NUM_THREADS=1``),
after one run alone that fills the embedding cache. Then every run of the spec (``--seeds``) is priced with the
kind it maps to, and the total is divided by the spec's ``jobs`` (perfect packing: a lower bound). The LM
pretraining and the data generation are timed once each.

    python benchmarks/bench_study_time.py [--steps 30] [--seeds 3] [--output_dir /tmp/study_time]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))

import run_study  # noqa: E402

# Cost kinds: one measured run each; every run of the spec is priced as the kind of its encoding and context
# (position encodings, PEFT and gates cost about their base cell's step; LoRA / prefix / prompt measured apart).
KINDS = {
    "sa_e/all": "sa_e_all_pe-none_tune-full_seed0",  # first: its warm-up run alone fills the embedding cache
    "sa_te/section_only": "sa_te_section_only_pe-none_tune-full_seed0",
    "sa_te/section_all": "sa_te_section_all_pe-none_tune-full_seed0",
    "sa_te/text_only": "sa_te_text_only_pe-none_tune-full_seed0",
    "sa_te/all": "sa_te_all_pe-none_tune-full_seed0",
    "ca_e/all": "ca_e_all_pe-none_tune-full_seed0",
    "sa_e/all/gnn (16 text neighbours)": "sa_e_all_pe-gnn_tune-full_t3_seed0",
    "sa_te/all/lora": "sa_te_all_pe-none_tune-lora_seed0",
    "sa_te/all/prefix": "sa_te_all_pe-none_tune-prefix_seed0",
}


def kind_of(run: run_study.Run) -> str:
    d = run.design
    if d["context"] == "section_only":
        return "sa_te/section_only"  # no neighbours: every encoding is the same model
    if d["tuning"] in ("lora", "flamingo") and d["neighbor_encoding"] == "sa_te":
        return "sa_te/all/lora"
    if d["tuning"] in ("prefix", "prompt") and d["neighbor_encoding"] == "sa_te":
        return "sa_te/all/prefix"
    if run.tag.startswith("t3"):
        return "sa_e/all/gnn (16 text neighbours)"
    if d["neighbor_encoding"] == "sa_te":
        return f"sa_te/{d['context']}"
    return f"{d['neighbor_encoding']}/all"  # section_all / text_only have fewer slots: priced as all (upper bound)


def _max_steps(run: run_study.Run) -> int:
    return int(run.args[run.args.index("--max_steps") + 1])


def _with_steps(run: run_study.Run, steps: int, output_dir: Path) -> list[str]:
    args = list(run.args)
    args[args.index("--max_steps") + 1] = str(steps)
    args[args.index("--output_dir") + 1] = str(output_dir / "runs" / run.run_id)
    return args


def measure(run: run_study.Run, steps: int, output_dir: Path, env: dict) -> dict:
    command = [sys.executable, run_study.SCRIPT, *_with_steps(run, steps, output_dir)]
    start = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / f"{run.run_id}.log"
    with log.open("w") as handle:
        done = subprocess.run(command, cwd=ROOT, env=run_study._child_env(env), stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{run.run_id} failed (exit {done.returncode}); see {log}\n$ {shlex.join(command)}")
    train = json.loads((output_dir / "runs" / run.run_id / "train_results.json").read_text())
    runtime = float(train["train_runtime"])
    return {"run_id": run.run_id, "wall_s": wall, "train_s": runtime, "step_s": runtime / steps,
            "other_s": wall - runtime}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output_dir", default="/tmp/study_time")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = run_study.load_spec("controlled")
    variables = {k: v for k, v in spec.get("variables", {}).items()}
    variables.update(python=sys.executable, root=str(ROOT), output_dir=str(output_dir),
                     data_dir=str(output_dir / "data"))
    env = spec.get("env", {})
    timings_file = output_dir / "prepare_timings.json"  # kept: a second call skips the steps already done
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    for step in spec["prepare"]:  # timed once each (the pretraining on --steps steps, scaled below)
        command = [run_study._substitute(part, variables) for part in step["command"]]
        if step["name"] == "pretrained_lm":
            command[command.index("--max_steps") + 1] = str(args.steps)
        creates = Path(run_study._substitute(step["creates"], variables))
        if creates.exists():
            continue
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=run_study._child_env(env), check=True, stdout=subprocess.DEVNULL)
        timings[step["name"]] = time.perf_counter() - start
        timings_file.write_text(json.dumps(timings))
    flags = run_study.script_flags(env=env)
    runs = run_study.build_runs(spec, variables, args.seeds, flags=flags)
    by_id = {r.run_id: r for r in runs}
    warm_up = measure(by_id[KINDS["sa_e/all"]], args.steps, output_dir / "warm_up", env)  # fills the cache
    with ThreadPoolExecutor(max_workers=spec.get("jobs", 1)) as pool:
        futures = {kind: pool.submit(measure, by_id[run_id], args.steps, output_dir, env) for kind, run_id in KINDS.items()}
        measured = {kind: f.result() for kind, f in futures.items()}
    total = 0.0
    for run in runs:
        m = measured[kind_of(run)]
        total += _max_steps(run) * m["step_s"] + m["other_s"]
    pretrain_steps = int(next(s for s in spec["prepare"] if s["name"] == "pretrained_lm")["command"][-1])
    pretrain = timings.get("pretrained_lm")
    if pretrain is not None:  # start-up and tokenizer training once, then the measured steps scaled
        runtime = json.loads((output_dir / "pretrained_lm" / "pretrain_results.json").read_text())["train_runtime"]
        pretrain = pretrain - runtime + runtime / args.steps * pretrain_steps
    result = {
        "load": os.getloadavg(), "steps_measured": args.steps, "seeds": args.seeds, "runs": len(runs),
        "jobs": spec.get("jobs", 1), "kinds": measured,
        "runs_total_s": total, "runs_wall_estimate_s": total / spec.get("jobs", 1),
        "data_s": timings.get("data"), "oracle_data_s": timings.get("oracle_data"),
        "pretrain_s_estimate": pretrain, "pretrain_steps": pretrain_steps, "warm_up_with_cache_fill": warm_up,
    }
    print(json.dumps(result, indent=2))
    (output_dir / "estimate.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
