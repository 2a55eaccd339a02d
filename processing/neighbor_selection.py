"""Which neighbours the model sees: the ONE neighbour selection and the ONE collector of what an
embedding cache must hold. The processor, the training script and the embedding-cache command all
call these functions, so what is cached is exactly what is asked for.

Ranking (`neighbor_order`). Sections are ranked for target ``t`` as: its parent section first, then
the other sections by ``(|s - t|, s)`` (nearest first, the earlier one on ties). Candidates:

* text: the page description, the captions of the target's images, then for each ranked section
  its text followed by its images' captions; blank texts are never candidates;
* image: the target's images, then each ranked section's images.

Selection (`select_neighbors`) takes a prefix of the candidates under the budgets:

* ``section_only``: nothing. ``section_all``: the captions of the target's images and its images.
* ``text_only``: the text candidates. ``all``: the text and the image candidates.

Leakage: the target's summary (clean and raw first sentence) never enters any input. A neighbour text
that contains it verbatim has it cut out; a text left empty gives its slot to the next candidate. The
target's own input is ``"<title>: <rest>"`` with the summary cut out likewise (`target_input`).

Where the selected neighbours go in the sequence is not decided here: SA-TE's layout (each section's texts,
then its images) is `sa_te_layout`.

Everything here is memoised per graph (``PageGraph.memo``): each section's candidates are walked once,
and each text is searched for the summary at most once, whatever the budgets asking.

This file is Hub-loadable: it imports same-folder files only.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .design_space import has_image_slots, has_text_slots
from .image_source import ImageFolder, is_in_memory_image
from .page_graph import PageGraph, scrub_summary


class NeighborOrder(NamedTuple):
    """Candidate neighbours of one target section, nearest first (see `neighbor_order`).

    Args:
        ranking (`tuple[int]`): the other sections: the parent first, then by ``(|s - t|, s)``.
        text_nodes (`tuple[int]`): the page node, the target's image nodes (their captions), then per
            ranked section its node followed by its image nodes; only nodes with a usable (non-blank)
            text.
        texts (`tuple[str]`): the text of each of ``text_nodes``.
        image_nodes (`tuple[int]`): the target's image nodes, then each ranked section's.
        image_refs (`tuple`): the ``image`` of each of ``image_nodes``.
    """

    ranking: tuple[int, ...]
    text_nodes: tuple[int, ...]
    texts: tuple[str, ...]
    image_nodes: tuple[int, ...]
    image_refs: tuple[Any, ...]


@dataclass
class NeighborSelection:
    """The neighbours of one example, in slot order.

    Args:
        target_node (`int`): page-graph node of the target section.
        text_nodes (`list[int]`): node of each text neighbour (page, section or image-caption node).
        texts (`list[str]`): the text of each text neighbour, summary-free.
        image_nodes (`list[int]`): node of each image neighbour.
        image_refs (`list`): path or URL of each image neighbour (`None` if it has none), or the image
            itself (a PIL image or the file's bytes) for images given in memory in a page dict.
    """

    target_node: int
    text_nodes: list[int]
    texts: list[str]
    image_nodes: list[int]
    image_refs: list[Any]


def section_ranking(graph: PageGraph, section_idx: int) -> list[int]:
    """Other sections in neighbour order: the parent, then ``t-1, t+1, t-2, t+2, ...``."""
    return list(neighbor_order(graph, section_idx).ranking)


def neighbor_order(graph: PageGraph, section_idx: int) -> NeighborOrder:
    """The candidate neighbours of section ``section_idx``, nearest first; built once per section and kept
    with the graph, so every configuration's selection is a slice of it."""
    orders = graph.memo.setdefault("neighbor_order", {})
    order = orders.get(section_idx)
    if order is None:
        graph.check_section(section_idx)
        t, parent = section_idx, graph.section_parents[section_idx]
        ranking = [parent] if parent >= 0 else []
        for distance in range(1, max(t + 1, graph.num_sections - t)):  # t-1, t+1, t-2, t+2, ...
            for s in (t - distance, t + distance):
                if 0 <= s < graph.num_sections and s != parent:
                    ranking.append(s)
        text_nodes = graph.page_block + graph.caption_blocks[t]
        image_nodes = list(graph.image_nodes[t])
        for s in ranking:
            text_nodes += graph.section_blocks[s]
            image_nodes += graph.image_nodes[s]
        usable = graph.usable_texts
        # Tuples of ints and strings: the garbage collector stops tracking them, so graphs kept for a
        # whole data set do not make every full collection longer.
        order = orders[section_idx] = NeighborOrder(
            ranking=tuple(ranking),
            text_nodes=tuple(text_nodes),
            texts=tuple([usable[n] for n in text_nodes]),
            image_nodes=tuple(image_nodes),
            image_refs=tuple([graph.nodes[n].image for n in image_nodes]),
        )
    return order


def target_input(graph: PageGraph, section_idx: int, include_title: bool = True) -> str:
    """The input text of target section ``section_idx``: ``"<title>: <rest>"`` (or whichever is not empty),
    with the section's summary cut out wherever it still occurs. One string object per section, so its
    hash (a token cache key) is computed once."""
    inputs = graph.memo.setdefault("target_input", {})
    key = (section_idx, include_title)
    text = inputs.get(key)
    if text is None:
        rest = graph.rest_texts[section_idx]
        title = graph.section_title(section_idx) if include_title else ""
        text = f"{title}: {rest}" if title and rest else (title or rest)
        text = scrub_summary(text, (graph.summaries[section_idx], graph.raw_summaries[section_idx]))
        inputs[key] = text
    return text


def summary_free(graph: PageGraph, section_idx: int, count: int) -> bool:
    """Whether none of the first ``count`` text candidates of ``section_idx`` contains its summary (clean or
    raw first sentence), i.e. whether they can be inputs as they are. Memoised per section as ``(texts
    checked, first text with the summary or -1)``."""
    checks = graph.memo.setdefault("summary_free", {})
    checked, first = checks.get(section_idx, (0, -1))
    if first < 0 and checked < count:
        sentences = [s for s in (graph.summaries[section_idx], graph.raw_summaries[section_idx]) if s]
        texts = neighbor_order(graph, section_idx).texts
        end = min(count, len(texts))
        # One search over the joined texts ("\0" never occurs in a summary, so no match straddles two
        # texts); only a page that repeats the summary looks for the first text holding it.
        joined = "\0".join(texts[checked:end])
        if any(sentence in joined for sentence in sentences):
            first = next(i for i in range(checked, end) if any(sentence in texts[i] for sentence in sentences))
        checks[section_idx] = (max(checked, end), first)
    return first < 0 or first >= count


def select_neighbors(
    graph: PageGraph, section_idx: int, context: str, max_text_neighbors: int, max_image_neighbors: int
) -> NeighborSelection:
    """Choose the text and image neighbours of ``section_idx`` under the budgets (module docstring)."""
    order = neighbor_order(graph, section_idx)
    target_node = graph.section_nodes[section_idx]
    if context == "section_only":
        return NeighborSelection(target_node, [], [], [], [])
    if context == "section_all":
        candidates = graph.caption_blocks[section_idx]
        text_nodes = candidates[:max_text_neighbors]
        texts = [graph.usable_texts[node] for node in text_nodes]
        summary, raw_summary = graph.summaries[section_idx], graph.raw_summaries[section_idx]
        joined = "\0".join(texts)  # one substring test over all chosen texts
        clean = not ((summary and summary in joined) or (raw_summary and raw_summary in joined))
        image_nodes = graph.image_nodes[section_idx][:max_image_neighbors]
        image_refs = [graph.nodes[node].image for node in image_nodes]
    else:
        candidates = order.text_nodes
        text_nodes, texts = list(candidates[:max_text_neighbors]), list(order.texts[:max_text_neighbors])
        clean = summary_free(graph, section_idx, max_text_neighbors)
        if context == "all":
            image_nodes = list(order.image_nodes[:max_image_neighbors])
            image_refs = list(order.image_refs[:max_image_neighbors])
        else:
            image_nodes, image_refs = [], []
    if texts:
        text_nodes, texts = _clean_texts(graph, section_idx, context, max_text_neighbors, candidates,
                                         list(text_nodes), list(texts), clean)
    return NeighborSelection(target_node, list(text_nodes), list(texts), list(image_nodes), image_refs)


def _has_duplicate(texts: list[str], target: str) -> bool:
    """Whether a text repeats, or is contained in another text or in the target input (one search each)."""
    if len(set(texts)) < len(texts):
        return True
    joined = "\0".join(texts)  # "\0" never occurs in a text: a match lies inside one text
    return any(text in target or joined.count(text) > 1 for text in texts)


def _clean_texts(graph: PageGraph, section_idx: int, context: str, budget: int, candidates, text_nodes, texts,
                 clean: bool):
    """The text neighbours without the target's summary and without duplicates, in one walk of the candidates,
    memoised per section (only pages that repeat the summary or a text take it). The summary is cut out of a text
    that holds it (``clean`` is False); a text that repeats, or is contained in another selected neighbour or in
    the target input (e.g. the page description repeated by the lead section), is dropped. Texts left empty or
    dropped give their slot to the next candidates; the count dropped is kept in
    ``graph.memo["duplicates_dropped"]`` (data report)."""
    memo = graph.memo.setdefault("clean_texts", {})
    key = (section_idx, context, budget)
    if key in memo:
        return memo[key]
    # The target's text without its title: what every processor puts in the input, whether or not it prefixes the
    # title (include_section_title), so the rule does not depend on that option.
    target = target_input(graph, section_idx, include_title=False)
    dropped = 0
    if not clean or _has_duplicate(texts, target):
        forbidden = (graph.summaries[section_idx], graph.raw_summaries[section_idx])
        kept_nodes: list[int] = []
        kept: list[str] = []
        for node in candidates:
            if len(kept) == budget:
                break
            text = graph.usable_texts[node] if clean else scrub_summary(graph.usable_texts[node], forbidden)
            if not text:
                continue
            if text in target or any(text in other for other in kept):
                dropped += 1
                continue
            inside = [i for i, other in enumerate(kept) if other in text]  # earlier, shorter texts within this one
            for i in reversed(inside):
                del kept[i], kept_nodes[i]
            dropped += len(inside)
            kept_nodes.append(node)
            kept.append(text)
        text_nodes, texts = kept_nodes, kept
    graph.memo.setdefault("duplicates_dropped", {})[key] = dropped
    memo[key] = (text_nodes, texts)
    return text_nodes, texts


@dataclass
class NeighborInputs:
    """What the model will see of a set of samples, as an embedding cache must hold it.

    Args:
        texts (`list[str]`): unique text-neighbour texts, exactly as `select_neighbors` gives them.
        image_files (`list[str]`): unique image files (resolved inside the image folder).
        image_sha256 (`dict[str, str]`): the fetcher's content hash of each file it recorded one for.
        missing_images (`int`): image references that resolve to no file (these slots are masked).
        in_memory_images (`int`): images given in memory in page dicts (looked up by their bytes).
    """

    texts: list[str]
    image_files: list[str]
    image_sha256: dict[str, str]
    missing_images: int = 0
    in_memory_images: int = 0


def iter_neighbor_inputs(
    samples: Iterable[tuple[Any, int]],
    context: str,
    neighbor_encoding: str,
    max_text_neighbors: int,
    max_image_neighbors: int,
    image_folder: ImageFolder | str | None = None,
    counts: dict | None = None,
) -> Iterator[tuple[list[str], list[tuple[str, str | None]]]]:
    """Per sample of ``samples`` (``(page, section_idx)`` pairs, or a `PageGraphIndex`), lazily: its neighbour texts
    (none in SA-TE: there they are raw tokens) and its image files as ``(path, sha256 or None)``, exactly what the
    processor asks an embedding cache for under this configuration. Image references with a file, without one and
    in-memory images are counted in ``counts["resolved_images"]``, ``counts["missing_images"]`` and
    ``counts["in_memory_images"]``."""
    folder = ImageFolder.coerce(image_folder)
    want_texts, want_images = has_text_slots(neighbor_encoding, context), has_image_slots(context)
    counts = {} if counts is None else counts
    counts.setdefault("resolved_images", 0)
    counts.setdefault("missing_images", 0)
    counts.setdefault("in_memory_images", 0)
    for page, section_idx in samples:
        graph = PageGraph.coerce(page)
        selection = select_neighbors(graph, section_idx, context, max_text_neighbors, max_image_neighbors)
        files = []
        for ref in selection.image_refs if want_images else ():
            if ref is not None and is_in_memory_image(ref):
                counts["in_memory_images"] += 1
                continue
            path = folder.resolve(ref)
            if path is None:
                counts["missing_images"] += ref is not None
                continue
            counts["resolved_images"] += 1
            files.append((path, folder.sha256(ref)))
        yield (list(selection.texts) if want_texts else []), files


def collect_neighbor_inputs(
    samples: Iterable[tuple[Any, int]],
    context: str,
    neighbor_encoding: str,
    max_text_neighbors: int,
    max_image_neighbors: int,
    image_folder: ImageFolder | str | None = None,
) -> NeighborInputs:
    """The unique neighbour texts and image files of ``samples`` (`iter_neighbor_inputs`), in memory."""
    counts: dict = {}
    texts: dict[str, None] = {}
    files: dict[str, None] = {}
    digests: dict[str, str] = {}
    inputs = iter_neighbor_inputs(samples, context, neighbor_encoding, max_text_neighbors, max_image_neighbors,
                                  image_folder, counts)
    for sample_texts, sample_files in inputs:
        texts.update(dict.fromkeys(sample_texts))
        for path, sha in sample_files:
            files[path] = None
            if sha is not None:
                digests[path] = sha
    return NeighborInputs(list(texts), list(files), digests, counts["missing_images"], counts["in_memory_images"])


__all__ = [
    "NeighborInputs",
    "NeighborOrder",
    "NeighborSelection",
    "collect_neighbor_inputs",
    "iter_neighbor_inputs",
    "neighbor_order",
    "section_ranking",
    "select_neighbors",
    "summary_free",
    "target_input",
]
