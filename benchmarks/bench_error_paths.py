"""How long each command takes to print one ``error:`` line on bad input (issue 20: 19-22 s, every error path
imported torch and transformers).

Each case runs the real command in a fresh process on input that is refused (a missing file or folder, a flag out
of range) and records the wall-clock seconds and the CPU seconds of the process (user + system, from
``resource.getrusage(RUSAGE_CHILDREN)``: other load on a shared machine inflates the wall-clock figure, much less
the CPU one). With ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/base <commit>``)
the same cases run there too, interleaved with this checkout's, so both see the same machine.

Usage::

    python benchmarks/bench_error_paths.py [--repeats 3] [--baseline /tmp/base]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cases(tmp: Path) -> dict[str, list[str]]:
    missing = tmp / "missing"
    return {
        "image fetcher: missing URL list": ["-m", "processing.data.image_fetcher", str(missing / "urls.txt"),
                                            str(tmp / "c")],
        "converter: missing TFRecord": ["-m", "processing.data.wikiweb2m", str(missing / "x.tfrecord"), str(tmp / "o")],
        "cache builder: missing image folder": ["-m", "processing.data.build_embedding_cache", str(missing / "data"),
                                                str(tmp / "e"), "--image_dir", str(missing / "images")],
        "run_summarization: missing image folder": [
            "run_summarization.py", "--config_overrides", "hidden_size=8", "--train_files", str(missing / "x"),
            "--do_train", "--output_dir", str(tmp / "r"), "--image_dir", str(missing / "images")],
    }


def timed(checkout: Path, args: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, the error line) of one run in ``checkout``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, *args], cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((line for line in proc.stderr.splitlines() if line.startswith("error: ")), "(no error line)")
    return wall, cpu, line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout of the commit to compare with")
    args = parser.parse_args(argv)
    checkouts = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    with tempfile.TemporaryDirectory() as tmp:
        todo = cases(Path(tmp))
        results = {(name, which): [] for name in todo for which in checkouts}
        lines = {}
        for _ in range(args.repeats):
            for name, case in todo.items():
                for which, checkout in checkouts.items():  # interleaved: both see the same load
                    wall, cpu, line = timed(checkout, case)
                    results[(name, which)].append((wall, cpu))
                    lines[(name, which)] = line
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; median of {args.repeats}")
    print(f"| case | {' | '.join(f'{w} wall s | {w} CPU s' for w in checkouts)} |")
    print("|---|" + "---:|" * (2 * len(checkouts)))
    for name in todo:
        cells = []
        for which in checkouts:
            runs = results[(name, which)]
            cells += [f"{statistics.median(w for w, _ in runs):.1f}", f"{statistics.median(c for _, c in runs):.1f}"]
        print(f"| {name} | {' | '.join(cells)} |")
    for (name, which), line in lines.items():
        print(f"{which:>8} | {name}: {line[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
