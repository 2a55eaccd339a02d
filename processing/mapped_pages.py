"""Give back the pages of memory-mapped files that a pass over a whole data set has read.

The page table (Arrow), the token store and the embedding cache are read through read-only memory maps. Every page
a process touches stays in its resident set (file-backed: shared and reclaimable, but counted by `ps`,
`/usr/bin/time` and schedulers that kill on resident memory) until the mapping is closed, so a first start that
reads every page of a 2M-page table would end with the whole table resident. `release_mapped_files` drops a
process's page-table entries for the read-only maps of the files registered with `track`
(``madvise(MADV_DONTNEED)``: the data stays in the page cache, a later read maps it again without I/O);
`ReleaseEvery` calls it every so many reads, so what stays resident is bounded by one block of reads.

Only mappings without write permission are released, found by file name in ``/proc/self/maps``: a private
writable or anonymous mapping is never touched (``MADV_DONTNEED`` would discard its contents). Elsewhere than
Linux this is a no-op.

This file is Hub-loadable: it imports the standard library only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable

_MADV_RANDOM, _MADV_DONTNEED = 1, 4
_TRACKED: set[str] = set()  # inherited by forked DataLoader workers, as are the maps themselves
_libc = None


def track(path: str | os.PathLike) -> None:
    """Register a memory-mapped file whose pages `release_mapped_files` gives back, and mark its maps for random
    reads (no read-ahead and no fault-around: a row or a lookup maps its own pages, not the 64 KiB around them)."""
    _TRACKED.add(os.path.realpath(path))
    release_mapped_files([path])


def track_table(pages) -> None:
    """Register the Arrow files a `datasets.Dataset` is memory-mapped from (nothing for other tables)."""
    for cache_file in getattr(pages, "cache_files", None) or ():
        track(cache_file["filename"])


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc.madvise


def release_mapped_files(paths: Iterable[str | os.PathLike] | None = None) -> int:
    """Drop this process's resident pages of the read-only maps of ``paths`` (default: every tracked file).

    Returns:
        `int`: the number of mappings released (0 where ``/proc/self/maps`` does not exist).
    """
    names = _TRACKED if paths is None else {os.path.realpath(p) for p in paths}
    if not names:
        return 0
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return 0
    released = 0
    for line in lines:
        parts = line.split(maxsplit=5)
        # address perms offset dev inode path; a deleted file's path ends in " (deleted)": not one of ours.
        if len(parts) < 6 or "w" in parts[1] or parts[5].rstrip("\n") not in names:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if _madvise()(start, end - start, _MADV_DONTNEED) == 0:
            released += 1
            _madvise()(start, end - start, _MADV_RANDOM)
    return released


class ReleaseEvery:
    """Counts reads; every ``every``-th call of `tick` releases the tracked maps (`release_mapped_files`)."""

    def __init__(self, every: int = 256):
        self.every, self.count = every, 0

    def tick(self) -> None:
        self.count += 1
        if self.count % self.every == 0:
            release_mapped_files()


__all__ = ["ReleaseEvery", "release_mapped_files", "track", "track_table"]
