#!/usr/bin/env python
"""Run an MMGL study (the paper's four tables) from a spec, resumably, and aggregate it.

    python studies/run_study.py controlled                       # offline, generated data (`make study`)
    python studies/run_study.py paper --train_files "wikiweb2m/wikiweb2m-train.tfrecord*" \
        --image_dir wikiweb2m/images --launcher "accelerate launch --num_processes 4"
    python studies/run_study.py paper --dry_run                  # every run_summarization.py command

A spec (`studies/NAME.json`, or a path) names the shared `run_summarization.py` arguments and the grid of
each table; every grid cell x seed is one run, launched as its own `run_summarization.py` process (plain
python, or under `--launcher`) with its own folder `<output_dir>/runs/<run id>`. Two tables asking for the
same run share it. A run whose `all_results.json` holds every metric of the spec is finished and skipped on
the next call; a failed run is recorded (`study_status.json`, the last lines of its log) and the others go on.
After running, `results.csv` (one row per run), `RESULTS.md` (the four tables, each with its computed
verdict on the paper's finding) and the plots are written in `<output_dir>`.

Spec keys (all optional but `tables`):

* `description`; `metrics` (keys of `all_results.json`) and `primary_metric` (the one verdicts use);
* `env`: environment variables for every process (e.g. `HF_HUB_OFFLINE`);
* `variables`: `{name: template}`, defaults of the placeholders (`{train_files}`, `{image_dir}`, ...);
* `prepare`: steps run before the tables, `{"name", "command": [...], "creates": path, "tables": [...]}`
  (skipped when `creates` exists, or when none of its `tables` is selected);
* `shared_args`: `{"--flag": value}` for every run; `true` gives the bare flag, `null` removes it;
* `if_installed`: `{"python_module": {"requires_flag": "--flag", "args": {...}}}`: the args are added when
  the module is importable and (if named) `run_summarization.py --help` lists the flag;
* `tables`: `{"table1": {"title", "finding", "fixed": {...}, "grid": {choice: [values]}, "cells": [{...}],
  "args": {...}, "tag": str}}`. Design choices are `run_summarization.py` flags without dashes
  (`context`, `neighbor_encoding`, `position_encoding`, `tuning`, `cross_attention_gating`); a cell
  may carry `requires_flag` (kept only when `--help` lists it). `tag` names runs whose table `args`
  differ from the shared ones (e.g. a pretrained base model), so they never share a folder with other tables.

Placeholders in strings: `{python}`, `{root}` (the project), `{output_dir}`, `{data_dir}`
(`<output_dir>/data`), `{train_files}`, `{image_dir}`, `{package_dir:MODULE}` and any `variables`.
An argument whose value needs a variable that is unset (e.g. `--image_dir` without `--image_dir`) is dropped.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import statistics
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from processing.design_space import DESIGN_DEFAULTS as DESIGN

ROOT = Path(__file__).resolve().parent.parent
STUDIES_DIR = Path(__file__).resolve().parent
SCRIPT = "run_summarization.py"
DESIGN_KEYS = ("context", "neighbor_encoding", "position_encoding", "tuning", "cross_attention_gating")
# run_summarization.py's defaults, as the command-line values a cell compares with (booleans as "true" / "false").
DESIGN_DEFAULTS = {key: str(value).lower() if isinstance(value, bool) else value
                   for key, value in DESIGN.items() if key in DESIGN_KEYS}
DEFAULT_METRICS = ("predict_bleu4", "predict_rougeL", "predict_cider")
STATUS_FILE = "study_status.json"
LOG_FILE = "run.log"
ERROR_TAIL_LINES = 15
CSV_COLUMNS = (
    "run_id", "tables", "status", *DESIGN_KEYS, "tag", "seed", "metrics...", "trainable_params", "total_params",
    "trainable_share", "mean_input_tokens", "train_step_time_s", "peak_memory_mb", "wall_s", "returncode",
    "error", "run_dir",
)


class _Unset(Exception):
    """A placeholder names a variable that has no value."""


# --------------------------------------------------------------------------------------------------
# Spec -> runs
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One `run_summarization.py` process of the study.

    Attributes:
        run_id (`str`): folder name under `<output_dir>/runs`; the same design, tag and seed give the same id.
        design (`dict`): every design choice (`DESIGN_KEYS`), defaults filled in.
        seed (`int`): training seed.
        tag (`str`): the table's tag (`""` when its runs use only the shared arguments).
        args (`list[str]`): the arguments after the script name (`--output_dir` included).
        tables (`list[str]`): the tables that show this run.
    """

    run_id: str
    design: dict
    seed: int
    tag: str
    args: list[str]
    tables: list[str] = field(default_factory=list)


def load_spec(name: str) -> dict:
    """The spec `studies/<name>.json` (or the JSON file `name`)."""
    path = Path(name) if name.endswith(".json") else STUDIES_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.json"))
        raise FileNotFoundError(f"study spec {path} does not exist (specs in {STUDIES_DIR}: {known}).")
    spec = json.loads(path.read_text())
    if not isinstance(spec.get("tables"), dict) or not spec["tables"]:
        raise ValueError(f"study spec {path}: 'tables' must be a non-empty object of tables.")
    for table, body in spec["tables"].items():
        unknown = set(body.get("fixed", {})) | set(body.get("grid", {}))
        for cell in body.get("cells", []):
            unknown |= set(cell) - {"requires_flag"}
        unknown -= set(DESIGN_KEYS)
        if unknown:
            raise ValueError(f"study spec {path}, table {table!r}: unknown design choices {sorted(unknown)} "
                             f"(expected some of {DESIGN_KEYS}).")
    return spec


def script_flags(python: str = sys.executable, script: Path = ROOT / SCRIPT, env: dict | None = None) -> set[str]:
    """The `--flags` that `script --help` lists (so a spec can use a flag only once the script has it)."""
    key = (python, str(script))
    if key not in _FLAG_CACHE:
        out = subprocess.run([python, str(script), "--help"], capture_output=True, text=True, cwd=ROOT,
                             env=_child_env(env or {}))
        if out.returncode != 0:
            raise RuntimeError(f"{script} --help failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        _FLAG_CACHE[key] = set(re.findall(r"(--[A-Za-z0-9_]+)", out.stdout))
    return _FLAG_CACHE[key]


_FLAG_CACHE: dict[tuple, set[str]] = {}


def _child_env(extra: dict) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class _Formatter(string.Formatter):
    def __init__(self, variables: dict):
        self.variables = variables

    def parse(self, format_string):
        # "{package_dir:MODULE}" is one placeholder; str.format would read "MODULE" as a format spec.
        for literal, field_name, spec, conversion in super().parse(format_string):
            if field_name == "package_dir" and spec:
                field_name, spec = f"package_dir:{spec}", ""
            yield literal, field_name, spec, conversion

    def get_field(self, field_name, args, kwargs):
        return self.get_value(field_name, args, kwargs), field_name  # no attribute / index lookups ("a.b")

    def get_value(self, key, args, kwargs):
        if isinstance(key, str) and key.startswith("package_dir:"):
            module = key.split(":", 1)[1]
            found = importlib.util.find_spec(module)
            if found is None or not found.submodule_search_locations:
                raise _Unset(key)
            return list(found.submodule_search_locations)[0]
        value = self.variables.get(key)
        if value is None:
            raise _Unset(key)
        return value


def _substitute(template: Any, variables: dict) -> Any:
    if not isinstance(template, str):
        return template
    formatter = _Formatter(variables)
    # A variable's default may itself be a template ("{data_dir}/images").
    for _ in range(5):
        new = formatter.format(template)
        if new == template:
            break
        template = new
    return template


def _args_to_list(args: dict, variables: dict) -> list[str]:
    out = []
    for flag, value in args.items():
        if value is None or value is False:
            continue
        try:
            value = _substitute(value, variables)
        except _Unset:
            continue  # e.g. --image_dir when no image folder was given
        out += [flag] if value is True else [flag, str(value)]
    return out


def _cells(table: dict, flags: set[str] | None) -> list[dict]:
    fixed = table.get("fixed", {})
    grid = table.get("grid", {})
    cells = []
    keys = list(grid)
    products = itertools.product(*(grid[k] for k in keys)) if keys else [()] if not table.get("cells") else []
    for values in products:
        cells.append({**fixed, **dict(zip(keys, values))})
    for cell in table.get("cells", []):
        needed = cell.get("requires_flag")
        if needed and flags is not None and needed not in flags:
            continue  # e.g. ungated CA-E before --cross_attention_gating exists
        cells.append({**fixed, **{k: v for k, v in cell.items() if k != "requires_flag"}})
    return cells


def _run_id(explicit: dict, tag: str, seed: int) -> str:
    design = {**DESIGN_DEFAULTS, **explicit}
    parts = [design["neighbor_encoding"], design["context"], f"pe-{design['position_encoding']}",
             f"tune-{design['tuning']}"]
    if str(design["cross_attention_gating"]).lower() == "false":
        parts.append("ungated")
    if tag:
        parts.append(tag)
    return "_".join(parts + [f"seed{seed}"])


def build_runs(spec: dict, variables: dict, seeds: int = 1, only: str | None = None,
               flags: set[str] | None = None) -> list[Run]:
    """Every run of the selected tables, in table order, shared runs listed once.

    Args:
        spec (`dict`): a loaded spec (`load_spec`).
        variables (`dict`): placeholder values (`output_dir` and `python` at least).
        seeds (`int`, *optional*, defaults to 1): seeds `0 .. seeds - 1` per cell.
        only (`str`, *optional*): one table's name.
        flags (`set[str]`, *optional*): the flags of `run_summarization.py --help`; `None` keeps every
            `requires_flag` cell and conditional argument (used by nothing but tests).
    """
    tables = spec["tables"]
    if only is not None and only not in tables:
        raise ValueError(f"--only {only!r}: the spec has tables {list(tables)}.")
    shared = dict(spec.get("shared_args", {}))
    for module, conditional in spec.get("if_installed", {}).items():
        needed = conditional.get("requires_flag")
        if importlib.util.find_spec(module) is None or (needed and flags is not None and needed not in flags):
            continue
        shared.update(conditional.get("args", {}))
    runs: dict[str, Run] = {}
    for name, table in tables.items():
        if only is not None and name != only:
            continue
        tag = table.get("tag", "")
        table_args = {**shared, **table.get("args", {})}
        for cell in _cells(table, flags):
            for seed in range(seeds):
                run_id = _run_id(cell, tag, seed)
                if run_id in runs:
                    if name not in runs[run_id].tables:
                        runs[run_id].tables.append(name)
                    continue
                run_dir = Path(variables["output_dir"]) / "runs" / run_id
                args = _args_to_list(table_args, variables)
                for key in DESIGN_KEYS:
                    if key in cell:
                        args += [f"--{key}", str(cell[key])]
                args += ["--seed", str(seed), "--output_dir", str(run_dir)]
                runs[run_id] = Run(run_id, {**DESIGN_DEFAULTS, **cell}, seed, tag, args, [name])
    return list(runs.values())


def run_command(run: Run, launcher: str | None, python: str = sys.executable) -> list[str]:
    """The process of one run: `python run_summarization.py ARGS` or `<launcher> run_summarization.py ARGS`."""
    prefix = shlex.split(launcher) if launcher else [python]
    return prefix + [SCRIPT] + run.args


def launcher_world_size(launcher: str | None) -> int:
    """Processes a launcher starts (`--num_processes N` / `--nproc_per_node N`), 1 without one."""
    if not launcher:
        return 1
    match = re.search(r"--(?:num_processes|nproc_per_node|nproc-per-node)[= ](\d+)", launcher)
    return int(match.group(1)) if match else 1


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path, metrics: Sequence[str]) -> dict | None:
    """`all_results.json` of a run when it holds every metric in `metrics` as a number, else `None`."""
    path = Path(run_dir) / "all_results.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(values, dict) or not all(isinstance(values.get(m), (int, float)) for m in metrics):
        return None
    return values


def _log_tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    # Progress bars rewrite one line with carriage returns: keep what the last rewrite shows.
    kept = [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def execute(run: Run, command: list[str], env: dict, metrics: Sequence[str], world_size: int = 1,
            timeout_s: float | None = None) -> dict:
    """Runs one process (stdout and stderr to `<run_dir>/run.log`) and writes `<run_dir>/study_status.json`.

    The status is `finished` when `all_results.json` holds every metric (a non-zero exit after that, e.g. in
    the final export, is kept in `returncode` / `error`), else `failed`. Peak memory is the process tree's
    maximum resident set size (`os.wait4`), so it is CPU memory; GPU runs report theirs in their own files.
    """
    run_dir = Path(run.args[run.args.index("--output_dir") + 1])
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / LOG_FILE
    start = time.perf_counter()
    with log.open("w") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=_child_env(env))
        deadline = None if timeout_s is None else start + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                handle.write(f"\nkilled by the study runner after {timeout_s:.0f} s\n")
                break
            time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    complete = read_metrics(run_dir, metrics) is not None
    record = {
        "run_id": run.run_id, "status": "finished" if complete else "failed", "returncode": process.returncode,
        "wall_s": round(wall, 2), "peak_memory_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "world_size": world_size, "command": command,
        "error": "" if process.returncode == 0 else _log_tail(log),
    }
    (run_dir / STATUS_FILE).write_text(json.dumps(record, indent=2))
    return record


def run_prepare(spec: dict, variables: dict, selected_tables: set[str], env: dict, dry_run: bool) -> None:
    """The spec's `prepare` steps (data generation, LM pretraining), each skipped once its output exists."""
    for step in spec.get("prepare", []):
        if step.get("tables") and not selected_tables & set(step["tables"]):
            continue
        command = [_substitute(part, variables) for part in step["command"]]
        creates = Path(_substitute(step["creates"], variables)) if step.get("creates") else None
        if dry_run:
            print(f"# prepare {step['name']}: {shlex.join(command)}")
            continue
        if creates is not None and creates.exists():
            print(f"[prepare] {step['name']}: {creates} exists, skipped", flush=True)
            continue
        print(f"[prepare] {step['name']}: {shlex.join(command)}", flush=True)
        log = Path(variables["output_dir"]) / f"prepare_{step['name']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=_child_env(env))
        if done.returncode != 0 or (creates is not None and not creates.exists()):
            raise RuntimeError(f"prepare step {step['name']!r} failed (exit {done.returncode}); its log {log} "
                               f"ends with:\n{_log_tail(log)}")


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def _find_key(obj: Any, names: Sequence[str]) -> Any:
    """The first value under any key in `names`, searching nested dicts (files whose layout may change)."""
    if isinstance(obj, dict):
        for name in names:
            if isinstance(obj.get(name), (int, float)):
                return obj[name]
        for value in obj.values():
            found = _find_key(value, names)
            if found is not None:
                return found
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_row(run: Run, metrics: Sequence[str]) -> dict:
    """One `results.csv` row: design, seed, metrics and costs; a value no file gives is left empty."""
    run_dir = Path(run.args[run.args.index("--output_dir") + 1])
    status = _read_json(run_dir / STATUS_FILE) or {}
    results = _read_json(run_dir / "all_results.json") or {}
    complete = read_metrics(run_dir, metrics) is not None
    row: dict[str, Any] = {
        "run_id": run.run_id, "tables": ";".join(run.tables),
        "status": "finished" if complete else status.get("status", "not run"),
        **{k: run.design[k] for k in DESIGN_KEYS}, "tag": run.tag, "seed": run.seed,
    }
    for m in metrics:
        row[m] = results.get(m, "") if complete else ""
    train = _read_json(run_dir / "train_results.json") or {}
    state = _read_json(run_dir / "trainer_state.json") or {}
    report = _read_json(run_dir / "data_report.json")
    # The script records the sizes of the model it trained (after tuning wrapped it) in all_results.json.
    trainable, total = results.get("trainable_parameters"), results.get("total_parameters")
    row["trainable_params"] = trainable if trainable is not None else ""
    row["total_params"] = total if total is not None else ""
    row["trainable_share"] = round(trainable / total, 6) if trainable and total else ""
    # Mean input tokens: the data report when run_summarization.py writes one, else the Trainer's count of
    # input_ids positions seen (padded batches, summary included) over the training examples seen.
    tokens = _find_key(report, ("mean_input_tokens", "mean_input_tokens_per_example", "input_tokens_mean"))
    if tokens is None:
        seen, steps, batch = state.get("num_input_tokens_seen"), state.get("global_step"), state.get("train_batch_size")
        accumulation = _flag_value(run.args, "--gradient_accumulation_steps", 1)
        if seen and steps and batch:
            tokens = seen / (steps * batch * accumulation * status.get("world_size", 1))
    row["mean_input_tokens"] = round(tokens, 1) if tokens else ""
    history = state.get("log_history") or [{}]
    final = next((e for e in reversed(history) if "train_runtime" in e), {})
    steps_per_s = train.get("train_steps_per_second") or final.get("train_steps_per_second")
    row["train_step_time_s"] = round(1.0 / float(steps_per_s), 4) if steps_per_s else ""
    gpu = _find_key(train, ("peak_memory_mb", "train_peak_memory_mb", "max_memory_allocated_mb"))
    row["peak_memory_mb"] = gpu if gpu is not None else status.get("peak_memory_mb", "")
    row["wall_s"] = status.get("wall_s", "")
    row["returncode"] = status.get("returncode", "")
    row["error"] = status.get("error", "")
    row["run_dir"] = str(run_dir)
    return row


def _flag_value(args: list[str], flag: str, default: int) -> int:
    try:
        return int(args[args.index(flag) + 1])
    except (ValueError, IndexError):
        return default


def write_csv(rows: list[dict], path: Path, metrics: Sequence[str]) -> None:
    columns = [c for c in CSV_COLUMNS if c != "metrics..."]
    at = columns.index("trainable_params")
    columns[at:at] = list(metrics)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
# Cells and findings (pure functions of result rows: tested on hand-made rows)
# --------------------------------------------------------------------------------------------------


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def cell_stats(rows: list[dict], keys: Sequence[str], column: str) -> dict[tuple, tuple[float, float, int]]:
    """`{cell: (mean, spread, n)}` of `column` over the finished rows, a cell being the values of `keys`;
    the spread is the sample standard deviation over seeds (0 for one seed)."""
    values: dict[tuple, list[float]] = {}
    for row in rows:
        if row.get("status") != "finished":
            continue
        v = _number(row.get(column))
        if v is not None:
            values.setdefault(tuple(row[k] for k in keys), []).append(v)
    return {cell: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for cell, v in values.items()}


@dataclass
class Finding:
    """A verdict on one of the paper's findings: `holds`, `partly holds`, `does not hold` or
    `undetermined` (cells missing), with the numbers that decided it."""

    verdict: str
    reason: str


def _mean(stats: dict, cell: tuple) -> float | None:
    return stats[cell][0] if cell in stats else None


def finding_context(rows: list[dict], metric: str) -> Finding:
    """Finding 1: more multimodal context improves generation (Table 1, SA-TE): `all` beats `section_only`
    and is the best context (holds); beats `section_only` only (partly)."""
    stats = cell_stats(rows, ("context",), metric)
    contexts = ("section_only", "section_all", "text_only", "all")
    missing = [c for c in contexts if (c,) not in stats]
    if ("all",) not in stats or ("section_only",) not in stats:
        return Finding("undetermined", f"missing contexts: {missing}")
    scores = {c: _mean(stats, (c,)) for c in contexts if (c,) in stats}
    best = max(scores, key=scores.get)
    text = ", ".join(f"{c} {v:.4f}" for c, v in scores.items())
    if scores["all"] > scores["section_only"] and best == "all":
        return Finding("holds", f"`all` is the best context on {metric} ({text})")
    if scores["all"] > scores["section_only"]:
        return Finding("partly holds", f"`all` beats `section_only` but `{best}` is best on {metric} ({text})")
    return Finding("does not hold", f"`all` does not beat `section_only` on {metric} ({text})")


def finding_encoding(rows: list[dict], metric: str) -> Finding:
    """Finding 2: SA-TE performs best but needs the longest inputs (Table 2). Compared on the contexts where
    SA-TE, SA-E and CA-E (gated) all have results: mean metric and mean input tokens per encoding."""
    rows = [r for r in rows if str(r.get("cross_attention_gating", "true")).lower() != "false"]
    quality = cell_stats(rows, ("neighbor_encoding", "context"), metric)
    length = cell_stats(rows, ("neighbor_encoding", "context"), "mean_input_tokens")
    encodings = ("sa_te", "sa_e", "ca_e")
    contexts = sorted({c for _, c in quality})
    shared = [c for c in contexts if all((e, c) in quality for e in encodings)]
    if not shared:
        return Finding("undetermined", "no context has results for all of SA-TE, SA-E and CA-E")
    q = {e: statistics.fmean(quality[(e, c)][0] for c in shared) for e in encodings}
    best = max(q, key=q.get)
    text = ", ".join(f"{e} {v:.4f}" for e, v in q.items())
    have_length = all((e, c) in length for e in encodings for c in shared)
    if have_length:
        n = {e: statistics.fmean(length[(e, c)][0] for c in shared) for e in encodings}
        longest = max(n, key=n.get)
        lengths = ", ".join(f"{e} {v:.0f}" for e, v in n.items())
    where = f"mean {metric} over contexts {shared}: {text}"
    if not have_length:
        part = "SA-TE is best" if best == "sa_te" else f"`{best}` is best, not SA-TE"
        return Finding("undetermined", f"{part} ({where}); input lengths missing, so the length half is open")
    if best == "sa_te" and longest == "sa_te":
        return Finding("holds", f"SA-TE is best and has the longest inputs ({where}; input tokens: {lengths})")
    if best == "sa_te" or longest == "sa_te":
        half = "best but not the longest" if best == "sa_te" else f"longest but `{best}` is best"
        return Finding("partly holds", f"SA-TE is {half} ({where}; input tokens: {lengths})")
    return Finding("does not hold", f"SA-TE is neither best nor longest ({where}; input tokens: {lengths})")


def finding_position(rows: list[dict], metric: str) -> Finding:
    """Finding 3: GNN embeddings are the most effective graph position encoding (Table 3)."""
    stats = cell_stats(rows, ("position_encoding",), metric)
    if ("gnn",) not in stats or len(stats) < 2:
        return Finding("undetermined", f"have only {sorted(c for (c,) in stats)}")
    scores = {c: v[0] for (c,), v in stats.items()}
    best = max(scores, key=scores.get)
    text = ", ".join(f"{c} {v:.4f}" for c, v in scores.items())
    if best == "gnn":
        return Finding("holds", f"GNN is the best position encoding on {metric} ({text})")
    return Finding("does not hold", f"`{best}` beats GNN on {metric} ({text})")


def finding_tuning(rows: list[dict], metric: str) -> Finding:
    """Finding 4: LoRA (with SA-TE) and Flamingo (with CA-E) are the best parameter-efficient methods (Table 4).
    Part A: LoRA is the best PEFT method with SA-TE. Part B: Flamingo with CA-E beats every prefix / prompt row."""
    stats = cell_stats(rows, ("neighbor_encoding", "tuning"), metric)
    sa_te = {t: v[0] for (e, t), v in stats.items() if e == "sa_te" and t in ("lora", "prefix", "prompt")}
    others = {f"{e}/{t}": v[0] for (e, t), v in stats.items() if t in ("prefix", "prompt")}
    flamingo = _mean(stats, ("ca_e", "flamingo"))
    if "lora" not in sa_te or len(sa_te) < 2 or flamingo is None or not others:
        return Finding("undetermined", f"cells present: {sorted('/'.join(c) for c in stats)}")
    a = max(sa_te, key=sa_te.get) == "lora"
    b = all(flamingo > v for v in others.values())
    text = ("SA-TE PEFT: " + ", ".join(f"{t} {v:.4f}" for t, v in sa_te.items())
            + f"; CA-E flamingo {flamingo:.4f} vs prefix/prompt " + ", ".join(f"{k} {v:.4f}" for k, v in others.items()))
    verdict = "holds" if a and b else "partly holds" if a or b else "does not hold"
    parts = [("LoRA is " if a else "LoRA is not ") + "the best PEFT with SA-TE",
             ("Flamingo beats " if b else "Flamingo does not beat ") + "every prefix / prompt run"]
    return Finding(verdict, f"{'; '.join(parts)} ({metric}: {text})")


FINDINGS = {
    "table1": ("More multimodal context improves generation.", finding_context),
    "table2": ("SA-TE performs best but needs the longest inputs.", finding_encoding),
    "table3": ("GNN embeddings are the most effective graph position encoding.", finding_position),
    "table4": ("LoRA (with SA-TE) and Flamingo (with CA-E) are the best parameter-efficient methods.", finding_tuning),
}
TABLE_COLUMNS = {  # design columns shown per table, then metrics, then the table's cost columns
    "table1": (("context",), ()),
    "table2": (("neighbor_encoding", "cross_attention_gating", "context"), ("mean_input_tokens", "train_step_time_s")),
    "table3": (("position_encoding",), ("mean_input_tokens", "train_step_time_s")),
    "table4": (("neighbor_encoding", "tuning"), ("trainable_params", "trainable_share")),
}


def _fmt(stats_entry, digits=4) -> str:
    if stats_entry is None:
        return ""
    mean, spread, n = stats_entry
    if abs(mean) >= 1000:
        text = f"{mean:,.0f}"
    else:
        text = f"{mean:.{digits}f}"
    return text + (f" ± {spread:.{digits}f}" if n > 1 else "")


def table_markdown(name: str, rows: list[dict], metrics: Sequence[str], primary: str, title: str = "") -> list[str]:
    """One table of RESULTS.md: one line per cell (mean ± spread over seeds) and the computed verdict."""
    keys, costs = TABLE_COLUMNS.get(name, (DESIGN_KEYS, ()))
    rows = [r for r in rows if name in str(r.get("tables", "")).split(";")]
    lines = [f"## {name}: {title}".rstrip(": "), ""]
    header = [*keys, *(m.removeprefix("predict_") for m in metrics), *costs, "seeds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = []
    for row in rows:
        cell = tuple(row[k] for k in keys)
        if cell not in cells:
            cells.append(cell)
    columns = {c: cell_stats(rows, keys, c) for c in (*metrics, *costs)}
    for cell in cells:
        n = max((columns[m].get(cell, (0, 0, 0))[2] for m in metrics), default=0)
        failed = sum(1 for r in rows if tuple(r[k] for k in keys) == cell and r.get("status") != "finished")
        values = [_fmt(columns[m].get(cell)) for m in metrics]
        values += [_fmt(columns[c].get(cell), 1 if c == "mean_input_tokens" else 4 if c != "trainable_share" else 4)
                   for c in costs]
        seeds = f"{n}" + (f" (+{failed} not finished)" if failed else "")
        lines.append("| " + " | ".join([*map(str, cell), *values, seeds]) + " |")
    if name in FINDINGS:
        claim, check = FINDINGS[name]
        finding = check(rows, primary)
        lines += ["", f"**Paper's finding:** {claim} **On this data: {finding.verdict}** — {finding.reason}."]
    return lines + [""]


def write_results_md(rows: list[dict], spec: dict, path: Path, metrics: Sequence[str], primary: str,
                     plots: Sequence[str] = ()) -> None:
    lines = [f"# Study results: {spec.get('description', path.parent.name)}", "",
             f"Runs: {len(rows)} ({sum(r['status'] == 'finished' for r in rows)} finished). Metrics are the test "
             f"split's (`all_results.json`), mean ± sample standard deviation over seeds; verdicts use "
             f"`{primary}`. Input tokens: per training example.", ""]
    for name, table in spec["tables"].items():
        lines += table_markdown(name, rows, metrics, primary, table.get("title", ""))
    failed = [r for r in rows if r["status"] != "finished"]
    if failed:
        lines += ["## Runs that did not finish", ""]
        for r in failed:
            lines += [f"- `{r['run_id']}` ({r['status']}, exit {r['returncode']}):", "", "  ```",
                      *("  " + line for line in str(r["error"]).splitlines()[-ERROR_TAIL_LINES:]), "  ```"]
        lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    path.write_text("\n".join(lines))


def write_plots(rows: list[dict], spec: dict, output_dir: Path, primary: str) -> list[str]:
    """`tables.png` (one panel per table: the primary metric per cell) and `table2_tradeoff.png`
    (input tokens vs the metric per encoding and context). Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(spec["tables"])
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for axis, name in zip(axes[0], names):
        keys = TABLE_COLUMNS.get(name, (DESIGN_KEYS, ()))[0]
        table_rows = [r for r in rows if name in r["tables"].split(";")]
        stats = cell_stats(table_rows, keys, primary)
        labels = ["/".join(str(v) for v in cell if v not in ("true",)) for cell in stats]
        means = [v[0] for v in stats.values()]
        spreads = [v[1] for v in stats.values()]
        axis.bar(range(len(means)), means, yerr=spreads, color="tab:blue", alpha=0.8, capsize=3)
        axis.set_xticks(range(len(means)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_title(f"{name}: {spec['tables'][name].get('title', '')}"[:48], fontsize=9)
        axis.set_ylabel(primary, fontsize=8)
    figure.tight_layout()
    paths = [output_dir / "tables.png"]
    figure.savefig(paths[0], dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5.5, 4))
    table2 = [r for r in rows if "table2" in r["tables"].split(";")]
    keys = ("neighbor_encoding", "cross_attention_gating", "context")
    quality, length = cell_stats(table2, keys, primary), cell_stats(table2, keys, "mean_input_tokens")
    markers = {"sa_te": "o", "sa_e": "s", "ca_e": "^"}
    for encoding in markers:
        for gating in ("true", "false"):
            cells = [c for c in quality if c[0] == encoding and str(c[1]).lower() == gating and c in length]
            if not cells:
                continue
            label = encoding + (" (ungated)" if gating == "false" else "")
            axis.scatter([length[c][0] for c in cells], [quality[c][0] for c in cells], marker=markers[encoding],
                         label=label, facecolors="none" if gating == "false" else None)
            for c in cells:
                axis.annotate(c[2], (length[c][0], quality[c][0]), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
    if not length:
        axis.text(0.5, 0.5, "no input lengths recorded", ha="center", transform=axis.transAxes)
    axis.set(xlabel="mean input tokens per example", ylabel=primary, title="Table 2: input length vs quality")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(output_dir / "table2_tradeoff.png")
    figure.savefig(paths[1], dpi=110)
    plt.close(figure)
    return [str(p) for p in paths]


def aggregate(runs: list[Run], spec: dict, output_dir: Path) -> list[dict]:
    """Writes `results.csv`, the plots and `RESULTS.md` in `output_dir`; returns the rows."""
    metrics = spec.get("metrics", list(DEFAULT_METRICS))
    primary = spec.get("primary_metric", metrics[0])
    rows = [collect_row(run, metrics) for run in runs]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output_dir / "results.csv", metrics)
    plots = write_plots(rows, spec, output_dir, primary)
    write_results_md(rows, spec, output_dir / "RESULTS.md", metrics, primary, plots)
    return rows


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python studies/run_study.py", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="a spec in studies/ (controlled, paper, ...) or a path to a spec .json")
    parser.add_argument("--train_files", help="WikiWeb2M TFRecord file(s) or glob ({train_files})")
    parser.add_argument("--image_dir", help="folder of the page images ({image_dir})")
    parser.add_argument("--output_dir", help="defaults to out/study/NAME")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell (0 .. N-1)")
    parser.add_argument("--only", help="run one table (e.g. table2)")
    parser.add_argument("--dry_run", action="store_true", help="print every command, run nothing")
    parser.add_argument("--launcher", help='e.g. "accelerate launch --num_processes 4" (default: plain python)')
    parser.add_argument("--aggregate_only", action="store_true",
                        help="run nothing; write results.csv, RESULTS.md and the plots from the runs already there")
    parser.add_argument("--run_timeout_s", type=float, help="kill a run after this many seconds (recorded as failed)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    spec = load_spec(args.name)
    name = Path(args.name).stem
    output_dir = Path(args.output_dir or f"out/study/{name}").resolve()
    variables = {k: v for k, v in spec.get("variables", {}).items()}
    variables.update(python=sys.executable, root=str(ROOT), output_dir=str(output_dir),
                     data_dir=str(output_dir / "data"))
    for key in ("train_files", "image_dir"):
        if getattr(args, key) is not None:
            variables[key] = getattr(args, key)
    if variables.get("train_files") is None:
        if not args.dry_run:
            parser.error(f"study {name!r} needs --train_files (WikiWeb2M TFRecord file or glob).")
        variables["train_files"] = "<TRAIN_FILES>"
    env = spec.get("env", {})
    launcher = args.launcher or spec.get("launcher")
    flags = script_flags(env=env)
    runs = build_runs(spec, variables, args.seeds, args.only, flags)
    selected = {args.only} if args.only else set(spec["tables"])
    if args.aggregate_only:
        rows = aggregate(runs, spec, output_dir)
        print(f"{sum(r['status'] == 'finished' for r in rows)}/{len(rows)} runs finished; {output_dir}/RESULTS.md")
        return 0
    run_prepare(spec, variables, selected, env, args.dry_run)
    if args.dry_run:
        for run in runs:
            print(shlex.join(run_command(run, launcher)))
        return 0
    metrics = spec.get("metrics", list(DEFAULT_METRICS))
    world_size = launcher_world_size(launcher)
    start = time.perf_counter()
    for k, run in enumerate(runs, 1):
        run_dir = Path(run.args[run.args.index("--output_dir") + 1])
        if read_metrics(run_dir, metrics) is not None:
            print(f"[{k}/{len(runs)}] {run.run_id}: finished earlier, skipped", flush=True)
            continue
        print(f"[{k}/{len(runs)}] {run.run_id} ...", flush=True)
        record = execute(run, run_command(run, launcher), env, metrics, world_size, args.run_timeout_s)
        note = "" if record["status"] == "finished" else f"  (log: {run_dir / LOG_FILE})"
        print(f"[{k}/{len(runs)}] {run.run_id}: {record['status']} in {record['wall_s']:.0f} s{note}", flush=True)
    rows = aggregate(runs, spec, output_dir)
    done = sum(r["status"] == "finished" for r in rows)
    print(f"{done}/{len(rows)} runs finished in {time.perf_counter() - start:.0f} s; "
          f"results in {output_dir}/RESULTS.md, results.csv, tables.png, table2_tradeoff.png")
    return 0 if done == len(rows) else 1


__all__ = [
    "Finding", "Run", "aggregate", "build_runs", "cell_stats", "collect_row", "execute", "finding_context",
    "finding_encoding", "finding_position", "finding_tuning", "launcher_world_size", "load_spec", "main",
    "read_metrics", "run_command", "script_flags",
]

if __name__ == "__main__":
    sys.exit(main())
