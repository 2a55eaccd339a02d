"""Run one `make demo` step and record its wall time; `--report` prints every step's time (the last step).

    python demo/timed.py out/demo/timings.tsv "train all" -- python run_summarization.py ...
    python demo/timed.py out/demo/timings.tsv --report
"""
import subprocess
import sys
import time
from pathlib import Path


def main(argv):
    log = Path(argv[0])
    if argv[1] == "--report":
        rows = [line.split("\t") for line in log.read_text().splitlines()]
        total = sum(float(seconds) for _, seconds in rows)
        print("\nmake demo, wall time per step:")
        for name, seconds in rows:
            print(f"  {name:<28} {float(seconds):7.1f} s")
        print(f"  {'total':<28} {total:7.1f} s ({total / 60:.1f} min)")
        return 0
    name, command = argv[1], argv[argv.index("--") + 1:]
    start = time.monotonic()
    code = subprocess.call(command)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"{name}\t{time.monotonic() - start:.1f}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
