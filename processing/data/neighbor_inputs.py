"""What an embedding cache must hold for a data set: the unique neighbour texts and image files its samples select
(`collect_neighbor_inputs`, or lazily `iter_neighbor_inputs`), exactly the keys the processor asks a cache for, by the
one neighbour selection (`processing.neighbor_selection.select_neighbors`) and the one image resolver
(`processing.image_source.ImageFolder`). Build-time only (cache builder, training startup, data reports).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from processing.design_space import has_image_slots, has_text_slots
from processing.image_source import ImageFolder, is_in_memory_image
from processing.neighbor_selection import select_neighbors
from processing.page_graph import PageGraph


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
    """Per sample of `samples` (`(page, section_idx)` pairs, or a `PageGraphIndex`), lazily: its neighbour texts
    (none in SA-TE: there they are raw tokens) and its image files as `(path, sha256 or None)`, exactly what the
    processor asks an embedding cache for under this configuration. Image references with a file, without one and
    in-memory images are counted in `counts["resolved_images"]`, `counts["missing_images"]` and
    `counts["in_memory_images"]`."""
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
    """The unique neighbour texts and image files of `samples` (`iter_neighbor_inputs`), in memory."""
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


def processor_neighbor_inputs(
    processor, samples: Iterable[tuple[Any, int]], image_dir: ImageFolder | str | os.PathLike | None = None
) -> NeighborInputs:
    """The unique neighbour texts and image files of `samples` (`(page, section_idx)` pairs, or a
    `PageGraphIndex`) under `processor`'s configuration: exactly the keys `MMGLProcessor.build_example` asks an
    embedding cache for (`collect_neighbor_inputs`)."""
    return collect_neighbor_inputs(
        samples, processor.context, processor.neighbor_encoding, processor.max_text_neighbors, processor.max_image_neighbors,
        processor.image_folder(image_dir),
    )


def iter_processor_neighbor_inputs(
    processor, samples: Iterable[tuple[Any, int]], image_dir: ImageFolder | str | os.PathLike | None = None,
    counts: dict | None = None,
):
    """`collect_neighbor_inputs` lazily, sample by sample (`iter_neighbor_inputs`): for
    an embedding-cache build over a whole data set without holding its texts in memory."""
    return iter_neighbor_inputs(
        samples, processor.context, processor.neighbor_encoding, processor.max_text_neighbors, processor.max_image_neighbors,
        processor.image_folder(image_dir), counts,
    )


__all__ = [
    "NeighborInputs",
    "collect_neighbor_inputs",
    "iter_neighbor_inputs",
    "iter_processor_neighbor_inputs",
    "processor_neighbor_inputs",
]
