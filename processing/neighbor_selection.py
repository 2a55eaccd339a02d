"""Which neighbours the model sees: the ONE neighbour selection. The processor, the training script and the
embedding-cache command all call it (the collector of what a cache must hold is
`processing/data/neighbor_inputs.py`), so what is cached is exactly what is asked for.

Ranking (`section_ranking`). Sections are ranked for target `t` as: its parent section first, then
the other sections by `(|s - t|, s)` (nearest first, the earlier one on ties). Candidates, in order:

* text (`text_candidates`): the page description, the captions of the target's images, then for each
  ranked section its text followed by its images' captions; blank texts are never candidates;
* image (`image_candidates`): the target's images, then each ranked section's images.

Selection (`select_neighbors`) takes a prefix of the candidates under the budgets:

* `section_only`: nothing. `section_all`: the captions of the target's images and its images.
* `text_only`: the text candidates. `all`: the text and the image candidates.

Leakage: the target's summary (clean and raw first sentence) never enters any input. A neighbour text
that contains it verbatim has it cut out; a text left empty gives its slot to the next candidate. The
target's own input is `"<title>: <rest>"` with the summary cut out likewise (`target_input`).
Duplicates: a text that repeats, or lies inside another selected text or the target input, is dropped
and its slot goes to the next candidate.

Where the selected neighbours go in the sequence is not decided here: SA-TE's layout (each section's texts,
then its images) is `token_layout`.

Cost. Candidates are produced lazily, and sections without text (or without images) are stepped over by
bisection, so a selection costs its budgets, not the page. Cleaning duplicates walks texts deduplicated by
content first: each distinct text is judged once per target, and a run of sections holding only texts
already judged is jumped over in one step (`_TextGroups`), so a page of thousands of repeated sections costs
O(log sections) per target, not a walk of the whole page per target. Everything is memoised per graph
(`PageGraph.memo`).

This file is Hub-loadable: it imports same-folder files only.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .page_graph import PageGraph, scrub_summary


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


def _sections_with(graph: PageGraph, what: str) -> list[int]:
    """The sections (sorted) that have a text candidate (`"text"`) or an image (`"image"`); memoised."""
    found = graph.memo.setdefault("sections_with", {})
    if what not in found:
        blocks = graph.section_blocks if what == "text" else graph.image_nodes
        found[what] = [s for s, block in enumerate(blocks) if block]
    return found[what]


def _ranked(graph: PageGraph, t: int, sections: list[int]) -> Iterator[int]:
    """The sections of `sections` (sorted) other than `t` in neighbour order, lazily: the parent, then by
    `(|s - t|, s)`; two pointers found by bisection, so sections left out of `sections` cost nothing."""
    parent = graph.section_parents[t]
    i = bisect_left(sections, parent)
    if parent >= 0 and i < len(sections) and sections[i] == parent:
        yield parent
    left, right = bisect_left(sections, t) - 1, bisect_right(sections, t)
    while left >= 0 or right < len(sections):
        if right == len(sections) or (left >= 0 and t - sections[left] <= sections[right] - t):
            s, left = sections[left], left - 1
        else:
            s, right = sections[right], right + 1
        if s != parent:
            yield s


def section_ranking(graph: PageGraph, section_idx: int) -> list[int]:
    """Other sections in neighbour order: the parent, then `t-1, t+1, t-2, t+2, ...` (O(sections): for reports
    and tests; the selection takes the prefixes it needs lazily)."""
    graph.check_section(section_idx)
    return list(_ranked(graph, section_idx, range(graph.num_sections)))


def text_candidates(graph: PageGraph, section_idx: int) -> Iterator[int]:
    """The text-candidate nodes of `section_idx` in order (module docstring), lazily."""
    yield from graph.page_block
    yield from graph.caption_blocks[section_idx]
    for s in _ranked(graph, section_idx, _sections_with(graph, "text")):
        yield from graph.section_blocks[s]


def image_candidates(graph: PageGraph, section_idx: int) -> Iterator[int]:
    """The image-candidate nodes of `section_idx` in order (module docstring), lazily."""
    yield from graph.image_nodes[section_idx]
    for s in _ranked(graph, section_idx, _sections_with(graph, "image")):
        yield from graph.image_nodes[s]


def _text_prefix(graph: PageGraph, section_idx: int, count: int) -> list[int]:
    """The first `count` text candidates (memoised per section, extended when a larger budget asks)."""
    prefixes = graph.memo.setdefault("text_prefix", {})
    prefix = prefixes.get(section_idx)
    if prefix is None or (len(prefix[1]) < count and not prefix[0]):
        nodes = list(islice(text_candidates(graph, section_idx), count))
        prefix = prefixes[section_idx] = (len(nodes) < count, nodes)  # (every candidate taken, the nodes)
    return prefix[1][:count]


def target_input(graph: PageGraph, section_idx: int, include_title: bool = True) -> str:
    """The input text of target section `section_idx`: `"<title>: <rest>"` (or whichever is not empty),
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
    """Whether none of the first `count` text candidates of `section_idx` contains its summary (clean or
    raw first sentence), i.e. whether they can be inputs as they are. Memoised per section as `(texts
    checked, first text with the summary or -1)`."""
    checks = graph.memo.setdefault("summary_free", {})
    checked, first = checks.get(section_idx, (0, -1))
    if first < 0 and checked < count:
        sentences = [s for s in (graph.summaries[section_idx], graph.raw_summaries[section_idx]) if s]
        texts = [graph.usable_texts[node] for node in _text_prefix(graph, section_idx, count)]
        end = len(texts)
        # One search over the joined texts ("\0" never occurs in a summary, so no match straddles two
        # texts); only a page that repeats the summary looks for the first text holding it.
        joined = "\0".join(texts[checked:end])
        if any(sentence in joined for sentence in sentences):
            first = next(i for i in range(checked, end) if any(sentence in texts[i] for sentence in sentences))
        checks[section_idx] = (max(checked, count), first)
    return first < 0 or first >= count


def select_neighbors(
    graph: PageGraph, section_idx: int, context: str, max_text_neighbors: int, max_image_neighbors: int
) -> NeighborSelection:
    """Choose the text and image neighbours of `section_idx` under the budgets (module docstring)."""
    graph.check_section(section_idx)
    target_node = graph.section_nodes[section_idx]
    if context == "section_only":
        return NeighborSelection(target_node, [], [], [], [])
    if context == "section_all":
        text_nodes = graph.caption_blocks[section_idx][:max_text_neighbors]
        texts = [graph.usable_texts[node] for node in text_nodes]
        summary, raw_summary = graph.summaries[section_idx], graph.raw_summaries[section_idx]
        joined = "\0".join(texts)  # one substring test over all chosen texts
        clean = not ((summary and summary in joined) or (raw_summary and raw_summary in joined))
        image_nodes = graph.image_nodes[section_idx][:max_image_neighbors]
    else:
        text_nodes = _text_prefix(graph, section_idx, max_text_neighbors)
        texts = [graph.usable_texts[node] for node in text_nodes]
        clean = summary_free(graph, section_idx, max_text_neighbors)
        image_nodes = (list(islice(image_candidates(graph, section_idx), max_image_neighbors))
                       if context == "all" else [])
    if texts:
        text_nodes, texts = _clean_texts(graph, section_idx, context, max_text_neighbors, list(text_nodes), texts,
                                         clean)
    image_refs = [graph.nodes[node].image for node in image_nodes]
    return NeighborSelection(target_node, list(text_nodes), list(texts), list(image_nodes), image_refs)


def _has_duplicate(texts: list[str], target: str) -> bool:
    """Whether a text repeats, or is contained in another text or in the target input (one search each)."""
    if len(set(texts)) < len(texts):
        return True
    joined = "\0".join(texts)  # "\0" never occurs in a text: a match lies inside one text
    return any(text in target or joined.count(text) > 1 for text in texts)


def _clean_texts(graph: PageGraph, section_idx: int, context: str, budget: int, text_nodes, texts, clean: bool):
    """The text neighbours without the target's summary and without duplicates, memoised per section (only pages
    that repeat the summary or a text take `_TextWalk`). `text_nodes` / `texts`: the first `budget`
    candidates; `clean`: none of them holds the summary. The count dropped is kept in
    `graph.memo["duplicates_dropped"]` (data report)."""
    memo = graph.memo.setdefault("clean_texts", {})
    key = (section_idx, context, budget)
    if key in memo:
        return memo[key]
    # The target's text without its title: what every processor puts in the input, whether or not it prefixes the
    # title (include_section_title), so the rule does not depend on that option.
    target = target_input(graph, section_idx, include_title=False)
    dropped = 0
    if not clean or _has_duplicate(texts, target):
        walk = _TextWalk(graph, section_idx, budget, target)
        if context == "section_all":  # its only candidates: the target's captions
            for node in graph.caption_blocks[section_idx]:
                walk.visit(node)
        else:
            walk.run()
        text_nodes, texts, dropped = walk.kept_nodes, walk.kept, walk.dropped
    graph.memo.setdefault("duplicates_dropped", {})[key] = dropped
    memo[key] = (text_nodes, texts)
    return text_nodes, texts


class _TextGroups:
    """The page's text candidates deduplicated by content, for `_TextWalk`: a group id per usable text node, the
    sections each group occurs in, and two range-extremum tables over the sections: `after[s]`, the furthest next
    occurrence (section > s) of any group of section `s`'s block, and `before[s]`, the earliest previous one.
    A walk that has judged every group of sections `l..r` can then find the nearest section left of `l` (right of
    `r`) holding a group with no occurrence in `l..r` in O(log sections): it is the last `s < l` with
    `after[s] > r` (the first `s > r` with `before[s] < l`). Built once per graph, O(sections log sections)."""

    def __init__(self, graph: PageGraph):
        usable, n = graph.usable_texts, graph.num_sections
        ids: dict[str, int] = {}
        self.group = {node: ids.setdefault(usable[node], len(ids))
                      for node in range(graph.num_nodes) if usable[node] is not None}
        self.where: list[list[int]] = [[] for _ in ids]  # sections holding each group, one entry per node
        for s, block in enumerate(graph.section_blocks):
            for node in block:
                self.where[self.group[node]].append(s)
        # Text candidates in sections [0, s): the cumulative block sizes.
        self.nodes_before = [0]
        for block in graph.section_blocks:
            self.nodes_before.append(self.nodes_before[-1] + len(block))
        after, before = [-1] * n, [n] * n  # an empty block never holds a group not yet judged
        for where in self.where:
            if not where:  # only the page description
                continue
            before[where[0]], after[where[-1]] = -1, n  # no previous / next occurrence
            for previous, s in zip(where, where[1:]):
                if previous != s:
                    before[s] = min(before[s], previous)
                    after[previous] = max(after[previous], s)
        self.after, self.before = self._table(after, max), self._table(before, min)

    @staticmethod
    def _table(values: list[int], pick) -> list[list[int]]:
        """Sparse table: `table[k][i]` is `pick` over `values[i : i + 2**k]`."""
        table = [values]
        while 2 ** len(table) <= len(values):
            half, prev = 2 ** (len(table) - 1), table[-1]
            table.append([pick(prev[i], prev[i + half]) for i in range(len(values) - 2 * half + 1)])
        return table

    def new_left(self, low: int, high: int) -> int:
        """The last section `s < low` holding a group with no occurrence in `low..high` (-1 if none)."""
        pos = low
        for k in range(len(self.after) - 1, -1, -1):
            if pos - 2**k >= 0 and self.after[k][pos - 2**k] <= high:
                pos -= 2**k
        return pos - 1

    def new_right(self, low: int, high: int) -> int:
        """The first section `s > high` holding a group with no occurrence in `low..high` (sections if none)."""
        pos, n = high + 1, len(self.before[0])
        for k in range(len(self.before) - 1, -1, -1):
            if pos + 2**k <= n and self.before[k][pos] >= low:
                pos += 2**k
        return pos

    def count(self, group: int, low: int, high: int) -> int:
        """Nodes of `group` in sections `low..high`."""
        where = self.where[group]
        return bisect_right(where, high) - bisect_left(where, low)


class _TextWalk:
    """One target's text candidates judged in order (module docstring: summary cut out, empty texts skipped,
    duplicates dropped), deduplicated by content (`_TextGroups`): a text equal to one already judged shares its fate
    (dropped, or empty), so sections holding only such texts are counted, not visited. The result and the count
    dropped are those of judging every candidate one by one."""

    def __init__(self, graph: PageGraph, t: int, budget: int, target: str):
        groups = graph.memo.get("text_groups")
        if groups is None:
            groups = graph.memo["text_groups"] = _TextGroups(graph)
        self.graph, self.groups, self.t, self.budget, self.target = graph, groups, t, budget, target
        # Every text is searched for the summary: a candidate past the first `budget` (reached because one of those
        # was dropped) may hold it even when the first `budget` do not.
        self.forbidden = (graph.summaries[t], graph.raw_summaries[t])
        self.judged: set[int] = set()
        self.empty: list[int] = []  # groups left empty by the summary cut: their repeats are not counted as dropped
        self.kept_nodes: list[int] = []
        self.kept: list[str] = []
        self.dropped = 0

    @property
    def full(self) -> bool:
        return len(self.kept) == self.budget

    def visit(self, node: int) -> None:
        """Judge one candidate (nothing once the budget is full)."""
        if self.full:
            return
        group = self.groups.group[node]
        if group in self.judged:  # a repeat: dropped, or empty like the first one
            self.dropped += group not in self.empty
            return
        self.judged.add(group)
        text = scrub_summary(self.graph.usable_texts[node], self.forbidden)
        if not text:
            self.empty.append(group)
            return
        if text in self.target or any(text in other for other in self.kept):
            self.dropped += 1
            return
        inside = [i for i, other in enumerate(self.kept) if other in text]  # earlier, shorter texts within this one
        for i in reversed(inside):
            del self.kept[i], self.kept_nodes[i]
        self.dropped += len(inside)
        self.kept_nodes.append(node)
        self.kept.append(text)

    def repeats(self, low: int, high: int) -> int:
        """Candidates in sections `low..high` (all repeats of judged groups, the parent's block aside) that judging
        them one by one would count as dropped."""
        if low > high:
            return 0
        groups, parent = self.groups, self.graph.section_parents[self.t]
        count = groups.nodes_before[high + 1] - groups.nodes_before[low]
        count -= sum(groups.count(group, low, high) for group in self.empty)
        if low <= parent <= high:  # ranked first, not here
            count -= sum(groups.group[node] not in self.empty for node in self.graph.section_blocks[parent])
        return count

    def run(self) -> None:
        """Judge the page description, the target's captions, the parent's block, then the ranked sections."""
        graph, groups, t = self.graph, self.groups, self.t
        for node in (*graph.page_block, *graph.caption_blocks[t]):
            self.visit(node)
        parent = graph.section_parents[t]
        for node in graph.section_blocks[parent] if parent >= 0 else ():
            self.visit(node)
        # Sections low..high (t aside: its own text is not a candidate) have been judged; so, through `judged`, have
        # the parent's and the prefix's groups, which only makes the search below stop early at times.
        own = groups.group.get(graph.section_nodes[t])
        own = None if own is None or len(groups.where[own]) < 2 else groups.where[own]
        low = high = t
        n = graph.num_sections
        while not self.full:
            left, right = groups.new_left(low, high), groups.new_right(low, high)
            if own is not None and groups.group[graph.section_nodes[t]] not in self.judged:
                # The target's own text is in low..high but not judged: its other occurrences are new.
                i = bisect_left(own, low)
                left = max(left, own[i - 1] if i else -1)
                j = bisect_right(own, high)
                right = min(right, own[j] if j < len(own) else n)
            if left < 0 and right >= n:  # nothing new anywhere: every other candidate is a repeat
                self.dropped += self.repeats(0, low - 1) + self.repeats(high + 1, n - 1)
                return
            if left >= 0 and (right >= n or t - left <= right - t):  # ties: the left one first
                distance = t - left
                self.dropped += self.repeats(left + 1, low - 1) + self.repeats(high + 1, min(t + distance - 1, n - 1))
                low, high, s = left, min(t + distance - 1, n - 1), left
            else:
                distance = right - t
                self.dropped += self.repeats(max(t - distance, 0), low - 1) + self.repeats(high + 1, right - 1)
                low, high, s = max(t - distance, 0), right, right
            if s != parent:
                for node in graph.section_blocks[s]:
                    self.visit(node)


__all__ = [
    "NeighborSelection",
    "image_candidates",
    "section_ranking",
    "select_neighbors",
    "summary_free",
    "target_input",
    "text_candidates",
]
