"""The token layout of one example, from ids: where each piece goes, how the text budget is split (`layout_ids`),
and where SA-TE puts each neighbour (`sa_te_groups`): a section's texts, then the placeholders of its images.

Layout (one example, training; `|` separates token segments). SA-E and CA-E:

    </s> | " Section:" | " <section title>: <section text after its first sentence>"
         | <neighbor> x text_neighbor_num_tokens per text slot        (SA-E only)
         | <neighbor> x image_neighbor_num_tokens per real image slot (SA-E only)
         | " Summary:" | " <summary>" </s>

SA-TE (neighbour texts as tokens; each image's placeholders right after its own section's text):

    </s> | " Section:" | " <section title>: <section text after its first sentence>"
         | " <caption of a target image>" ... | <neighbor> x image_neighbor_num_tokens per real target image
         | [when anything follows] " Context:" | [when selected] " <page description>"
         | per other section, in neighbour order: [when selected] " <its text>" | " <its images' captions>" ...
         |                                        | <neighbor> x image_neighbor_num_tokens per real image of it
         | " Summary:" | " <summary>" </s>

    labels: -100 everywhere except " <summary>" </s>

With a bridge (`neighbor_bridge` `"perceiver"` / `"qformer"`) the model compresses all of an example's neighbour
embeddings into `bridge_num_latents` tokens: SA-E writes `<neighbor> x bridge_num_latents` after the target text,
SA-TE the same block after its last section group (just before " Summary:", since the latents mix every image),
and an example without any real bridged neighbour gets none. The input length no longer grows with the neighbour
count.

For generation the example stops after " Summary:". Truncation (`max_source_length`) cuts texts only, from their
end, never placeholders or prompts: the target text keeps what the SA-TE neighbour texts leave free and at least
half of the text budget, the neighbour texts share the rest in slot order; an image's placeholders stay whole even
when its section's text is cut to nothing. The summary (`max_target_length` with eos) is last. This file receives
ids: tokenising (and the token store) is the processor's job.

SA-TE groups.

SA-TE gives the neighbour texts as raw tokens and only the images as embeddings (`<neighbor>` placeholders). As
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

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .neighbor_selection import NeighborSelection
from .page_graph import PageGraph


class SectionGroup(NamedTuple):
    """One section's neighbours in the SA-TE sequence.

    Args:
        section (`int` or `None`): the section, or `None` for the page description.
        texts (`tuple[int]`): positions in `NeighborSelection.texts` of the group's texts (the section's text,
            its images' captions), in slot order.
        images (`tuple[int]`): positions in `NeighborSelection.image_nodes` of the group's images, in slot order.
    """

    section: int | None
    texts: tuple[int, ...]
    images: tuple[int, ...]


def sa_te_groups(graph: PageGraph, section_idx: int, selection: NeighborSelection) -> list[SectionGroup]:
    """The SA-TE groups of `selection` (the neighbours of target `section_idx`), in sequence order (module
    docstring): the target's group always first, then each group that holds a text or an image."""
    parent = graph.section_parents[section_idx]

    def position(section: int | None) -> tuple:
        """Where a section's group goes: the target, the page description, the parent, then by `(|s - t|, s)`
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


def layout_ids(
    prompts: Mapping[str, np.ndarray],
    target: np.ndarray,
    summary: np.ndarray | None,
    neighbor_texts: Sequence[np.ndarray],
    num_placeholders: int,
    placeholders: Callable[[int], np.ndarray],
    max_source_length: int,
    max_target_length: int,
    groups: Sequence[SectionGroup] | None = None,
    image_mask: Sequence[int] = (),
    image_tokens: int = 0,
    bridged: bool = False,
    where: str = "",
) -> tuple[np.ndarray, int]:
    """`input_ids` of one example as an int64 array, and the source length (tokens before the summary; -1 for
    generation), laid out as the module docstring says.

    Args:
        prompts (`Mapping[str, np.ndarray]`): ids of `"bos"`, `"eos"`, `"context"`, `"section"`, `"summary"`, and
            `"fixed_length"` (`int`: bos + section + summary prompts).
        target (`np.ndarray`): ids of the target's input text.
        summary (`np.ndarray`, *optional*): ids of the summary; `None` for generation (the example stops after the
            summary prompt).
        neighbor_texts (`Sequence[np.ndarray]`): ids of the SA-TE neighbour texts, in slot order (empty otherwise).
        num_placeholders (`int`): every neighbour placeholder of the example.
        placeholders (`Callable[[int], np.ndarray]`): `count` placeholder ids.
        max_source_length (`int`), max_target_length (`int`): the budgets.
        groups (`Sequence[SectionGroup]`, *optional*): SA-TE's groups (`sa_te_groups`); `None` for SA-E and CA-E
            (placeholders after the target text).
        image_mask (`Sequence[int]`): per image slot, whether it gets placeholders (SA-TE).
        image_tokens (`int`): placeholders per real image (SA-TE).
        bridged (`bool`): a bridge's latents stand for every neighbour (SA-TE: the `num_placeholders` in one block
            after the last group, none per image).
        where (`str`): the example (page and section), named in errors.
    """
    # SA-TE: " Context:" opens whatever follows the target's own group (texts or real images).
    has_context = groups is not None and any(
        group.texts or any(image_mask[j] for j in group.images) for group in groups[1:]
    )
    fixed = prompts["fixed_length"] + num_placeholders + (len(prompts["context"]) if has_context else 0)
    budget = max_source_length - fixed
    if budget < 0:
        raise ValueError(
            f"{where}: max_source_length={max_source_length} cannot hold the prompt and {num_placeholders} "
            f"neighbour placeholders ({fixed} tokens); raise max_source_length or lower the neighbour budgets"
        )
    # Split the text budget: the target keeps everything the neighbour texts leave free, and at
    # least half when both are long; neighbour texts then fill the rest in slot order.
    neighbor_length = sum(map(len, neighbor_texts))
    if len(target) + neighbor_length > budget:
        target = target[: max(budget // 2, budget - neighbor_length)]
        budget -= len(target)
        kept = []
        for text_ids in neighbor_texts:
            kept.append(text_ids[:budget])  # empty once the budget is spent
            budget -= len(kept[-1])
        neighbor_texts = kept
    if groups is None:
        body = [prompts["section"], target, placeholders(num_placeholders)]
    else:
        # Each group's texts, then the placeholders of its real images.
        body = [prompts["section"], target]
        for k, group in enumerate(groups):
            if k == 1 and has_context:
                body.append(prompts["context"])
            body += [neighbor_texts[i] for i in group.texts]
            if not bridged:
                body.append(placeholders(image_tokens * sum(image_mask[j] for j in group.images)))
        if bridged:  # the latents mix every image: one block after all the sections
            body.append(placeholders(num_placeholders))
    if summary is None:
        return np.concatenate([prompts["bos"], *body, prompts["summary"]]), -1
    summary = summary[: max_target_length - 1]
    input_ids = np.concatenate([prompts["bos"], *body, prompts["summary"], summary, prompts["eos"]])
    return input_ids, len(input_ids) - len(summary) - 1


__all__ = ["SectionGroup", "layout_ids", "sa_te_groups"]
