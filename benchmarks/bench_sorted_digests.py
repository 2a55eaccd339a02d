"""The shared sorted-digest lookups (`processing/sorted_digests.py`) against the inline code they replaced (same
arrays, best of 5): whether one table for the three stores costs lookup speed. Run: python benchmarks/bench_sorted_digests.py"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from processing.sorted_digests import find_one, find_sorted

def best(fn, n=5):
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return min(out)

rng = np.random.default_rng(0)
for width, n in ((16, 1_000_000), (32, 1_000_000)):
    keys = np.sort(np.frombuffer(rng.bytes(width * n), dtype=f"V{width}"))
    wanted = keys[rng.integers(0, n, 64)]
    def old_find():
        for _ in range(2000):
            rows = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            np.where(keys[rows] == wanted, rows, -1)
    def new_find():
        for _ in range(2000):
            find_sorted(keys, wanted)
    singles = [keys[i] for i in rng.integers(0, n, 20000)]
    def old_one():
        for key in singles:
            row = int(np.searchsorted(keys, key)); row < len(keys) and keys[row] == key
    def new_one():
        for key in singles:
            find_one(keys, key)
    a, b, c, d = best(old_find), best(new_find), best(old_one), best(new_one)
    print(f"V{width} x {n:,}: batch of 64: old {a/2000*1e6:.1f} us, shared {b/2000*1e6:.1f} us | one key: old {c/20000*1e6:.2f} us, shared {d/20000*1e6:.2f} us")
