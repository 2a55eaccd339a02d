"""The page graph projected onto an example's neighbour slots: `neighbor_adjacency`.

Nodes are the slots `[text slots..., image slots...]`. Each slot stands for a page-graph node: the
page node (description), a section node (its text) or an image node (its caption as a text slot, its
pixels as an image slot). Two real slots `a != b` are adjacent when their nodes are (1) the same node
(an image's caption slot and its image slot), (2) adjacent in the page graph, or (3) both adjacent to
the target section node. The target is the node being summarised: it is the prompt, not a slot, so it
is contracted and its graph neighbours become pairwise adjacent. Masked (missing) and padding slots are
isolated; there are no self loops.

Without text slots (SA-TE: the texts are tokens of the prompt), an image node has no other slot to meet:
its caption and its section's text are tokens, placed right before its placeholders (`token_layout`). There
each image slot stands for its section (`images_stand_for_sections`), and the same three rules apply to
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
    adjacency = np.zeros((n, n), dtype=np.float32)
    if not any(slot_mask):
        return torch.from_numpy(adjacency)
    if images_stand_for_sections:
        slot_nodes = _section_nodes(graph, slot_nodes)
    # Set lookups in the page graph's adjacency lists, for the few slots at hand: O(slots^2) whatever the page's
    # size (a dense node x node matrix would cost O(nodes^2) for a page of thousands of sections).
    neighbors = graph.neighbors
    # Rule 3, the contracted target: its neighbourhood (with images standing for sections, the target's own images
    # stand for the target node itself, so it counts as its own neighbour).
    around = neighbors[target_node] | {target_node}
    real = [(i, slot_nodes[i], slot_nodes[i] in around) for i in range(n) if slot_mask[i]]  # masked slots: isolated
    for k, (i, a, near_a) in enumerate(real):
        adjacent_to_a = neighbors[a]
        for j, b, near_b in real[k + 1 :]:
            if a == b or b in adjacent_to_a or (near_a and near_b):  # rules 1, 2 and 3; no self loops
                adjacency[i, j] = adjacency[j, i] = 1.0
    return torch.from_numpy(adjacency)


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
