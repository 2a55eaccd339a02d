"""The one sorted-digest table of the three stores (token store, embedding-cache index, image manifest): fixed-size
digests (`np.void` keys: 16-byte BLAKE2b of a text or URL, 32-byte sha256 of a file) kept sorted, with the rows of
each store's other arrays in the same order, and found by binary search (`np.searchsorted`: ~log2(n) pages of a
memory-mapped file, no Python object per key).

This file is Hub-loadable: it imports installed packages only.
"""
from __future__ import annotations

import numpy as np


def unique_order(keys: np.ndarray, keep: str = "first") -> np.ndarray:
    """Indices that sort `keys` with each key once: its first entry (`keep="first"`) or its last (`"last"`) in the
    given order. Take every column of a table with them."""
    order = np.argsort(keys, kind="stable")  # equal keys stay in the given order
    keys = keys[order]
    kept = np.ones(len(keys), dtype=bool)
    if keep == "first":
        kept[1:] = keys[1:] != keys[:-1]
    elif keep == "last":
        kept[:-1] = keys[:-1] != keys[1:]
    else:
        raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
    return order[kept]


def find_sorted(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each of `wanted` in the sorted `keys`, -1 where absent."""
    if not len(keys) or not len(wanted):
        return np.full(len(wanted), -1, dtype=np.int64)
    positions = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[positions] == wanted, positions, -1)


def find_one(keys: np.ndarray, key: np.void) -> int:
    """Position of one key in the sorted `keys`, -1 where absent (no array built: the single lookups of a manifest
    or an embedding cache)."""
    if not len(keys):
        return -1
    position = int(np.searchsorted(keys, key))
    return position if position < len(keys) and keys[position] == key else -1


__all__ = ["find_one", "find_sorted", "unique_order"]
