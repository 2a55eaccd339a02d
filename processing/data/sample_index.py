"""The samples of a data set (`PageGraphIndex`): sample `i` <-> `(page_idx, section_idx)` in O(1) over a
`datasets.Dataset` (Arrow) or a list of pages, never scanning the table per item, with the page graphs built on
demand (LRU). Build-time only (training, data reports, cache builders): a Hub folder takes one page at a time.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from processing.data.sample_list import SampleList
from processing.data.wikiweb2m import summarization_samples
from processing.mapped_pages import ReleaseEvery, release_mapped_files, release_ranges, table_maps, track_table
from processing.page_graph import PageGraph


class PageGraphIndex:
    """Section summarization samples over a table of pages, with O(1) lookups both ways.

    `index[i]` gives `(graph, section_idx)` for sample `i`: a constant-time row fetch from
    the table (a `datasets.Dataset` reads one Arrow row; a list indexes) and a memoised graph
    build, never a scan. `index.position(page_idx, section_idx)` is the reverse lookup (a binary search over the
    `SampleList`: no Python object per sample).

    Args:
        pages (`datasets.Dataset`, or a list of WikiWeb2M rows, page dicts or `PageGraph`s).
        samples (`SampleList` or an iterable of `tuple[int, int]`, *optional*): `(page_idx, section_idx)` pairs;
            by default `processing.data.wikiweb2m.summarization_samples` (every section flagged as a summarization
            sample).
        split (`str`, *optional*): with the default samples, keep only pages of this split.
        graph_cache_size (`int`, *optional*, defaults to 1024): how many page graphs to keep (LRU); `None`
            keeps all, 0 keeps none. Small by default: a miss rebuilds a graph from its row in ~1 ms, and a
            shuffled epoch over millions of pages rarely meets one twice.
    """

    def __init__(
        self,
        pages: Any,
        samples: Iterable[tuple[int, int]] | None = None,
        split: str | None = None,
        graph_cache_size: int | None = 1024,
    ):
        self.pages = pages
        self.graph_cache_size = graph_cache_size
        self._graphs: OrderedDict[int, PageGraph] = OrderedDict()
        # Rows read from a memory-mapped Arrow table leave its pages resident: `_read` gives the table's maps back
        # after every row, and every 256 rows any other map of its files (`processing.mapped_pages`).
        track_table(pages)
        self._release = ReleaseEvery(256)
        self._maps: tuple[int, list] | None = None  # (process id, its maps of the Arrow table): `_read`
        self.samples = SampleList.from_pairs(summarization_samples(pages, split) if samples is None else samples)
        duplicate = self.samples.first_duplicate()
        if duplicate is not None:
            page, section = self.samples[duplicate[0]]
            raise ValueError(f"sample (page {page}, section {section}) listed twice (positions {duplicate[0]}, "
                             f"{duplicate[1]})")

    def _remember(self, page_idx: int, graph: PageGraph) -> PageGraph:
        if self.graph_cache_size != 0:
            self._graphs[page_idx] = graph
            self._graphs.move_to_end(page_idx)
            if self.graph_cache_size is not None and len(self._graphs) > self.graph_cache_size:
                self._graphs.popitem(last=False)
        return graph

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[PageGraph, int]:
        page_idx, section_idx = self.samples[i]
        return self.graph(page_idx), section_idx

    def __iter__(self) -> Iterator[tuple[PageGraph, int]]:
        """Every sample in order: a pass over the data set (a cache build, neighbour-input collection). A page's
        samples are consecutive, so its graph is built once and not remembered: the pass leaves the LRU that
        training draws from as it was, instead of filling it with the last pages of the table."""
        current, graph = -1, None
        for page_idx, section_idx in self.samples:
            if page_idx != current:
                current, graph = page_idx, self._passing(page_idx)
            yield graph, section_idx

    def sample(self, i: int) -> tuple[int, int]:
        """`(page_idx, section_idx)` of sample `i`."""
        return self.samples[i]

    def position(self, page_idx: int, section_idx: int) -> int:
        """Sample number of `(page_idx, section_idx)`; `KeyError` if it is not a sample."""
        position = self.samples.position(page_idx, section_idx)
        if position < 0:
            raise KeyError(f"(page {page_idx}, section {section_idx}) is not a sample of this index")
        return position

    def __contains__(self, key: tuple[int, int]) -> bool:
        return self.samples.position(*key) >= 0

    def graph(self, page_idx: int) -> PageGraph:
        """The page graph of row `page_idx` (one O(1) row fetch, then memoised)."""
        graph = self._graphs.get(page_idx)
        if graph is not None:
            self._graphs.move_to_end(page_idx)
            return graph
        return self._remember(page_idx, self._read(page_idx))

    def _read(self, page_idx: int) -> PageGraph:
        if self._release.due():
            release_mapped_files()
        graph = PageGraph.coerce(self.pages[page_idx])
        # A row maps the page cache's folios around each of its columns (tens of KiB to MiBs): a DataLoader worker
        # reading a few rows of a large table would keep much of it resident. Its maps, found once per process, are
        # given back after every row: one system call.
        if self._maps is None or self._maps[0] != os.getpid():
            self._maps = (os.getpid(), table_maps(self.pages))
        release_ranges(self._maps[1])
        return graph

    def _passing(self, page_idx: int) -> PageGraph:
        """The graph of a page met in a pass: the remembered one, else built and not remembered."""
        graph = self._graphs.get(page_idx)
        return graph if graph is not None else self._read(page_idx)

    def page_indices(self) -> list[int]:
        """The distinct pages that hold samples, in order."""
        return self.samples.page_indices().tolist()

    def graphs(self) -> Iterator[PageGraph]:
        """The graphs of `page_indices` (e.g. to build a token cache over exactly these pages), not remembered."""
        for page_idx in self.samples.page_indices():
            yield self._passing(int(page_idx))


__all__ = ["PageGraphIndex"]
