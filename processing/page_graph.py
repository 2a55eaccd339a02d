"""A generic multimodal page graph, and an O(1) sample index over a table of pages.

A page is a small graph of typed nodes:

========  =================================================  ============================
kind      ``text``                                           ``image``
========  =================================================  ============================
page      the page description                               `None`
section   the section's full text (first sentence included)  `None`
image     the image's caption                                path or URL of the file
========  =================================================  ============================

and typed, undirected edges (stored as ``(u, v)`` node-id pairs, ``u`` the "from" side):

* ``page``: the page node to every section node;
* ``section_order``: each section to the next one in page order;
* ``parent_child``: a section's parent (``section_parent_index``) to the section;
* ``section_image``: a section to each of its images.

Captions are kept as the image node's ``text`` rather than as separate caption nodes: an image
and its caption are one node (one thing on the page, seen in two modalities), so the graph has no
``image_caption`` edges. A consumer that wants the caption as a text neighbour uses the image
node's text (the processor does, and then gives the caption slot and the image slot the same
graph node).

Node ids are fixed: the page node is 0, section ``i`` is node ``1 + i``, then the images, section by
section in page order. Besides the graph, a `PageGraph` keeps per section the summary (first
sentence, the summarization target) and the rest of the text (the input of the target section),
which is all section summarization needs.

`PageGraph.from_wikiweb2m` is the one adapter for WikiWeb2M page rows; `PageGraph.from_dict` takes a
plain dict so other data plugs in. `PageGraphIndex` maps sample ``i`` to ``(page_idx, section_idx)``
and back in O(1) over a `datasets.Dataset` (Arrow) or a list of pages, never scanning the table per
item.

This file imports only the standard library, so it can sit in a flat Hub folder next to the
processor. It may be loaded twice in one process (the installed package and a Hub folder's copy):
`PageGraph.coerce` and `is_page_graph` therefore recognise a graph by a marker attribute, not by its
class.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

EDGE_TYPES = ("page", "section_order", "parent_child", "section_image")

# WikiWeb2M fields the adapter needs; the others are optional.
_WIKIWEB2M_REQUIRED = (
    "section_title",
    "section_text",
    "section_clean_1st_sentence",
    "section_rest_sentence",
    "section_parent_index",
)
# Naive first-sentence split for plain dicts that give no summary: end punctuation + whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def is_page_graph(obj: Any) -> bool:
    """Whether ``obj`` is a `PageGraph` of this file or of another copy of it (same layout version)."""
    return getattr(obj, "mmgl_page_graph_version", None) == PageGraph.mmgl_page_graph_version


def is_in_memory_image(value: Any) -> bool:
    """A `PIL.Image.Image` (recognised by its attributes: this file imports no PIL) or encoded bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    return hasattr(value, "convert") and hasattr(value, "mode") and hasattr(value, "size")


def scrub_summary(text: str, sentences: Sequence[str]) -> str:
    """Cut every occurrence of each non-empty sentence out of ``text`` (the object is kept when clean)."""
    for sentence in sentences:
        if sentence and sentence in text:
            text = " ".join(text.replace(sentence, " ").split())
    return text


def _as_str(value: Any) -> str:
    """Page rows hold `str`; readers that keep raw bytes (or `None`) are accepted too."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


@dataclass
class GraphNode:
    """One node of a `PageGraph`.

    Args:
        kind (`str`): ``"page"``, ``"section"`` or ``"image"``.
        text (`str`, *optional*, defaults to ``""``): the page description, the section text or the
            image caption.
        image (`str`, `PIL.Image.Image` or `bytes`, *optional*): for image nodes, the file's path or URL
            (resolved against an image folder by the processor), or, from `PageGraph.from_dict`, the
            image itself (a PIL image or the encoded file's bytes).
        section (`int`, *optional*): the owning section index (for section and image nodes).
        title (`str`, *optional*, defaults to ``""``): the page or section title.
    """

    kind: str
    text: str = ""
    image: Any = None
    section: int | None = None
    title: str = ""


@dataclass
class PageGraph:
    """A page as a graph of page, section and image nodes, plus per-section summarization text.

    Build one with `PageGraph.build`, `PageGraph.from_wikiweb2m` or `PageGraph.from_dict` rather
    than by hand: they lay out the node ids and edges consistently.

    Args:
        title (`str`): the page title.
        nodes (`list[GraphNode]`): node 0 is the page, node ``1 + i`` is section ``i``, then images.
        edges (`dict[str, list[tuple[int, int]]]`): typed edges, keys from `EDGE_TYPES`.
        section_nodes (`list[int]`): node id of each section.
        image_nodes (`list[list[int]]`): node ids of each section's images, in page order.
        section_parents (`list[int]`): parent section index of each section, -1 for none.
        summaries (`list[str]`): each section's first sentence (the summarization target).
        rest_texts (`list[str]`): each section's text after the first sentence.
        raw_summaries (`list[str]`): the first sentence as it stands in the section text (may keep a
            newline); used, with ``summaries``, to keep the target out of every input.
        is_sample (`list[bool]`): whether each section is a summarization sample.
        page_id (`str`, *optional*): a name for errors (URL or title).
        split (`str`, *optional*): ``train`` / ``val`` / ``test`` when known.
    """

    title: str
    nodes: list[GraphNode]
    edges: dict[str, list[tuple[int, int]]]
    section_nodes: list[int]
    image_nodes: list[list[int]]
    section_parents: list[int]
    summaries: list[str]
    rest_texts: list[str]
    raw_summaries: list[str]
    is_sample: list[bool]
    page_id: str = ""
    split: str | None = None
    page_node: int = 0

    # Recognised by `coerce` / `is_page_graph` instead of the class, which differs between copies of
    # this file. Bump it when a change makes graphs of older copies unusable by newer code.
    mmgl_page_graph_version = 2

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        title: str,
        description: str,
        sections: Sequence[Mapping[str, Any]],
        page_id: str = "",
        split: str | None = None,
    ) -> "PageGraph":
        """Lay out nodes and edges from normalised sections.

        Args:
            title (`str`): page title.
            description (`str`): page description (the page node's text).
            sections (`list[dict]`): per section, in page order: ``title``, ``text`` (full text),
                ``summary``, ``rest``, ``raw_summary``, ``parent`` (int, -1 for none),
                ``is_sample`` (bool) and ``images``: a list of ``(ref, caption)`` pairs.
            page_id (`str`, *optional*): name used in errors; defaults to the title.
            split (`str`, *optional*): the page's split.
        """
        page_id = page_id or title
        num_sections = len(sections)
        nodes = [GraphNode("page", text=description, title=title)]
        nodes.extend(
            GraphNode("section", text=sec["text"], section=i, title=sec["title"]) for i, sec in enumerate(sections)
        )
        section_nodes = list(range(1, num_sections + 1))
        edges: dict[str, list[tuple[int, int]]] = {name: [] for name in EDGE_TYPES}
        edges["page"] = [(0, n) for n in section_nodes]
        edges["section_order"] = [(section_nodes[i], section_nodes[i + 1]) for i in range(num_sections - 1)]
        parents = []
        for i, sec in enumerate(sections):
            parent = int(sec["parent"])
            if parent < -1 or parent >= num_sections or parent == i:
                raise ValueError(
                    f"page {page_id!r}: section {i} has parent index {parent} (field 'section_parent_index'), "
                    f"expected -1 or another section in [0, {num_sections})"
                )
            parents.append(parent)
            if parent >= 0:
                edges["parent_child"].append((section_nodes[parent], section_nodes[i]))
        image_nodes: list[list[int]] = []
        for i, sec in enumerate(sections):
            ids = []
            for ref, caption in sec["images"]:
                ids.append(len(nodes))
                nodes.append(GraphNode("image", text=caption, image=ref or None, section=i))
                edges["section_image"].append((section_nodes[i], ids[-1]))
            image_nodes.append(ids)
        return cls(
            title=title,
            nodes=nodes,
            edges=edges,
            section_nodes=section_nodes,
            image_nodes=image_nodes,
            section_parents=parents,
            summaries=[sec["summary"] for sec in sections],
            rest_texts=[sec["rest"] for sec in sections],
            raw_summaries=[sec.get("raw_summary") or sec["summary"] for sec in sections],
            is_sample=[bool(sec["is_sample"]) for sec in sections],
            page_id=page_id,
            split=split,
        )

    @classmethod
    def from_wikiweb2m(cls, row: Mapping[str, Any]) -> "PageGraph":
        """Build the graph of one WikiWeb2M page row (feature names verbatim, see `processing.data.wikiweb2m`).

        The image caption is ``section_image_clean_ref_desc`` (the caption shown under the image),
        falling back to ``section_image_captions`` and then ``section_image_alt_text`` when empty.
        The image reference is ``section_image_url``; the processor maps it to a file named by the
        URL's last path component in an image folder.
        """
        page_id = _as_str(row.get("page_url") or row.get("page_title"))
        missing = [name for name in _WIKIWEB2M_REQUIRED if name not in row]
        if missing:
            raise KeyError(f"page {page_id!r}: WikiWeb2M row lacks field(s) {missing}")
        titles = row["section_title"]
        num_sections = len(titles)

        def per_section(name: str, default: Any) -> Sequence[Any]:
            values = row.get(name)
            if values is None:
                return [default] * num_sections
            if len(values) != num_sections:
                raise ValueError(
                    f"page {page_id!r}: field {name!r} has {len(values)} values for {num_sections} sections"
                )
            return values

        texts = per_section("section_text", "")
        summaries = per_section("section_clean_1st_sentence", "")
        raw_summaries = per_section("section_raw_1st_sentence", "")
        rests = per_section("section_rest_sentence", "")
        parents = per_section("section_parent_index", -1)
        flags = per_section("is_section_summarization_sample", 0)
        urls = per_section("section_image_url", [])
        ref_descs = per_section("section_image_clean_ref_desc", None)
        captions = per_section("section_image_captions", None)
        alt_texts = per_section("section_image_alt_text", None)

        sections = []
        for i in range(num_sections):
            images = []
            section_urls = urls[i] or []
            for j, url in enumerate(section_urls):
                caption = ""
                for source in (ref_descs[i], captions[i], alt_texts[i]):
                    if source is not None and j < len(source) and _as_str(source[j]).strip():
                        caption = _as_str(source[j]).strip()
                        break
                images.append((_as_str(url), caption))
            sections.append(
                {
                    "title": _as_str(titles[i]),
                    "text": _as_str(texts[i]),
                    "summary": _as_str(summaries[i]),
                    "raw_summary": _as_str(raw_summaries[i]),
                    "rest": _as_str(rests[i]),
                    "parent": int(parents[i]),
                    "is_sample": bool(int(flags[i])),
                    "images": images,
                }
            )
        return cls.build(
            title=_as_str(row.get("page_title")),
            description=_as_str(row.get("clean_page_description") or row.get("raw_page_description")),
            sections=sections,
            page_id=page_id,
            split=_as_str(row.get("split")) or None,
        )

    @classmethod
    def from_dict(cls, page: Mapping[str, Any]) -> "PageGraph":
        """Build a graph from a plain dict, for data other than WikiWeb2M.

        Expected keys::

            {"title": str, "description": str, "url" or "id": str (optional), "split": str (optional),
             "parents": [int, ...] (optional, one per section, -1 for none),
             "sections": [{"title": str, "text": str,
                           "summary": str (optional), "rest": str (optional),
                           "parent": int (optional), "is_sample": bool (optional),
                           "images": [{"path" | "url" | "image": str, "caption": str}, ...]}, ...]}

        ``"image"`` may also hold the image itself: a `PIL.Image.Image` or the encoded file's bytes
        (kept in the graph; the processor preprocesses it like a file's pixels).

        Without ``summary`` the first sentence of ``text`` is split off naively (at ``.``, ``!`` or
        ``?`` followed by whitespace); without ``rest`` it is the text after the summary. Parents
        default to -1 (a flat page). ``is_sample`` defaults to "has a summary and a rest".
        """
        page_id = _as_str(page.get("url") or page.get("id") or page.get("title"))
        if "sections" not in page:
            raise KeyError(f"page {page_id!r}: dict lacks 'sections'")
        raw_sections = page["sections"]
        parents = page.get("parents")
        if parents is not None and len(parents) != len(raw_sections):
            raise ValueError(f"page {page_id!r}: 'parents' has {len(parents)} values for {len(raw_sections)} sections")
        sections = []
        for i, sec in enumerate(raw_sections):
            text = _as_str(sec.get("text"))
            summary = sec.get("summary")
            if summary is None:
                parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
                summary = parts[0] if parts else ""
                rest = parts[1] if len(parts) > 1 else ""
            else:
                summary = _as_str(summary)
                rest = " ".join(text.replace(summary, " ", 1).split()) if summary and summary in text else text
            rest = _as_str(sec["rest"]) if sec.get("rest") is not None else rest
            images = []
            for j, image in enumerate(sec.get("images") or []):
                ref = image.get("path") or image.get("url")
                if ref is None and image.get("image") is not None:
                    ref = image["image"]
                    if is_in_memory_image(ref):  # kept as is: the processor reads it like a file
                        ref = bytes(ref) if isinstance(ref, (bytearray, memoryview)) else ref
                        images.append((ref, _as_str(image.get("caption"))))
                        continue
                if ref is None:
                    raise KeyError(f"page {page_id!r}: section {i} image {j} has no 'path', 'url' or 'image'")
                if not isinstance(ref, (str, os.PathLike)):
                    # str() of anything else would give a path that never exists: a silently masked image.
                    field_name = next(name for name in ("path", "url", "image") if image.get(name) is not None)
                    raise TypeError(
                        f"page {page_id!r}: section {i} image {j} field {field_name!r} must be a path or URL (str), "
                        f"a PIL image or the file's bytes, got {type(ref).__name__}"
                    )
                images.append((os.fspath(ref), _as_str(image.get("caption"))))
            parent = sec.get("parent", parents[i] if parents is not None else -1)
            sections.append(
                {
                    "title": _as_str(sec.get("title")),
                    "text": text,
                    "summary": summary,
                    "rest": rest,
                    "parent": -1 if parent is None else int(parent),
                    "is_sample": bool(sec.get("is_sample", bool(summary) and bool(rest))),
                    "images": images,
                }
            )
        return cls.build(
            title=_as_str(page.get("title")),
            description=_as_str(page.get("description")),
            sections=sections,
            page_id=page_id,
            split=page.get("split"),
        )

    @classmethod
    def coerce(cls, page: Any) -> "PageGraph":
        """A `PageGraph` as is, a WikiWeb2M row (has ``section_title``) or a plain dict (has ``sections``).

        A graph built by another copy of this file (e.g. a Hub folder's next to the installed package)
        is taken as is too: it is recognised by its marker attribute, and has the same fields and methods.
        """
        if isinstance(page, cls) or is_page_graph(page):
            return page
        if hasattr(page, "mmgl_page_graph_version"):
            raise TypeError(
                f"got a PageGraph of layout version {page.mmgl_page_graph_version!r} (from {type(page).__module__}); "
                f"this copy of page_graph.py reads version {cls.mmgl_page_graph_version}"
            )
        if isinstance(page, Mapping):
            if "section_title" in page:
                return cls.from_wikiweb2m(page)
            if "sections" in page:
                return cls.from_dict(page)
        raise TypeError(
            f"expected a PageGraph, a WikiWeb2M page row (with 'section_title') or a page dict (with "
            f"'sections'), got {type(page).__name__}"
        )

    # ------------------------------------------------------------------ queries

    @property
    def num_sections(self) -> int:
        return len(self.section_nodes)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @cached_property
    def neighbors(self) -> list[frozenset[int]]:
        """Undirected adjacency: ``neighbors[u]`` is the set of nodes sharing an edge with ``u``."""
        adjacency: list[set] = [set() for _ in self.nodes]
        for pairs in self.edges.values():
            for u, v in pairs:
                if u != v:
                    adjacency[u].add(v)
                    adjacency[v].add(u)
        return [frozenset(a) for a in adjacency]

    @cached_property
    def dense_adjacency(self):
        """`numpy.ndarray` of shape `(num_nodes, num_nodes)`, bool: the undirected adjacency matrix."""
        import numpy as np

        matrix = np.zeros((len(self.nodes), len(self.nodes)), dtype=bool)
        for node, others in enumerate(self.neighbors):
            matrix[node, list(others)] = True
        return matrix

    @cached_property
    def closed_adjacency(self):
        """`dense_adjacency` with self loops (each node's closed neighbourhood)."""
        import numpy as np

        return self.dense_adjacency | np.eye(len(self.nodes), dtype=bool)

    @cached_property
    def padded_closed_adjacency(self):
        """`closed_adjacency` with one more node (id ``num_nodes``) adjacent to nothing, itself included:
        the stand-in for absent slots when slicing (their rows and columns come out all False)."""
        import numpy as np

        n = len(self.nodes)
        matrix = np.zeros((n + 1, n + 1), dtype=bool)
        matrix[:n, :n] = self.closed_adjacency
        return matrix

    @cached_property
    def usable_texts(self) -> list[str | None]:
        """Each node's text, or `None` when it is empty or blank (such nodes are never text neighbours)."""
        return [node.text if node.text and not node.text.isspace() else None for node in self.nodes]

    @cached_property
    def page_block(self) -> list[int]:
        """``[page node]`` when the description is usable as a text neighbour, else ``[]``."""
        return [self.page_node] if self.usable_texts[self.page_node] is not None else []

    @cached_property
    def caption_blocks(self) -> list[list[int]]:
        """Per section, its image nodes with a usable caption, in page order."""
        usable = self.usable_texts
        return [[n for n in nodes if usable[n] is not None] for nodes in self.image_nodes]

    @cached_property
    def section_blocks(self) -> list[list[int]]:
        """Per section, its node (when its text is usable) followed by its `caption_blocks`."""
        usable = self.usable_texts
        return [
            ([node] if usable[node] is not None else []) + captions
            for node, captions in zip(self.section_nodes, self.caption_blocks)
        ]

    @cached_property
    def memo(self) -> dict[str, Any]:
        """Per-graph memo for what consumers derive from the graph once (the neighbour selection keeps
        each section's candidates here); never part of the graph itself."""
        return {}

    def section_node(self, section_idx: int) -> int:
        """Node id of section ``section_idx`` (with a clear error when out of range)."""
        self.check_section(section_idx)
        return self.section_nodes[section_idx]

    def check_section(self, section_idx: int) -> None:
        if not 0 <= section_idx < len(self.section_nodes):
            raise IndexError(
                f"page {self.page_id!r}: section index {section_idx} out of range ({len(self.section_nodes)} sections)"
            )

    def section_title(self, section_idx: int) -> str:
        return self.nodes[self.section_nodes[section_idx]].title

    @property
    def description(self) -> str:
        return self.nodes[self.page_node].text

    def sample_sections(self) -> list[int]:
        return [i for i, flag in enumerate(self.is_sample) if flag]


# ---------------------------------------------------------------------------------------------------
# Sample index
# ---------------------------------------------------------------------------------------------------


def _is_arrow_table(pages: Any) -> bool:
    return hasattr(pages, "select_columns") and hasattr(pages, "iter") and hasattr(pages, "__getitem__")


class PageGraphIndex:
    """Section summarization samples over a table of pages, with O(1) lookups both ways.

    ``index[i]`` gives ``(graph, section_idx)`` for sample ``i``: a constant-time row fetch from
    the table (a `datasets.Dataset` reads one Arrow row; a list indexes) and a memoised graph
    build, never a scan. ``index.position(page_idx, section_idx)`` is the reverse dict lookup.

    Args:
        pages (`datasets.Dataset`, or a list of WikiWeb2M rows, page dicts or `PageGraph`s).
        samples (`list[tuple[int, int]]`, *optional*): ``(page_idx, section_idx)`` pairs; by default
            every section flagged as a summarization sample (``is_section_summarization_sample``),
            read column-wise from Arrow tables.
        split (`str`, *optional*): with the default samples, keep only pages of this split.
        graph_cache_size (`int`, *optional*): how many page graphs to keep (LRU); `None` keeps all,
            0 keeps none.
    """

    def __init__(
        self,
        pages: Any,
        samples: Iterable[tuple[int, int]] | None = None,
        split: str | None = None,
        graph_cache_size: int | None = None,
    ):
        self.pages = pages
        self.graph_cache_size = graph_cache_size
        self._graphs: "OrderedDict[int, PageGraph]" = OrderedDict()
        if samples is None:
            samples = self._default_samples(split)
        self.samples: list[tuple[int, int]] = [(int(p), int(s)) for p, s in samples]
        self._position: dict[tuple[int, int], int] = {}
        for i, key in enumerate(self.samples):
            if key in self._position:
                raise ValueError(f"sample (page {key[0]}, section {key[1]}) listed twice (positions {self._position[key]}, {i})")
            self._position[key] = i

    def _default_samples(self, split: str | None) -> list[tuple[int, int]]:
        samples = []
        if _is_arrow_table(self.pages):
            columns = ["split", "is_section_summarization_sample"]
            batches = self.pages.select_columns(columns).iter(batch_size=1024)
            rows: Iterator[tuple[Any, Any]] = (pair for b in batches for pair in zip(b[columns[0]], b[columns[1]]))
        else:
            rows = (self._flags_of(i, page) for i, page in enumerate(self.pages))
        for page_idx, (page_split, flags) in enumerate(rows):
            if split is not None and page_split != split:
                continue
            samples.extend((page_idx, s) for s, flag in enumerate(flags) if flag)
        return samples

    def _flags_of(self, page_idx: int, page: Any) -> tuple[str | None, Sequence[Any]]:
        if isinstance(page, Mapping) and "is_section_summarization_sample" in page:
            return page.get("split"), page["is_section_summarization_sample"]
        graph = self._remember(page_idx, PageGraph.coerce(page))
        return graph.split, graph.is_sample

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
        """``(page_idx, section_idx)`` of sample ``i``."""
        return self.samples[i]

    def position(self, page_idx: int, section_idx: int) -> int:
        """Sample number of ``(page_idx, section_idx)``; `KeyError` if it is not a sample."""
        try:
            return self._position[(page_idx, section_idx)]
        except KeyError:
            raise KeyError(f"(page {page_idx}, section {section_idx}) is not a sample of this index") from None

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self._position

    def graph(self, page_idx: int) -> PageGraph:
        """The page graph of row ``page_idx`` (one O(1) row fetch, then memoised)."""
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


__all__ = [
    "EDGE_TYPES",
    "GraphNode",
    "PageGraph",
    "PageGraphIndex",
    "is_in_memory_image",
    "is_page_graph",
    "scrub_summary",
]
