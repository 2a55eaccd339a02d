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
* `tables`: `{"table1": {"title", "fixed": {...}, "grid": {choice: [values]}, "cells": [{...}], "args": {...},
  "tag": str, "metric": column, "floor": {...}, "ceiling": {...}}}`. Design choices are `run_summarization.py`
  flags without dashes: the design axes (`context`, `neighbor_encoding`, `position_encoding`, `tuning`,
  `cross_attention_gating`, `neighbor_bridge`; `DESIGN_KEYS`, a column each) and any other flag of the script
  (`graph_target_feature`, `alpha_initializer`, ...): a cell naming such a flag that the script does not offer yet
  is left out, as is one whose `requires_flag` it does not list (the neighbour bridge cells carry one). A cell
  may also carry `tag` (a variant such as `"oracle"`: own run folders, shown in a `variant` column) and `args`
  (its own arguments, e.g. the oracle's data). A table's `tag` names runs whose `args` differ from the shared
  ones, so they never share a folder with other tables.
  `metric` is the column the table is judged on (e.g. a planted fact's `facts_right_child_section`; default
  `primary_metric`); `floor` and `ceiling` pick cells by their values (e.g. `{"context": "section_only"}`,
  `{"variant": "oracle"}`) drawn and printed with the table;
* `fact_scoring`: `{"seed": generator seed, "sources": [...]}`: score each run's test generations on the
  generated pages' planted facts (`fact_scoring.py`), adding `facts_*` and `rougeL_name_masked` columns;
* `jobs`: runs at a time (`--jobs` overrides).

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from processing.design_space import DESIGN_DEFAULTS as DESIGN, NEIGHBOR_BRIDGES

ROOT = Path(__file__).resolve().parent.parent
STUDIES_DIR = Path(__file__).resolve().parent
SCRIPT = "run_summarization.py"
DESIGN_KEYS = ("context", "neighbor_encoding", "position_encoding", "tuning", "cross_attention_gating", "neighbor_bridge")
# run_summarization.py's defaults, as the command-line values a cell compares with (booleans as "true" / "false").
DESIGN_DEFAULTS = {key: str(value).lower() if isinstance(value, bool) else value
                   for key, value in DESIGN.items() if key in DESIGN_KEYS}
DEFAULT_METRICS = ("predict_bleu4", "predict_rougeL", "predict_cider")
# Keys of a listed cell that are not design choices: a flag it needs, its own tag (a variant such as the oracle,
# with its own run folders) and arguments of its own (e.g. the oracle's data).
CELL_META_KEYS = {"requires_flag", "tag", "args"}
STATUS_FILE = "study_status.json"
LOG_FILE = "run.log"
ERROR_TAIL_LINES = 15
CSV_COLUMNS = (
    "run_id", "tables", "status", *DESIGN_KEYS, "extra design...", "tag", "variant", "seed", "metrics...",
    "trainable_params", "total_params", "trainable_share", "mean_input_tokens", "mean_neighbor_tokens",
    "train_step_time_s", "gate_cross_attn", "gate_dense", "peak_memory_mb", "wall_s", "returncode", "error", "run_dir",
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
        tag (`str`): the table's tag, then the cell's (`""` when its runs use only the shared arguments).
        args (`list[str]`): the arguments after the script name (`--output_dir` included).
        tables (`list[str]`): the tables that show this run.
        variant (`str`): the cell's own tag (e.g. `"oracle"`), shown as a column; `""` for most cells.
        extra (`dict`): design choices beyond `DESIGN_KEYS` (flags the script offers, e.g. `neighbor_bridge`).
    """

    run_id: str
    design: dict
    seed: int
    tag: str
    args: list[str]
    tables: list[str] = field(default_factory=list)
    variant: str = ""
    extra: dict = field(default_factory=dict)


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
        keys = set(body.get("fixed", {})) | set(body.get("grid", {}))
        for cell in body.get("cells", []):
            keys |= set(cell) - CELL_META_KEYS
        bad = sorted(k for k in keys if not re.fullmatch(r"[a-z][a-z0-9_]*", k))
        if bad:
            raise ValueError(f"study spec {path}, table {table!r}: {bad} are not design choices (script flags "
                             f"without dashes, e.g. {DESIGN_KEYS}).")
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
    """The table's cells: design choices plus the meta keys (`CELL_META_KEYS`) a listed cell carries. A cell whose
    `requires_flag` or whose design choice beyond `DESIGN_KEYS` is not a flag of the script is left out, so a spec
    can list cells (e.g. `neighbor_bridge`) before the script offers them."""
    fixed = table.get("fixed", {})
    grid = table.get("grid", {})
    cells = []
    keys = list(grid)
    products = itertools.product(*(grid[k] for k in keys)) if keys else [()] if not table.get("cells") else []
    for values in products:
        cells.append({**fixed, **dict(zip(keys, values))})
    for cell in table.get("cells", []):
        cells.append({**fixed, **cell})
    if flags is None:
        return [{k: v for k, v in c.items() if k != "requires_flag"} for c in cells]
    kept = []
    for cell in cells:
        needed = [cell["requires_flag"]] if cell.get("requires_flag") else []
        needed += [f"--{k}" for k in cell if k not in DESIGN_KEYS and k not in CELL_META_KEYS]
        if all(flag in flags for flag in needed):  # e.g. ungated CA-E before --cross_attention_gating exists
            kept.append({k: v for k, v in cell.items() if k != "requires_flag"})
    return kept


def _extra_design(cell: dict) -> dict:
    """The cell's design choices beyond `DESIGN_KEYS` (sorted by name)."""
    return {k: cell[k] for k in sorted(cell) if k not in DESIGN_KEYS and k not in CELL_META_KEYS}


def _run_id(explicit: dict, tag: str, seed: int) -> str:
    design = {**DESIGN_DEFAULTS, **explicit}
    parts = [design["neighbor_encoding"], design["context"], f"pe-{design['position_encoding']}",
             f"tune-{design['tuning']}"]
    if str(design["cross_attention_gating"]).lower() == "false":
        parts.append("ungated")
    if design["neighbor_bridge"] != "linear":
        parts.append(f"bridge-{design['neighbor_bridge']}")
    parts += [f"{k}-{v}" for k, v in _extra_design(explicit).items()]
    if tag:
        parts.append(tag)
    return "_".join(parts + [f"seed{seed}"])


def build_runs(spec: dict, variables: dict, seeds: int = 3, only: str | None = None,
               flags: set[str] | None = None) -> list[Run]:
    """Every run of the selected tables, in table order, shared runs listed once.

    Args:
        spec (`dict`): a loaded spec (`load_spec`).
        variables (`dict`): placeholder values (`output_dir` and `python` at least).
        seeds (`int`, *optional*, defaults to 3): seeds `0 .. seeds - 1` per cell.
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
        for cell in _cells(table, flags):
            variant = cell.get("tag", "")
            tag = "-".join(t for t in (table.get("tag", ""), variant) if t)
            cell_args = {**shared, **table.get("args", {}), **cell.get("args", {})}
            extra = _extra_design(cell)
            design = {k: cell[k] for k in DESIGN_KEYS if k in cell}
            for seed in range(seeds):
                run_id = _run_id({**design, **extra}, tag, seed)
                if run_id in runs:
                    if name not in runs[run_id].tables:
                        runs[run_id].tables.append(name)
                    continue
                run_dir = Path(variables["output_dir"]) / "runs" / run_id
                args = _args_to_list(cell_args, variables)
                for key, value in {**design, **extra}.items():
                    args += [f"--{key}", str(value)]
                args += ["--seed", str(seed), "--output_dir", str(run_dir)]
                runs[run_id] = Run(run_id, {**DESIGN_DEFAULTS, **design}, seed, tag, args, [name], variant, extra)
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


def collect_row(run: Run, metrics: Sequence[str], fact_scoring: dict | None = None) -> dict:
    """One `results.csv` row: design, seed, metrics and costs; a value no file gives is left empty.

    With `fact_scoring` (the spec's `{"seed", "sources"}`), the run's test generations are also scored on the
    planted facts (`fact_scoring.score_run`: `facts_right` / `facts_decoy` / `facts_neither`, per source,
    and `rougeL_name_masked`)."""
    run_dir = Path(run.args[run.args.index("--output_dir") + 1])
    status = _read_json(run_dir / STATUS_FILE) or {}
    results = _read_json(run_dir / "all_results.json") or {}
    complete = read_metrics(run_dir, metrics) is not None
    row: dict[str, Any] = {
        "run_id": run.run_id, "tables": ";".join(run.tables),
        "status": "finished" if complete else status.get("status", "not run"),
        **{k: run.design[k] for k in DESIGN_KEYS}, **run.extra, "extra_design": ";".join(run.extra),
        "tag": run.tag, "variant": run.variant, "seed": run.seed,
    }
    for m in metrics:
        row[m] = results.get(m, "") if complete else ""
    if fact_scoring is not None:
        from fact_scoring import fact_columns, score_run

        scores = score_run(run_dir, fact_scoring.get("seed", 0)) if complete else {}
        for column in fact_columns(fact_scoring.get("sources", ())):
            row[column] = scores.get(column, "")
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
    # The LM token vectors the neighbours become (placeholders, or cross-attention keys): constant with a bridge.
    neighbor_tokens = _find_key(report, ("mean_neighbor_tokens",))
    row["mean_neighbor_tokens"] = round(neighbor_tokens, 1) if neighbor_tokens is not None else ""
    history = state.get("log_history") or [{}]
    final = next((e for e in reversed(history) if "train_runtime" in e), {})
    steps_per_s = train.get("train_steps_per_second") or final.get("train_steps_per_second")
    row["train_step_time_s"] = round(1.0 / float(steps_per_s), 4) if steps_per_s else ""
    for kind in ("cross_attn", "dense"):  # gated CA-E: how far its blocks opened (tanh of the final alphas, mean)
        gates = [v for k, v in train.items() if k.startswith("train_gate_") and k.endswith(f"_{kind}")]
        row[f"gate_{kind}"] = round(statistics.fmean(gates), 4) if gates else ""
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


def write_csv(rows: list[dict], path: Path, metrics: Sequence[str], extra: Sequence[str] = (),
              extra_design: Sequence[str] = ()) -> None:
    columns = [c for c in CSV_COLUMNS if c not in ("metrics...", "extra design...")]
    at = columns.index("trainable_params")
    columns[at:at] = [*metrics, *extra]
    at = columns.index("tag")
    columns[at:at] = list(extra_design)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
# Cells and findings (pure functions of result rows: tested on hand-made rows)
# --------------------------------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1); between entries, the nearest smaller
# degrees of freedom (a slightly wider interval: conservative).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, UNDETERMINED = "holds", "does not hold", "inconclusive", "undetermined"


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


class Interval(NamedTuple):
    """Mean and 95% confidence interval of one cell over seeds: `mean ± half`; `half` is infinite with one
    seed (one run says nothing about the spread)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def interval(values: Sequence[float]) -> Interval:
    """The mean of `values` and the half-width of its two-sided 95% t-interval."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.inf, n)
    t = T_975[max(k for k in T_975 if k <= n - 1)]
    return Interval(mean, t * statistics.stdev(values) / math.sqrt(n), n)


def compare(a: Interval, b: Interval) -> str:
    """`"above"` when `a`'s interval lies wholly above `b`'s, `"below"` when wholly below, else `"overlap"`."""
    if a.low > b.high:
        return "above"
    if a.high < b.low:
        return "below"
    return "overlap"


def _cell(row: dict, keys: Sequence[str]) -> tuple:
    """A row's values of `keys`; a design key the row lacks (rows written before it existed) has its default, any
    other key reads as `""`."""
    return tuple(row.get(k, DESIGN_DEFAULTS.get(k, "")) for k in keys)


def cell_stats(rows: list[dict], keys: Sequence[str], column: str) -> dict[tuple, Interval]:
    """`{cell: Interval}` of `column` over the finished rows, a cell being the values of `keys` (`_cell`)."""
    values: dict[tuple, list[float]] = {}
    for row in rows:
        if row.get("status") != "finished":
            continue
        v = _number(row.get(column))
        if v is not None:
            values.setdefault(_cell(row, keys), []).append(v)
    return {cell: interval(v) for cell, v in values.items()}


@dataclass
class Finding:
    """A verdict on one of the paper's findings from 95% intervals over seeds: `holds` (every comparison the
    finding makes is separated in the paper's direction), `does not hold` (one is separated the other way),
    `inconclusive` (intervals overlap, or one seed) or `undetermined` (cells missing), with the numbers."""

    verdict: str
    reason: str


def _verdict(comparisons: Sequence[str]) -> str:
    """Verdict from comparisons each made in the paper's direction ("above" = as the paper says)."""
    if any(c == "below" for c in comparisons):
        return DOES_NOT_HOLD
    return HOLDS if comparisons and all(c == "above" for c in comparisons) else INCONCLUSIVE


def _show(value: Interval) -> str:
    return f"{value.mean:.3f}" + (f" ± {value.half:.3f}" if math.isfinite(value.half) else " (1 seed)")


def _plain(rows: list[dict]) -> list[dict]:
    """The rows of the paper's cells: no variant (oracle), no neighbour bridge and no design choice beyond
    `DESIGN_KEYS`."""
    extra = _extra_keys(rows)
    return [r for r in rows if not r.get("variant") and _cell(r, ("neighbor_bridge",)) == (DESIGN["neighbor_bridge"],)
            and not any(r.get(k) not in (None, "") for k in extra)]


def _extra_keys(rows: list[dict]) -> list[str]:
    """Design choices beyond `DESIGN_KEYS` that the rows carry (each row names its own in `extra_design`)."""
    return sorted({k for r in rows for k in str(r.get("extra_design") or "").split(";") if k})


def finding_context(rows: list[dict], metric: str) -> Finding:
    """Finding 1: more multimodal context improves generation (Table 1, SA-TE): `all` above `section_only`."""
    stats = cell_stats(_plain(rows), ("context",), metric)
    if ("all",) not in stats or ("section_only",) not in stats:
        return Finding(UNDETERMINED, f"have contexts {sorted(c for (c,) in stats)}; need `all` and `section_only`")
    text = ", ".join(f"{c} {_show(v)}" for (c,), v in stats.items())
    result = compare(stats[("all",)], stats[("section_only",)])
    best = max(stats, key=lambda c: stats[c].mean)[0]
    return Finding(_verdict([result]), f"`all` vs `section_only`: {result}; best mean `{best}` ({metric}: {text})")


def finding_encoding(rows: list[dict], metric: str) -> Finding:
    """Finding 2: SA-TE performs best but needs the longest inputs (Table 2). SA-TE above SA-E and above gated CA-E,
    each encoding's score per seed averaged over the contexts all three have, `section_only` left out (there the
    three encodings are the same model); ungated CA-E, bridged cells and other variants are shown but not judged."""
    rows = [r for r in _plain(rows) if str(r.get("cross_attention_gating", "true")).lower() != "false"
            and r.get("context") != "section_only"]
    encodings = ("sa_te", "sa_e", "ca_e")
    quality = cell_stats(rows, ("neighbor_encoding", "context"), metric)
    shared = sorted({c for _, c in quality if all((e, c) in quality for e in encodings)})
    if not shared:
        return Finding(UNDETERMINED, "no context beyond section_only has results for all of SA-TE, SA-E and CA-E")
    per_seed: dict[str, dict[int, list[float]]] = {e: {} for e in encodings}
    for r in rows:
        v = _number(r.get(metric))
        if r.get("status") == "finished" and v is not None and r.get("context") in shared:
            per_seed[r["neighbor_encoding"]].setdefault(r.get("seed"), []).append(v)
    score = {e: interval([statistics.fmean(v) for v in seeds.values() if len(v) == len(shared)] or [math.nan])
             for e, seeds in per_seed.items()}
    results = [compare(score["sa_te"], score[e]) for e in ("sa_e", "ca_e")]
    length = cell_stats(rows, ("neighbor_encoding",), "mean_input_tokens")
    lengths = ""
    if all((e,) in length for e in encodings):
        longest = max(encodings, key=lambda e: length[(e,)].mean)
        lengths = ("; input tokens: " + ", ".join(f"{e} {length[(e,)].mean:.0f}" for e in encodings)
                   + f" (longest: `{longest}`)")
    text = ", ".join(f"{e} {_show(v)}" for e, v in score.items())
    return Finding(_verdict(results), f"SA-TE vs SA-E: {results[0]}, vs CA-E: {results[1]} ({metric} over contexts "
                                      f"{shared}: {text}){lengths}")


GRAPH_ENCODINGS = ("laplacian", "gnn")


def finding_position(rows: list[dict], metric: str) -> Finding:
    """Finding 3: graph position encodings (LPE or GNN, the best of them, target-aware or not) above `none` and
    `sequence` (Table 3); whether GNN is above LPE, the paper's own ranking, is stated beside."""
    keys = ("position_encoding", "graph_target_feature")
    stats = cell_stats([r for r in rows if not r.get("variant")], keys, metric)
    graph = {c: v for c, v in stats.items() if c[0] in GRAPH_ENCODINGS}
    baselines = {c: v for c, v in stats.items() if c[0] in ("none", "sequence")}
    if not graph or not baselines:
        return Finding(UNDETERMINED, f"have {sorted('/'.join(filter(None, c)) for c in stats)}; need a graph "
                                     "encoding (laplacian / gnn) and none or sequence")
    best = max(graph, key=lambda c: graph[c].mean)
    results = [compare(graph[best], v) for v in baselines.values()]
    name = lambda c: "/".join(x for x in c if x and x != "none") or "none"  # noqa: E731
    text = ", ".join(f"{name(c)} {_show(v)}" for c, v in stats.items())
    against = ", ".join(f"vs {name(c)}: {r}" for c, r in zip(baselines, results))
    gnn = [c for c in graph if c[0] == "gnn"]
    lpe = [c for c in graph if c[0] == "laplacian"]
    note = ""
    if gnn and lpe:
        g, l = max(gnn, key=lambda c: graph[c].mean), max(lpe, key=lambda c: graph[c].mean)
        note = f"; GNN vs LPE (the paper ranks GNN first): {compare(graph[g], graph[l])}"
    return Finding(_verdict(results), f"best graph encoding `{name(best)}` {against}{note} ({metric}: {text})")


def finding_tuning(rows: list[dict], metric: str) -> Finding:
    """Finding 4: LoRA (with SA-TE) and Flamingo (with CA-E) are the best parameter-efficient methods (Table 4):
    SA-TE LoRA above SA-TE prefix and prompt; CA-E Flamingo above the no-neighbour baseline (`section_only`)
    and above every prefix / prompt cell. Each PEFT cell's comparison with the baseline is listed."""
    stats = cell_stats([r for r in rows if not r.get("variant")], ("neighbor_encoding", "tuning", "context"), metric)
    base = [c for c in stats if c[2] == "section_only"]
    cells = {f"{e}/{t}": v for (e, t, c), v in stats.items() if c != "section_only"}
    if "sa_te/lora" not in cells or "ca_e/flamingo" not in cells or not base:
        return Finding(UNDETERMINED, f"cells present: {sorted('/'.join(c) for c in stats)}; need sa_te/lora, "
                                     "ca_e/flamingo and a section_only baseline")
    baseline = stats[base[0]]
    weaker = {k: v for k, v in cells.items() if k.endswith(("/prefix", "/prompt"))}
    a = [compare(cells["sa_te/lora"], v) for k, v in weaker.items() if k.startswith("sa_te/")]
    b = [compare(cells["ca_e/flamingo"], baseline)] + [compare(cells["ca_e/flamingo"], v) for v in weaker.values()]
    peft = ", ".join(f"{k} {_show(v)} ({compare(v, baseline)})" for k, v in cells.items()
                     if k.split("/")[1] in ("lora", "prefix", "prompt", "flamingo"))
    parts = [f"SA-TE LoRA vs SA-TE prefix / prompt: {', '.join(a) or 'missing'}",
             f"CA-E Flamingo vs baseline and prefix / prompt: {', '.join(b)}"]
    return Finding(_verdict(a + b), f"{'; '.join(parts)}; each PEFT cell vs the no-neighbour baseline "
                                    f"{_show(baseline)}: {peft} ({metric})")


FINDINGS = {  # table -> (the paper's finding, its direction, the check)
    "table1": ("More multimodal context improves generation.", "all > section_only", finding_context),
    "table2": ("SA-TE performs best but needs the longest inputs.", "SA-TE > SA-E and CA-E, SA-TE longest",
               finding_encoding),
    "table3": ("GNN embeddings are the most effective graph position encoding.",
               "graph encodings (GNN first, then LPE) > sequence and none", finding_position),
    "table4": ("LoRA (with SA-TE) and Flamingo (with CA-E) are the best parameter-efficient methods.",
               "LoRA > prefix / prompt with SA-TE; Flamingo > prefix / prompt and > no neighbours", finding_tuning),
}
TABLE_COLUMNS = {  # design columns shown per table, then metrics, then the table's cost columns
    "table1": (("context",), ()),
    "table2": (("neighbor_encoding", "neighbor_bridge", "cross_attention_gating", "context"),
               ("mean_input_tokens", "mean_neighbor_tokens", "train_step_time_s", "peak_memory_mb", "gate_cross_attn",
                "gate_dense")),
    "table3": (("position_encoding",), ("mean_input_tokens", "train_step_time_s")),
    "table4": (("neighbor_encoding", "tuning", "context"), ("trainable_params", "trainable_share")),
}


def _has(rows: list[dict], column: str) -> bool:
    return any(_number(r.get(column)) is not None for r in rows if r.get("status") == "finished")


def table_metric(table: dict, rows: list[dict], primary: str) -> str:
    """The metric a table is judged on: its spec's `metric` (a planted fact's column) when the rows have it,
    else the spec's primary metric."""
    wanted = table.get("metric")
    return wanted if wanted and _has(rows, wanted) else primary


def table_keys(name: str, rows: list[dict]) -> tuple[str, ...]:
    """The columns that name a cell of a table: its design columns, any extra design choice its rows carry (e.g.
    `graph_target_feature`, `neighbor_bridge`) and `variant` when a cell has one."""
    keys = TABLE_COLUMNS.get(name, (DESIGN_KEYS, ()))[0]
    extra = tuple(k for k in _extra_keys(rows) if any(r.get(k) not in (None, "") for r in rows))
    variant = ("variant",) if any(r.get("variant") for r in rows) else ()
    return (*keys, *extra, *variant)


def _matching(stats: dict, keys: Sequence[str], wanted: dict | None) -> Interval | None:
    if not wanted:
        return None
    for cell, value in stats.items():
        if all(str(dict(zip(keys, cell)).get(k, "")) == str(v) for k, v in wanted.items()):
            return value
    return None


def floor_and_ceiling(name: str, table: dict, rows: list[dict], metric: str) -> tuple[Interval | None, Interval | None]:
    """The table's floor (its spec's `floor` cell, e.g. `section_only`) and ceiling (`ceiling`, e.g. the oracle
    cell whose target section states the fact) on `metric`."""
    keys = table_keys(name, rows)
    stats = cell_stats(rows, keys, metric)
    return _matching(stats, keys, table.get("floor")), _matching(stats, keys, table.get("ceiling"))


def _fmt(entry: Interval | None, digits=4) -> str:
    if entry is None:
        return ""
    mean, half, n = entry
    text = f"{mean:,.0f}" if abs(mean) >= 1000 else f"{mean:.{digits}f}"
    return text + (f" ± {half:.{digits}f}" if n > 1 and math.isfinite(half) else "")


def _short(column: str) -> str:
    return column.removeprefix("predict_")


def table_markdown(name: str, rows: list[dict], metrics: Sequence[str], primary: str, table: dict | None = None) -> list[str]:
    """One table of RESULTS.md: one line per cell (mean ± 95% interval over seeds), floor and ceiling, and the
    computed verdict beside the paper's own direction."""
    table = table or {}
    rows = [r for r in rows if name in str(r.get("tables", "")).split(";")]
    keys = table_keys(name, rows)
    costs = [c for c in TABLE_COLUMNS.get(name, (DESIGN_KEYS, ()))[1] if _has(rows, c)]  # e.g. gates: CA-E only
    metric = table_metric(table, rows, primary)
    shown = [metric]
    if metric.startswith("facts_right"):
        shown.append(metric.replace("facts_right", "facts_decoy", 1))
    if _has(rows, "rougeL_name_masked"):
        shown.append("rougeL_name_masked")
    shown += [m for m in metrics if m not in shown]
    title = table.get("title", "")
    lines = [f"## {name}: {title}".rstrip(": "), ""]
    header = [*keys, *(_short(m) + (" (judged)" if m == metric else "") for m in shown), *costs, "seeds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = []
    for row in rows:
        cell = _cell(row, keys)
        if cell not in cells:
            cells.append(cell)
    columns = {c: cell_stats(rows, keys, c) for c in (*shown, *costs)}
    for cell in cells:
        n = max((columns[m].get(cell, Interval(0, 0, 0)).n for m in shown), default=0)
        failed = sum(1 for r in rows if _cell(r, keys) == cell and r.get("status") != "finished")
        values = [_fmt(columns[m].get(cell)) for m in shown]
        values += [_fmt(columns[c].get(cell), 1 if c in ("mean_input_tokens", "mean_neighbor_tokens") else 4)
                   for c in costs]
        seeds = f"{n}" + (f" (+{failed} not finished)" if failed else "")
        lines.append("| " + " | ".join([*map(str, cell), *values, seeds]) + " |")
    floor, ceiling = floor_and_ceiling(name, table, rows, metric)
    if floor is not None or ceiling is not None:
        lines += ["", f"Floor ({_describe(table.get('floor'))}): {_fmt(floor) or 'not run'}; ceiling "
                      f"({_describe(table.get('ceiling'))}): {_fmt(ceiling) or 'not run'} ({_short(metric)})."]
    if name in FINDINGS:
        claim, direction, check = FINDINGS[name]
        finding = check(rows, metric)
        lines += ["", f"**Paper's finding:** {claim} Paper's direction: {direction}. **On this data "
                      f"({_short(metric)}, 95% intervals over seeds): {finding.verdict}** — {finding.reason}."]
    return lines + [""]


def _describe(cell: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (cell or {}).items() if v != "") or "none given"


def write_results_md(rows: list[dict], spec: dict, path: Path, metrics: Sequence[str], primary: str,
                     plots: Sequence[str] = ()) -> None:
    facts = " Fact columns: share of test generations stating the planted fact (`facts_right_*`) or a decoy of its " \
            "kind (`facts_decoy_*`), the page name masked." if spec.get("fact_scoring") else ""
    lines = [f"# Study results: {spec.get('description', path.parent.name)}", "",
             f"Runs: {len(rows)} ({sum(r['status'] == 'finished' for r in rows)} finished). Metrics are the test "
             f"split's, mean ± half-width of the 95% t-interval over seeds (one seed: no interval, every verdict "
             f"inconclusive). Each table is judged on the metric marked \"judged\" (its spec's `metric`, else "
             f"`{primary}`): a finding holds when every comparison it makes has intervals separated in the paper's "
             f"direction, does not hold when one is separated the other way, and is inconclusive otherwise.{facts} "
             "Input tokens: per training example.", ""]
    for name, table in spec["tables"].items():
        lines += table_markdown(name, rows, metrics, primary, table)
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


# Switches whose default a plot label leaves out (the other axes' values are always shown).
LABEL_SKIPS_DEFAULT = ("cross_attention_gating", "neighbor_bridge", "graph_target_feature", "alpha_initializer")


# Switches whose bare value says little on an axis ("false", "ones", "distance").
LABEL_FORMATS = {"cross_attention_gating": "gating {}", "alpha_initializer": "gates start {}",
                 "graph_target_feature": "target {}"}


def _label(keys: Sequence[str], cell: tuple) -> str:
    """A cell's axis label: its values on one line, the switches' defaults left out."""
    parts = [LABEL_FORMATS.get(k, "{}").format(v) for k, v in zip(keys, cell) if v not in ("", None)
             and not (k in LABEL_SKIPS_DEFAULT and str(v).lower() == str(DESIGN[k]).lower())]
    return " / ".join(parts) or "default"


def write_plots(rows: list[dict], spec: dict, output_dir: Path, primary: str) -> list[str]:
    """`tables.png`: one panel per table, each cell's judged metric as a horizontal bar with its 95% interval and
    value, the axis zoomed to the data, floor and ceiling drawn; `table2_tradeoff.png`: LM input tokens vs
    that metric per encoding, bridge and context. Returns the written paths."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(spec["tables"])
    columns = 2 if len(names) > 1 else 1
    grid_rows = -(-len(names) // columns)
    panels = []
    for name in names:
        table = spec["tables"][name]
        table_rows = [r for r in rows if name in str(r.get("tables", "")).split(";")]
        keys = table_keys(name, table_rows)
        metric = table_metric(table, table_rows, primary)
        panels.append((name, table, table_rows, keys, metric, cell_stats(table_rows, keys, metric)))
    # Panel height grows with the cells of the fullest table, so one-line labels never overlap.
    panel_height = max(3.6, 1.6 + 0.32 * max(len(panel[-1]) for panel in panels))
    figure, axes = plt.subplots(grid_rows, columns, figsize=(8.5 * columns, panel_height * grid_rows), squeeze=False)
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    for axis, (name, table, table_rows, keys, metric, stats) in zip(axes.flat, panels):
        title = f"{name}: {table.get('title', '')}".rstrip(": ")
        axis.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
        axis.set_xlabel(_short(metric) + " (mean, 95% interval over seeds)", fontsize=9)
        if not stats:
            axis.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=axis.transAxes)
            continue
        cells = list(stats)
        means = [stats[c].mean for c in cells]
        halves = [stats[c].half if math.isfinite(stats[c].half) else 0.0 for c in cells]
        y = list(range(len(cells)))[::-1]  # first cell on top
        # Points with their intervals, not bars: the axis is zoomed to the data, where bar lengths would mislead.
        axis.errorbar(means, y, xerr=halves, fmt="o", color="tab:blue", ecolor="tab:blue", capsize=4, markersize=6)
        axis.set_yticks(y, [_label(keys, c) for c in cells], fontsize=8)
        floor, ceiling = floor_and_ceiling(name, table, table_rows, metric)
        lows = [m - h for m, h in zip(means, halves)] + [v.mean for v in (floor, ceiling) if v is not None]
        highs = [m + h for m, h in zip(means, halves)] + [v.mean for v in (floor, ceiling) if v is not None]
        low, high = min(lows), max(highs)
        margin = max((high - low) * 0.15, 0.01)
        axis.set_xlim(low - margin, high + margin * 2.5)  # zoomed to the data; room for the value labels
        for yy, m, h, c in zip(y, means, halves, cells):
            seeds = "" if stats[c].n > 1 else " (1 seed)"
            axis.text(m + h + margin * 0.15, yy, f"{m:.3f}{seeds}", va="center", fontsize=8)
        axis.set_ylim(-0.6, len(cells) - 0.4)
        for value, colour, label in ((floor, "tab:red", "floor"), (ceiling, "tab:green", "ceiling")):
            if value is not None:
                axis.axvline(value.mean, color=colour, linestyle="--", linewidth=1.2, label=f"{label} {value.mean:.3f}")
        if floor is not None or ceiling is not None:
            # Below the axis, where it covers no point.
            axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    paths = [output_dir / "tables.png"]
    figure.savefig(paths[0], dpi=110)
    plt.close(figure)

    if "table2" not in spec["tables"]:
        return [str(p) for p in paths]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    table2 = [r for r in rows if "table2" in str(r.get("tables", "")).split(";")]
    metric = table_metric(spec["tables"].get("table2", {}), table2, primary)
    keys = ("neighbor_encoding", "neighbor_bridge", "cross_attention_gating", "context")
    quality, length = cell_stats(table2, keys, metric), cell_stats(table2, keys, "mean_input_tokens")
    markers = {"sa_te": "o", "sa_e": "s", "ca_e": "^"}
    for encoding, bridge, gating in itertools.product(markers, NEIGHBOR_BRIDGES, ("true", "false")):
        cells = [c for c in quality if c[:2] == (encoding, bridge) and str(c[2]).lower() == gating and c in length]
        if not cells:
            continue
        label = (encoding + (f" + {bridge}" if bridge != DESIGN["neighbor_bridge"] else "")
                 + (" (ungated)" if gating == "false" else ""))
        halves = [quality[c].half if math.isfinite(quality[c].half) else 0.0 for c in cells]
        axis.errorbar([length[c].mean for c in cells], [quality[c].mean for c in cells], yerr=halves,
                      fmt=markers[encoding], label=label, capsize=3,
                      markerfacecolor="none" if gating == "false" else None)
        for c in cells:
            axis.annotate(c[3], (length[c].mean, quality[c].mean), fontsize=8, xytext=(4, 4),
                          textcoords="offset points")
    if not length:
        axis.text(0.5, 0.5, "no input lengths recorded", ha="center", transform=axis.transAxes)
    axis.set(xlabel="mean LM input tokens per example", ylabel=_short(metric),
             title="Table 2: input length vs " + _short(metric))
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(output_dir / "table2_tradeoff.png")
    figure.savefig(paths[1], dpi=110)
    plt.close(figure)
    return [str(p) for p in paths]


def aggregate(runs: list[Run], spec: dict, output_dir: Path) -> list[dict]:
    """Writes `results.csv`, the plots and `RESULTS.md` in `output_dir`; returns the rows."""
    metrics = spec.get("metrics", list(DEFAULT_METRICS))
    primary = spec.get("primary_metric", metrics[0])
    facts = spec.get("fact_scoring")
    rows = [collect_row(run, metrics, facts) for run in runs]
    output_dir.mkdir(parents=True, exist_ok=True)
    extra = []
    if facts is not None:
        from fact_scoring import fact_columns

        extra = fact_columns(facts.get("sources", ()))
    extra_design = sorted({k for run in runs for k in run.extra})
    write_csv(rows, output_dir / "results.csv", metrics, extra, extra_design)
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
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (0 .. N-1; default 3: verdicts need intervals)")
    parser.add_argument("--only", help="run one table (e.g. table2)")
    parser.add_argument("--dry_run", action="store_true", help="print every command, run nothing")
    parser.add_argument("--launcher", help='e.g. "accelerate launch --num_processes 4" (default: plain python)')
    parser.add_argument("--aggregate_only", action="store_true",
                        help="run nothing; write results.csv, RESULTS.md and the plots from the runs already there")
    parser.add_argument("--run_timeout_s", type=float, help="kill a run after this many seconds (recorded as failed)")
    parser.add_argument("--jobs", type=int, help="runs at a time (default: the spec's 'jobs', else 1); give each "
                        "run its share of the cores through the spec's env (e.g. OMP_NUM_THREADS=1)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be >= 1")
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
    jobs = args.jobs or spec.get("jobs", 1)

    def one(k: int, run: Run) -> None:
        run_dir = Path(run.args[run.args.index("--output_dir") + 1])
        if read_metrics(run_dir, metrics) is not None:
            print(f"[{k}/{len(runs)}] {run.run_id}: finished earlier, skipped", flush=True)
            return
        print(f"[{k}/{len(runs)}] {run.run_id} ...", flush=True)
        record = execute(run, run_command(run, launcher), env, metrics, world_size, args.run_timeout_s)
        note = "" if record["status"] == "finished" else f"  (log: {run_dir / LOG_FILE})"
        print(f"[{k}/{len(runs)}] {run.run_id}: {record['status']} in {record['wall_s']:.0f} s{note}", flush=True)

    # Each run is its own process; `jobs` of them at a time (threads only wait for them).
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, k, run) for k, run in enumerate(runs, 1)]:
            future.result()
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
