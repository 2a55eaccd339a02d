"""The samples of a data set (`PageGraphIndex`): sample `i` <-> `(page_idx, section_idx)` in O(1) over a
`datasets.Dataset` (Arrow) or a list of pages, never scanning the table per item, with the page graphs built on
demand (LRU). Build-time only (training, data reports, cache builders): a Hub folder takes one page at a time.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from processing.data.wikiweb2m import summarization_samples
from processing.page_graph import PageGraph


class PageGraphIndex:
    """Section summarization samples over a table of pages, with O(1) lookups both ways.

    `index[i]` gives `(graph, section_idx)` for sample `i`: a constant-time row fetch from
    the table (a `datasets.Dataset` reads one Arrow row; a list indexes) and a memoised graph
    build, never a scan. `index.position(page_idx, section_idx)` is the reverse dict lookup.

    Args:
        pages (`datasets.Dataset`, or a list of WikiWeb2M rows, page dicts or `PageGraph`s).
        samples (`list[tuple[int, int]]`, *optional*): `(page_idx, section_idx)` pairs; by default
            `processing.data.wikiweb2m.summarization_samples` (every section flagged as a summarization sample).
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
        if samples is None:
            samples = summarization_samples(pages, split)
        self.samples: list[tuple[int, int]] = [(int(p), int(s)) for p, s in samples]
        self._position: dict[tuple[int, int], int] = {}
        for i, key in enumerate(self.samples):
            if key in self._position:
                raise ValueError(f"sample (page {key[0]}, section {key[1]}) listed twice (positions {self._position[key]}, {i})")
            self._position[key] = i

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
        for i in range(len(self.samples)):
            yield self[i]

    def sample(self, i: int) -> tuple[int, int]:
        """`(page_idx, section_idx)` of sample `i`."""
        return self.samples[i]

    def position(self, page_idx: int, section_idx: int) -> int:
        """Sample number of `(page_idx, section_idx)`; `KeyError` if it is not a sample."""
        try:
            return self._position[(page_idx, section_idx)]
        except KeyError:
            raise KeyError(f"(page {page_idx}, section {section_idx}) is not a sample of this index") from None

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self._position

    def graph(self, page_idx: int) -> PageGraph:
        """The page graph of row `page_idx` (one O(1) row fetch, then memoised)."""
        graph = self._graphs.get(page_idx)
        if graph is not None:
            self._graphs.move_to_end(page_idx)
            return graph
        return self._remember(page_idx, PageGraph.coerce(self.pages[page_idx]))

    def page_indices(self) -> list[int]:
        """The distinct pages that hold samples, in order."""
        return sorted({p for p, _ in self.samples})

    def graphs(self) -> Iterator[PageGraph]:
        """The graphs of `page_indices` (e.g. to build a token cache over exactly these pages)."""
        for page_idx in self.page_indices():
            yield self.graph(page_idx)


__all__ = ["PageGraphIndex"]
