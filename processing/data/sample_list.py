"""`SampleList`: the `(page row index, section index)` pairs of a split in two integer arrays.

A split of the full WikiWeb2M has millions of samples; as a Python list of tuples (and a dict from pair to
position) each costs ~200 bytes in every process, DataLoader workers included. Here a sample costs 12 bytes, plus
16 for the sorted order that `position` searches (built on first use). Build-time only, like the sample index
(`processing.data.sample_index`) and `processing.data.wikiweb2m.summarization_samples` that make it.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class SampleList(Sequence):
    """A read-only sequence of `(page_idx, section_idx)` tuples of Python ints, stored as numpy arrays.

    Args:
        pages (`np.ndarray`): page row index of each sample.
        sections (`np.ndarray`): section index of each sample (same length).
    """

    def __init__(self, pages: np.ndarray, sections: np.ndarray):
        self.pages = np.asarray(pages, dtype=np.int64)
        self.sections = np.asarray(sections, dtype=np.int32)
        if self.pages.shape != self.sections.shape or self.pages.ndim != 1:
            raise ValueError(f"pages {self.pages.shape} and sections {self.sections.shape} must be two 1-D arrays of "
                             "the same length")
        self._order: np.ndarray | None = None

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]]) -> SampleList:
        """From any iterable of pairs (read once, without a Python object per pair kept)."""
        if isinstance(pairs, SampleList):
            return pairs
        pages, sections = array("q"), array("l")
        for page, section in pairs:
            pages.append(int(page))
            sections.append(int(section))
        return cls(np.frombuffer(pages, dtype=np.int64) if pages else np.zeros(0, np.int64),
                   np.asarray(sections, dtype=np.int32))

    def __len__(self) -> int:
        return len(self.pages)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return SampleList(self.pages[i], self.sections[i])
        return int(self.pages[i]), int(self.sections[i])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for page, section in zip(self.pages.tolist(), self.sections.tolist()):
            yield page, section

    def __eq__(self, other) -> bool:
        if isinstance(other, SampleList):
            return np.array_equal(self.pages, other.pages) and np.array_equal(self.sections, other.sections)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(tuple(a) == b for a, b in zip(other, self))
        return NotImplemented

    def __repr__(self) -> str:
        shown = ", ".join(str(pair) for pair in self[:5])
        return f"SampleList([{shown}{', ...' if len(self) > 5 else ''}], {len(self)} samples)"

    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions in `(page, section)` order and the sorted keys (one int64 per sample each; built once)."""
        if self._order is None:
            keys = (self.pages << 32) | self.sections.astype(np.int64)  # sections are int32: < 2**31
            self._order = np.argsort(keys, kind="stable")
            self._sorted_keys = keys[self._order]
        return self._order, self._sorted_keys

    def first_duplicate(self) -> tuple[int, int] | None:
        """Positions `(first, second)` of the first pair listed twice, or `None`."""
        order, keys = self._sorted()
        same = np.flatnonzero(keys[1:] == keys[:-1])
        if not len(same):
            return None
        return tuple(sorted((int(order[same[0]]), int(order[same[0] + 1]))))

    def position(self, page_idx: int, section_idx: int) -> int:
        """Position of the pair, -1 when it is not listed (a binary search)."""
        if page_idx < 0 or not 0 <= section_idx < 2**31:
            return -1
        order, keys = self._sorted()
        key = (int(page_idx) << 32) | int(section_idx)
        i = int(np.searchsorted(keys, key))
        return int(order[i]) if i < len(keys) and keys[i] == key else -1

    def page_indices(self) -> np.ndarray:
        """The distinct pages, sorted."""
        return np.unique(self.pages)


__all__ = ["SampleList"]
