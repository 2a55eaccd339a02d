"""Give back the pages of memory-mapped files that a pass over a whole data set has read.

The page table (Arrow), the token store and the embedding cache are read through read-only memory maps. Every page
a process touches stays in its resident set (file-backed: shared and reclaimable, but counted by `ps`,
`/usr/bin/time` and schedulers that kill on resident memory) until the mapping is closed, so a first start that
reads every page of a 2M-page table would end with the whole table resident; and a sparse lookup maps more than
it reads (the kernel maps the page cache's whole folio around the byte asked for: tens of KiB, up to MiBs). These
helpers drop a process's page-table entries (`madvise(MADV_DONTNEED)`: the data stays in the page cache, a later
read maps it again without I/O):

* `release_arrays`: the maps behind numpy memory maps this code holds (the token store, the embedding cache),
  through Python's `mmap.mmap.madvise` (one system call each; the map cannot go away while its array lives);
* `release_mapped_files`: every read-only map of the files registered with `track` (Arrow tables that `datasets`
  maps), found by name in `/proc/self/maps`, a few ms per call: a private writable or anonymous mapping is never
  touched (`MADV_DONTNEED` would discard its contents);
* `table_maps` / `release_ranges`: the maps that hold a `datasets.Dataset`'s own Arrow buffers, found once, then
  released after every row by their holder (one system call).

`ReleaseEvery` says when to call one of them (every so many reads), so what stays resident is bounded by one block
of reads. Elsewhere than Linux they are no-ops.

This file is Hub-loadable: it imports the standard library only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Callable, Iterable

_MADV_DONTNEED = 4
_TRACKED: set[str] = set()  # inherited by forked DataLoader workers, as are the maps themselves
_libc = None


def track(path: str | os.PathLike) -> None:
    """Register a memory-mapped file whose pages `release_mapped_files` gives back."""
    _TRACKED.add(os.path.realpath(path))


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
    """Drop this process's resident pages of the read-only maps of `paths` (default: every tracked file).

    Returns:
        `int`: the number of mappings released (0 where `/proc/self/maps` does not exist).
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
    return released


def table_maps(pages) -> list[tuple[int, int]]:
    """Address ranges of the read-only file maps that hold the Arrow buffers of `pages` (a `datasets.Dataset`;
    none for an in-memory table or a list). They stay mapped as long as `pages` lives, so a holder of `pages`
    may release them (`release_ranges`) after every row for the cost of one system call, without reading
    `/proc/self/maps` again."""
    table = getattr(getattr(pages, "data", None), "table", None)
    if table is None or not hasattr(table, "columns"):
        return []
    addresses = sorted({buffer.address for column in table.columns for chunk in column.chunks
                        for buffer in chunk.buffers() if buffer is not None and buffer.size})
    if not addresses:
        return []
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    import bisect

    ranges = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or "w" in parts[1] or not parts[5].startswith("/"):
            continue  # only read-only maps of a file: never anonymous or writable memory
        start, end = (int(x, 16) for x in parts[0].split("-"))
        i = bisect.bisect_left(addresses, start)
        if i < len(addresses) and addresses[i] < end:
            ranges.append((start, end))
    return ranges


def release_ranges(ranges: Iterable[tuple[int, int]]) -> None:
    """`madvise(MADV_DONTNEED)` over ranges `table_maps` returned (their holder keeps them mapped)."""
    for start, end in ranges:
        _madvise()(start, end - start, _MADV_DONTNEED)


def release_arrays(arrays: Iterable) -> int:
    """Drop this process's resident pages of the read-only memory maps behind `arrays` (`np.memmap`s opened with
    mode `"r"`, or views of them; other arrays are skipped). Returns the number of maps released."""
    released = 0
    for array in arrays:
        base = array
        while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
            base = getattr(base, "base", None)
        # Read-only maps only: on a writable one (`np.memmap` modes "r+", "w+", "c") MADV_DONTNEED drops changes.
        if base is not None and getattr(base, "mode", None) == "r" and hasattr(mmap, "MADV_DONTNEED"):
            try:
                base._mmap.madvise(mmap.MADV_DONTNEED)
                released += 1
            except (OSError, ValueError):  # a closed map: nothing resident
                pass
    return released


class ReleaseEvery:
    """Counts reads: `due` says when `every` more were counted, time to give their pages back."""

    def __init__(self, every: int = 256):
        self.every, self.count = every, 0

    def due(self, reads: int = 1) -> bool:
        before, self.count = self.count, self.count + reads
        return self.count // self.every != before // self.every


__all__ = ["ReleaseEvery", "release_arrays", "release_mapped_files", "release_ranges", "table_maps", "track",
           "track_table"]
