"""The page graph projected onto an example's neighbour slots: ``neighbor_adjacency``.

Nodes are the slots ``[text slots..., image slots...]``. Each slot stands for a page-graph node: the
page node (description), a section node (its text) or an image node (its caption as a text slot, its
pixels as an image slot). Two real slots ``a != b`` are adjacent when their nodes are (1) the same node
(an image's caption slot and its image slot), (2) adjacent in the page graph, or (3) both adjacent to
the target section node. The target is the node being summarised: it is the prompt, not a slot, so it
is contracted and its graph neighbours become pairwise adjacent. Masked (missing) and padding slots are
isolated; there are no self loops.

Without text slots (SA-TE: the texts are tokens of the prompt), an image node has no other slot to meet:
its caption and its section's text are tokens, placed right before its placeholders (`sa_te_layout`). There
each image slot stands for its section (``images_stand_for_sections``), and the same three rules apply to
the images' section nodes: two image slots are adjacent when (1) their images belong to the same section,
(2) their sections are joined by section order or parent-child (page edges join the page node, never a
slot's section, to the sections), or (3) both sections are the target or next to it (the contracted
target). So an SA-TE image slot gets the edges that its section's text slot has among the sections in SA-E,
plus the other images of its section.

This file is Hub-loadable: it imports installed packages and same-folder files only.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .page_graph import PageGraph


def neighbor_adjacency(
    graph: PageGraph,
    target_node: int,
    slot_nodes: Sequence[int],
    slot_mask: Sequence[int],
    images_stand_for_sections: bool = False,
) -> torch.Tensor:
    """Project the page graph onto the neighbour slots (rules in the module docstring).

    Args:
        graph (`PageGraph`): the page.
        target_node (`int`): the target section's node (contracted).
        slot_nodes (`list[int]`): the node of each slot, text slots then image slots.
        slot_mask (`list[int]`): 1 for a real slot, 0 for a missing one (kept isolated).
        images_stand_for_sections (`bool`, *optional*, defaults to `False`): the slots are images only (SA-TE),
            each standing for its section's node.

    Returns:
        `torch.FloatTensor` of shape `(N, N)`, symmetric 0/1, zero diagonal.
    """
    n = len(slot_nodes)
    if not any(slot_mask):
        return torch.from_numpy(np.zeros((n, n), dtype=np.float32))
    if images_stand_for_sections:
        slot_nodes = _section_nodes(graph, slot_nodes)
    # Masked slots look at the padding node, adjacent to nothing, so their rows and columns come out
    # empty without a masking pass.
    dead = graph.num_nodes
    if not all(slot_mask):
        slot_nodes = [node if real else dead for node, real in zip(slot_nodes, slot_mask)]
    nodes = np.array(slot_nodes, dtype=np.intp)
    closed = graph.padded_closed_adjacency
    # Rules 1 and 2 at once: the page graph's adjacency with self loops, so two slots of one node come
    # out adjacent (`take` twice: several times faster than fancy indexing on small matrices).
    adjacency = closed.take(nodes, 0).take(nodes, 1)
    # Rule 3, the contracted target: its closed row is its neighbourhood (with images standing for
    # sections, the target's own images stand for the target node: its self loop puts them there too).
    around_target = closed[target_node].take(nodes)
    adjacency |= around_target[:, None] & around_target
    adjacency.flat[:: n + 1] = False  # no self loops
    return torch.from_numpy(adjacency.astype(np.float32))


def _section_nodes(graph: PageGraph, slot_nodes: Sequence[int]) -> list[int]:
    """The node of the section each slot's node belongs to (an image's section, a section itself)."""
    sections = [graph.nodes[node].section for node in slot_nodes]
    if None in sections:
        raise ValueError(
            f"page {graph.page_id!r}: slot node {slot_nodes[sections.index(None)]} is the page node, which belongs "
            "to no section; images_stand_for_sections takes image slots only"
        )
    return [graph.section_nodes[section] for section in sections]


__all__ = ["neighbor_adjacency"]
