"""A generic multimodal page graph, and an O(1) sample index over a table of pages.

A page is a small graph of typed nodes:

========  =================================================  ============================
kind      `text`                                           `image`
========  =================================================  ============================
page      the page description                               `None`
section   the section's full text (first sentence included)  `None`
image     the image's caption                                path or URL of the file
========  =================================================  ============================

and typed, undirected edges (stored as `(u, v)` node-id pairs, `u` the "from" side):

* `page`: the page node to every section node;
* `section_order`: each section to the next one in page order;
* `parent_child`: a section's parent (`section_parent_index`) to the section;
* `section_image`: a section to each of its images.

Captions are kept as the image node's `text` rather than as separate caption nodes: an image
and its caption are one node (one thing on the page, seen in two modalities), so the graph has no
`image_caption` edges. A consumer that wants the caption as a text neighbour uses the image
node's text (the processor does, and then gives the caption slot and the image slot the same
graph node).

Node ids are fixed: the page node is 0, section `i` is node `1 + i`, then the images, section by
section in page order. Besides the graph, a `PageGraph` keeps per section the summary (first
sentence, the summarization target) and the rest of the text (the input of the target section),
which is all section summarization needs.

`PageGraph.from_wikiweb2m` is the one adapter for WikiWeb2M page rows; `PageGraph.from_dict` takes a
plain dict so other data plugs in. The index of a data set's samples (`processing.data.sample_index.PageGraphIndex`)
is build-time and lives with the data tools.

This file imports only the standard library, so it can sit in a flat Hub folder next to the
processor. It may be loaded twice in one process (the installed package and a Hub folder's copy):
`PageGraph.coerce` and `is_page_graph` therefore recognise a graph by a marker attribute, not by its
class.
"""
from __future__ import annotations

import logging
import operator
import os
import re
from dataclasses import dataclass
from functools import cached_property
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import MMGLInputError, format_location
from .wikiweb2m_schema import PAGE_GRAPH_FEATURES

logger = logging.getLogger(__name__)

EDGE_TYPES = ("page", "section_order", "parent_child", "section_image")

# NUL and the other C0 control characters, DEL, and a percent-encoded NUL (`has_control_characters`).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]|%00")
# Naive first-sentence split for plain dicts that give no summary: end punctuation + whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def is_page_graph(obj: Any) -> bool:
    """Whether `obj` is a `PageGraph` of this file or of another copy of it (same layout version)."""
    return getattr(obj, "mmgl_page_graph_version", None) == PageGraph.mmgl_page_graph_version


def is_in_memory_image(value: Any) -> bool:
    """A `PIL.Image.Image` (recognised by its attributes: this file imports no PIL) or encoded bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    return hasattr(value, "convert") and hasattr(value, "mode") and hasattr(value, "size")


def has_control_characters(ref: str) -> bool:
    """Whether an image reference holds a NUL or another control character (U+0000-U+001F, U+007F), as is or
    percent-encoded as `%00`: never a real file name or URL of a page, and a NUL makes every OS call on a path
    raise."""
    return _CONTROL_CHARACTERS.search(ref) is not None


def scrub_summary(text: str, sentences: Sequence[str]) -> str:
    """Cut every occurrence of each non-empty sentence out of `text` (the object is kept when clean)."""
    for sentence in sentences:
        if sentence and sentence in text:
            text = " ".join(text.replace(sentence, " ").split())
    return text


class PageStructureError(MMGLInputError, ValueError):
    """A page whose content is damaged: ragged per-section lists, a value that is not the field's
    type, text with lone surrogates, ...

    The message names the page, the section (and image) and the field. Callers reading many pages
    may catch this type, count the page and skip it: it is raised before any graph is built, and
    never for a problem of the caller's configuration.

    Attributes:
        page (`str`): the page URL, id or title.
        field (`str` or `None`): the offending field.
        section (`int` or `None`): the offending section's position.
        image (`int` or `None`): the offending image's position in its section.
    """

    def __init__(self, message: str, page: Any = "", field: str | None = None,
                 section: int | None = None, image: int | None = None):
        super().__init__(message, page=page, section=section, image=image, field=field)

    def __reduce__(self):  # picklable across `datasets` / DataLoader worker processes
        return type(self), (self.message, self.page, self.field, self.section, self.image)


class PageFieldTypeError(PageStructureError, TypeError):
    """A page field of the wrong type (a `PageStructureError` that is also a `TypeError`)."""


def _where(page: Any, field: str | None = None, section: int | None = None, image: int | None = None) -> str:
    return format_location(page=page, section=section, image=image, field=field)


def _as_str(value: Any, page: Any = "", field: str | None = None, section: int | None = None,
            image: int | None = None) -> str:
    """A text field as `str`: `str` as is, `bytes` decoded as UTF-8, `None` as `""`.

    Anything else (a list, a dict, a number) raises `PageFieldTypeError` instead of becoming its
    `str()`, and text with a lone surrogate (`"\\ud800"`, which no tokenizer can encode) raises
    `PageStructureError`; both name the page, section, image and field.
    """
    if value.__class__ is str and value.isascii():  # the common case, first: graphs are built per page
        return value
    if value is None:
        return ""
    if isinstance(value, str):
        if not value.isascii():  # the fast path covers most text; only the rest is checked
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise PageStructureError(
                    f"text holds a lone surrogate {value[err.start]!r} at character {err.start}; expected "
                    f"valid Unicode text (decode the source with errors='replace')",
                    page, field, section, image,
                ) from None
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise PageStructureError(
                f"bytes are not valid UTF-8 ({err.reason} at byte {err.start}); expected text",
                page, field, section, image,
            ) from None
    raise PageFieldTypeError(
        f"expected text (str, UTF-8 bytes or None), got {type(value).__name__}", page, field, section, image
    )


def _as_int(value: Any, page: Any, field: str, section: int | None = None, default: int = -1) -> int:
    """An integer field: Python or numpy integers, integral floats and integer strings (`"3"`);
    `None` gives `default`. Anything else raises `PageStructureError` naming page, section, field."""
    if value.__class__ is int:
        return value
    if value is None:
        return default
    try:
        return operator.index(value)  # int, bool, numpy integers
    except TypeError:
        pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (str, bytes)):
        try:
            return int(value)
        except ValueError:
            pass
    error = PageFieldTypeError if not isinstance(value, (str, bytes, float)) else PageStructureError
    raise error(f"expected an integer, got {value!r}", page, field, section)


def _as_flag(value: Any, page: Any, field: str, section: int | None = None) -> bool:
    """A yes/no field: `bool`, numpy bools, or the integers 0 and 1 (a string such as `"false"`
    is refused: `bool("false")` would silently be `True`)."""
    if value is None:
        return False
    try:
        number = operator.index(value)
    except TypeError:
        number = getattr(value, "item", lambda: None)()  # numpy.bool_
        if not isinstance(number, (bool, int)):
            raise PageFieldTypeError(f"expected a bool (or 0 / 1), got {value!r}", page, field, section) from None
    if number not in (0, 1):
        raise PageStructureError(f"expected a bool (or 0 / 1), got {value!r}", page, field, section)
    return bool(number)


def _as_list(value: Any, page: Any, field: str, section: int | None = None) -> Sequence[Any]:
    """A list field (list, tuple or another non-text sequence such as a numpy array); `None` is `[]`."""
    if value.__class__ is list or value.__class__ is tuple:  # the common case, first
        return value
    if value is None:
        return []
    is_sequence = hasattr(value, "__len__") and hasattr(value, "__getitem__")
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not is_sequence:
        raise PageFieldTypeError(f"expected a list, got {type(value).__name__}", page, field, section)
    return value


def _repair_parents(parents: list[int], page_id: Any) -> list[int]:
    """Drop parent edges that cannot be right, with one warning each (never raise: one damaged
    page must not stop a run over millions). Out of range, self and cycle-closing parents become -1."""
    n = len(parents)
    if all(-1 <= parent < i for i, parent in enumerate(parents)):  # every parent comes earlier: no cycle
        return parents
    for i, parent in enumerate(parents):
        if parent < -1 or parent >= n or parent == i:
            logger.warning(
                "%s: parent index %d is %s; expected -1 or another section in [0, %d): edge dropped",
                _where(page_id, "section_parent_index", i),
                parent,
                "the section itself" if parent == i else "out of range",
                n,
            )
            parents[i] = -1
    state = [0] * n  # 0 unvisited, 1 on the current walk, 2 done
    for start in range(n):
        walk, node = [], start
        while node >= 0 and state[node] == 0:
            state[node] = 1
            walk.append(node)
            nxt = parents[node]
            if nxt >= 0 and state[nxt] == 1:  # `node -> nxt` closes a cycle: cut it here
                logger.warning(
                    "%s: parent index %d closes a cycle of parents; edge dropped",
                    _where(page_id, "section_parent_index", node), nxt,
                )
                parents[node] = -1
                nxt = -1
            node = nxt
        for visited in walk:
            state[visited] = 2
    return parents


@dataclass
class GraphNode:
    """One node of a `PageGraph`.

    Args:
        kind (`str`): `"page"`, `"section"` or `"image"`.
        text (`str`, *optional*, defaults to `""`): the page description, the section text or the
            image caption.
        image (`str`, `PIL.Image.Image` or `bytes`, *optional*): for image nodes, the file's path or URL
            (resolved against an image folder by the processor), or, from `PageGraph.from_dict`, the
            image itself (a PIL image or the encoded file's bytes).
        section (`int`, *optional*): the owning section index (for section and image nodes).
        title (`str`, *optional*, defaults to `""`): the page or section title.
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
        nodes (`list[GraphNode]`): node 0 is the page, node `1 + i` is section `i`, then images.
        edges (`dict[str, list[tuple[int, int]]]`): typed edges, keys from `EDGE_TYPES`.
        section_nodes (`list[int]`): node id of each section.
        image_nodes (`list[list[int]]`): node ids of each section's images, in page order.
        section_parents (`list[int]`): parent section index of each section, -1 for none.
        summaries (`list[str]`): each section's first sentence (the summarization target).
        rest_texts (`list[str]`): each section's text after the first sentence.
        raw_summaries (`list[str]`): the first sentence as it stands in the section text (may keep a
            newline); used, with `summaries`, to keep the target out of every input.
        is_sample (`list[bool]`): whether each section is a summarization sample.
        page_id (`str`, *optional*): a name for errors (URL or title).
        split (`str`, *optional*): `train` / `val` / `test` when known.
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
    ) -> PageGraph:
        """Lay out nodes and edges from normalised sections.

        Args:
            title (`str`): page title.
            description (`str`): page description (the page node's text).
            sections (`list[dict]`): per section, in page order: `title`, `text` (full text),
                `summary`, `rest`, `raw_summary`, `parent` (int, -1 for none),
                `is_sample` (bool) and `images`: a list of `(ref, caption)` pairs.
            page_id (`str`, *optional*): name used in errors; defaults to the title.
            split (`str`, *optional*): the page's split.

        A parent that cannot be right (out of range, the section itself, or closing a cycle of
        parents) is dropped (parent -1) with a warning naming page, section and field: one damaged
        page never stops a run.

        Raises:
            PageStructureError: a parent that is not an integer.
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
        parents = _repair_parents(
            [_as_int(sec["parent"], page_id, "parent", i) for i, sec in enumerate(sections)], page_id
        )
        for i, parent in enumerate(parents):
            if parent >= 0:
                edges["parent_child"].append((section_nodes[parent], section_nodes[i]))
        image_nodes: list[list[int]] = []
        unsafe_refs: list[str] = []
        for i, sec in enumerate(sections):
            ids = []
            for j, (ref, caption) in enumerate(sec["images"]):
                if isinstance(ref, str) and has_control_characters(ref):
                    unsafe_refs.append(f"section {i}, image {j}: {ref!r}")
                    ref = None  # masked: never handed to the file system
                ids.append(len(nodes))
                nodes.append(GraphNode("image", text=caption, image=ref or None, section=i))
                edges["section_image"].append((section_nodes[i], ids[-1]))
            image_nodes.append(ids)
        if unsafe_refs:
            logger.warning("page %r: %d image reference(s) hold a NUL or another control character and are masked "
                           "(expected a URL or a file path): %s", page_id, len(unsafe_refs),
                           "; ".join(unsafe_refs[:5]) + ("; ..." if len(unsafe_refs) > 5 else ""))
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
    def from_wikiweb2m(cls, row: Mapping[str, Any]) -> PageGraph:
        """Build the graph of one WikiWeb2M page row (feature names verbatim, see `processing.data.wikiweb2m`).

        The image caption is `section_image_clean_ref_desc` (the caption shown under the image),
        falling back to `section_image_captions` and then `section_image_alt_text` when empty.
        The image reference is `section_image_url`; the processor maps it to a file named by the
        URL's last path component in an image folder.

        Raises:
            KeyError: a required field is missing.
            PageStructureError: the page is damaged (per-section lists of different lengths, a value
                of the wrong type, a parent that is not an integer, text with lone surrogates); the
                message names page, section and field. A caller may count such pages and skip them.
        """
        page_id = _as_str(row.get("page_url") or row.get("page_title"), "?", "page_url")
        missing = [name for name in PAGE_GRAPH_FEATURES if name not in row]  # the others are optional
        if missing:
            raise KeyError(f"page {page_id!r}: WikiWeb2M row lacks field(s) {missing}")
        titles = _as_list(row["section_title"], page_id, "section_title")
        num_sections = len(titles)

        def per_section(name: str, default: Any) -> Sequence[Any]:
            values = row.get(name)
            if values is None:
                return [default] * num_sections
            values = _as_list(values, page_id, name)
            if len(values) != num_sections:
                raise PageStructureError(
                    f"{len(values)} values for {num_sections} sections (one per 'section_title'); the page's "
                    f"per-section lists are ragged",
                    page_id, name,
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
            section_urls = _as_list(urls[i], page_id, "section_image_url", i)
            sources = [
                (name, _as_list(values[i], page_id, name, i) if values[i] is not None else None)
                for name, values in (("section_image_clean_ref_desc", ref_descs),
                                     ("section_image_captions", captions),
                                     ("section_image_alt_text", alt_texts))
            ]
            for j, url in enumerate(section_urls):
                caption = ""
                for name, source in sources:
                    if source is not None and j < len(source):
                        candidate = _as_str(source[j], page_id, name, i, j).strip()
                        if candidate:
                            caption = candidate
                            break
                images.append((_as_str(url, page_id, "section_image_url", i, j), caption))
            sections.append(
                {
                    "title": _as_str(titles[i], page_id, "section_title", i),
                    "text": _as_str(texts[i], page_id, "section_text", i),
                    "summary": _as_str(summaries[i], page_id, "section_clean_1st_sentence", i),
                    "raw_summary": _as_str(raw_summaries[i], page_id, "section_raw_1st_sentence", i),
                    "rest": _as_str(rests[i], page_id, "section_rest_sentence", i),
                    "parent": _as_int(parents[i], page_id, "section_parent_index", i),
                    "is_sample": bool(_as_int(flags[i], page_id, "is_section_summarization_sample", i, 0)),
                    "images": images,
                }
            )
        return cls.build(
            title=_as_str(row.get("page_title"), page_id, "page_title"),
            description=_as_str(row.get("clean_page_description"), page_id, "clean_page_description")
            or _as_str(row.get("raw_page_description"), page_id, "raw_page_description"),
            sections=sections,
            page_id=page_id,
            split=_as_str(row.get("split"), page_id, "split") or None,
        )

    @classmethod
    def from_dict(cls, page: Mapping[str, Any]) -> PageGraph:
        """Build a graph from a plain dict, for data other than WikiWeb2M.

        Expected keys::

            {"title": str, "description": str, "url" or "id": str (optional), "split": str (optional),
             "parents": [int, ...] (optional, one per section, -1 for none),
             "sections": [{"title": str, "text": str,
                           "summary": str (optional), "rest": str (optional),
                           "parent": int (optional), "is_sample": bool (optional),
                           "images": [{"path" | "url" | "image": str, "caption": str}, ...]}, ...]}

        `"image"` may also hold the image itself: a `PIL.Image.Image` or the encoded file's bytes
        (kept in the graph; the processor preprocesses it like a file's pixels).

        Without `summary` the first sentence of `text` is split off naively (at `.`, `!` or
        `?` followed by whitespace); without `rest` it is the text after the summary. Parents
        default to -1 (a flat page). `is_sample` defaults to "has a summary and a rest".

        Every field is checked for its type: text fields take `str`, UTF-8 `bytes` or `None` (empty);
        parents take integers (Python or numpy); `is_sample` a bool or 0 / 1; `sections` and
        `images` lists of dicts; paths `str` or `os.PathLike`. Text with a lone surrogate is
        refused (not replaced: the caller's data is wrong, and a silent U+FFFD would hide it).

        Raises:
            KeyError: `sections` is missing, or an image has no `path`, `url` or `image`.
            PageFieldTypeError: (a `TypeError`) a field of the wrong type; names page, section,
                image and field.
            PageStructureError: ragged `parents`, a bad integer, text with lone surrogates.
        """
        page_id = _as_str(page.get("url") or page.get("id") or page.get("title"), "?", "url")
        if "sections" not in page:
            raise KeyError(f"page {page_id!r}: dict lacks 'sections'")
        raw_sections = _as_list(page["sections"], page_id, "sections")
        parents = page.get("parents")
        if parents is not None:
            parents = _as_list(parents, page_id, "parents")
            if len(parents) != len(raw_sections):
                raise PageStructureError(f"{len(parents)} values for {len(raw_sections)} sections", page_id, "parents")
        sections = []
        for i, sec in enumerate(raw_sections):
            if not isinstance(sec, Mapping):
                raise PageFieldTypeError(
                    f"expected a dict with 'title' and 'text', got {type(sec).__name__}", page_id, "sections", i
                )
            text = _as_str(sec.get("text"), page_id, "text", i)
            summary = sec.get("summary")
            if summary is None:
                parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
                summary = parts[0] if parts else ""
                rest = parts[1] if len(parts) > 1 else ""
            else:
                summary = _as_str(summary, page_id, "summary", i)
                rest = " ".join(text.replace(summary, " ", 1).split()) if summary and summary in text else text
            if sec.get("rest") is not None:
                rest = _as_str(sec["rest"], page_id, "rest", i)
            images = []
            for j, image in enumerate(_as_list(sec.get("images"), page_id, "images", i)):
                if not isinstance(image, Mapping):
                    raise PageFieldTypeError(
                        f"image {j}: expected a dict with 'path', 'url' or 'image' (and 'caption'), "
                        f"got {type(image).__name__}",
                        page_id, "images", i,
                    )
                caption = _as_str(image.get("caption"), page_id, "caption", i, j)
                ref = image.get("path") or image.get("url")
                if ref is None and image.get("image") is not None:
                    ref = image["image"]
                    if is_in_memory_image(ref):  # kept as is: the processor reads it like a file
                        ref = bytes(ref) if isinstance(ref, (bytearray, memoryview)) else ref
                        images.append((ref, caption))
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
                field_name = "path" if image.get("path") else "url"
                images.append((_as_str(os.fspath(ref), page_id, field_name, i, j), caption))
            parent = sec.get("parent", parents[i] if parents is not None else -1)
            is_sample = sec.get("is_sample")
            sections.append(
                {
                    "title": _as_str(sec.get("title"), page_id, "title", i),
                    "text": text,
                    "summary": summary,
                    "rest": rest,
                    "parent": _as_int(parent, page_id, "parent" if "parent" in sec else "parents", i),
                    "is_sample": bool(summary) and bool(rest) if is_sample is None
                    else _as_flag(is_sample, page_id, "is_sample", i),
                    "images": images,
                }
            )
        return cls.build(
            title=_as_str(page.get("title"), page_id, "title"),
            description=_as_str(page.get("description"), page_id, "description"),
            sections=sections,
            page_id=page_id,
            split=_as_str(page.get("split"), page_id, "split") or None,
        )

    @classmethod
    def coerce(cls, page: Any) -> PageGraph:
        """A `PageGraph` as is, a WikiWeb2M row (has `section_title`) or a plain dict (has `sections`).

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
        """Undirected adjacency: `neighbors[u]` is the set of nodes sharing an edge with `u`."""
        adjacency: list[set] = [set() for _ in self.nodes]
        for pairs in self.edges.values():
            for u, v in pairs:
                if u != v:
                    adjacency[u].add(v)
                    adjacency[v].add(u)
        return [frozenset(a) for a in adjacency]

    @cached_property
    def usable_texts(self) -> list[str | None]:
        """Each node's text, or `None` when it is empty or blank (such nodes are never text neighbours)."""
        return [node.text if node.text and not node.text.isspace() else None for node in self.nodes]

    @cached_property
    def page_block(self) -> list[int]:
        """`[page node]` when the description is usable as a text neighbour, else `[]`."""
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
        """Node id of section `section_idx` (with a clear error when out of range)."""
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


__all__ = [
    "EDGE_TYPES",
    "GraphNode",
    "PageFieldTypeError",
    "PageGraph",
    "PageStructureError",
    "is_in_memory_image",
    "is_page_graph",
    "scrub_summary",
]
