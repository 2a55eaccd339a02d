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

Target-aware graphs (`graph_target_feature="distance"`, issue 23). The contracted target is marked by no
node, so "the child of the target section" cannot be told from any other node next to the target. With this
option each slot also gets `neighbor_target_distances`: the hops from the target to the slot's node in the
page's tree (`target_distances`): parent-child edges, section-image edges, and the page node as the root above
the top-level sections. The tree, not the whole page graph, because in the page graph the page node touches
every section (every section would be two hops away) and section order is what the sequence encoding carries:
in the tree the target's child is 1 hop away, its siblings 2, a child of another section at least 3.

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


# Distances are clamped: TARGET_DISTANCE_CAP means that many hops or more, or unreachable (and masked slots).
# The model's embedding of them (`MMGLConfig.graph_target_feature`) has TARGET_DISTANCE_CAP + 1 rows.
TARGET_DISTANCE_CAP = 7


def target_distances(
    graph: PageGraph,
    target_node: int,
    slot_nodes: Sequence[int],
    slot_mask: Sequence[int],
    images_stand_for_sections: bool = False,
) -> torch.Tensor:
    """Hops from the target to each slot's node in the page's tree (module docstring), clamped to
    `TARGET_DISTANCE_CAP`; masked slots get the cap.

    Args: as `neighbor_adjacency`.

    Returns:
        `torch.LongTensor` of shape `(N,)`.
    """
    if images_stand_for_sections:
        slot_nodes = _section_nodes(graph, slot_nodes)
    distance = {target_node: 0}
    frontier = [target_node]
    tree = _tree_neighbors(graph)
    for hops in range(1, TARGET_DISTANCE_CAP):  # breadth first, no further than the cap
        frontier = [v for u in frontier for v in tree[u] if v not in distance]
        for v in frontier:
            distance.setdefault(v, hops)
        if not frontier:
            break
    return torch.tensor(
        [distance.get(node, TARGET_DISTANCE_CAP) if real else TARGET_DISTANCE_CAP
         for node, real in zip(slot_nodes, slot_mask)],
        dtype=torch.long,
    )


def _tree_neighbors(graph: PageGraph) -> dict[int, list[int]]:
    """The page's tree as adjacency lists (parent-child, section-image, page node above top-level sections);
    memoised on the graph."""
    tree = graph.memo.get("tree_neighbors")
    if tree is None:
        tree = {u: [] for u in range(graph.num_nodes)}
        edges = list(graph.edges.get("parent_child", ())) + list(graph.edges.get("section_image", ()))
        edges += [(graph.page_node, node) for node, parent in zip(graph.section_nodes, graph.section_parents)
                  if parent < 0]
        for u, v in edges:
            if u != v:
                tree[u].append(v)
                tree[v].append(u)
        graph.memo["tree_neighbors"] = tree
    return tree


def _section_nodes(graph: PageGraph, slot_nodes: Sequence[int]) -> list[int]:
    """The node of the section each slot's node belongs to (an image's section, a section itself)."""
    sections = [graph.nodes[node].section for node in slot_nodes]
    if None in sections:
        raise ValueError(
            f"page {graph.page_id!r}: slot node {slot_nodes[sections.index(None)]} is the page node, which belongs "
            "to no section; images_stand_for_sections takes image slots only"
        )
    return [graph.section_nodes[section] for section in sections]


__all__ = ["TARGET_DISTANCE_CAP", "neighbor_adjacency", "target_distances"]
