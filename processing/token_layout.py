"""Where SA-TE puts each neighbour in the sequence: a section's texts, then the placeholders of its images.

SA-TE gives the neighbour texts as raw tokens and only the images as embeddings (``<neighbor>`` placeholders). As
in the MMGL paper and its code, each image's placeholders come right after the text of the section the image
belongs to, so that the sequence keeps the page's structure::

    " Section:" <target text> <captions of the target's images> <placeholders of the target's images>
    " Context:" <page description>
                <text of section s1> <captions of s1's images> <placeholders of s1's images>
                <text of section s2> ...

The groups (`sa_te_groups`): the target section first (the target text is the prompt itself), then the page
description (it belongs to no section and has no image), then the other sections in neighbour order
(`neighbor_selection.section_ranking`: the parent, then the nearest). A group holds its selected texts, then its
selected images, each in slot order. A section whose images were selected but whose text was not (the text budget
was spent, or its text is blank or was dropped as a duplicate) keeps its place in neighbour order with its images
alone; with the text budget spent, that is after every text, in budget order.

Which texts and images are selected (budgets, ranking, leakage) stays in `neighbor_selection`; this file only
places what was selected. The image slots of a selection come as the target's images, then each ranked section's:
the group order. So the placeholders stay in slot order, the order in which the model writes the image
embeddings into them.

This file is Hub-loadable: it imports same-folder files only.
"""
from __future__ import annotations

from typing import NamedTuple

from .neighbor_selection import NeighborSelection
from .page_graph import PageGraph


class SectionGroup(NamedTuple):
    """One section's neighbours in the SA-TE sequence.

    Args:
        section (`int` or `None`): the section, or `None` for the page description.
        texts (`tuple[int]`): positions in ``NeighborSelection.texts`` of the group's texts (the section's text,
            its images' captions), in slot order.
        images (`tuple[int]`): positions in ``NeighborSelection.image_nodes`` of the group's images, in slot order.
    """

    section: int | None
    texts: tuple[int, ...]
    images: tuple[int, ...]


def sa_te_groups(graph: PageGraph, section_idx: int, selection: NeighborSelection) -> list[SectionGroup]:
    """The SA-TE groups of ``selection`` (the neighbours of target ``section_idx``), in sequence order (module
    docstring): the target's group always first, then each group that holds a text or an image."""
    parent = graph.section_parents[section_idx]

    def position(section: int | None) -> tuple:
        """Where a section's group goes: the target, the page description, the parent, then by ``(|s - t|, s)``
        (the selection's ranking, computed for the sections at hand only)."""
        if section == section_idx:
            return (0,)
        if section is None:  # the page node belongs to no section
            return (1,)
        return (2,) if section == parent else (3, abs(section - section_idx), section)

    texts: dict[int | None, list[int]] = {}  # section -> the group's texts (images), in slot order
    images: dict[int | None, list[int]] = {}
    nodes = graph.nodes
    for i, node in enumerate(selection.text_nodes):
        texts.setdefault(nodes[node].section, []).append(i)
    for j, node in enumerate(selection.image_nodes):
        images.setdefault(nodes[node].section, []).append(j)
    groups = [SectionGroup(section, tuple(texts.get(section, ())), tuple(images.get(section, ())))
              for section in sorted({section_idx, *texts, *images}, key=position)]  # the target's group, always there
    placed = [j for group in groups for j in group.images]
    if placed != sorted(placed):  # the model fills placeholders in slot order: another order would mix images
        raise RuntimeError(
            f"page {graph.page_id!r}, section {section_idx}: image slots {selection.image_nodes} are not in "
            "neighbour order (the target's, then each ranked section's); the selection and the layout disagree"
        )
    return groups


__all__ = ["SectionGroup", "sa_te_groups"]
