"""The neighbour tensors of one example: text embeddings from an embedding cache, and image slots as cached
embeddings or as pixels, with their masks. The processor decides which neighbours (`neighbor_selection`) and
where they go (`token_layout`); this file turns the selected ones into tensors.

Images: only files the image folder resolves count, and in-memory images of page dicts (PIL images or encoded
bytes); the others are masked, as are images that cannot be decoded (one warning naming the file). With an
embedding cache, an image is looked up by its file bytes (a PIL image by its PNG bytes; a fetched file by the hash
its manifest recorded). With raw pixels, an example with no image file at all gets a zero-stride zero view (no
3 MB memset per example at 224 px; treat it as read-only).

This file is Hub-loadable: it imports installed packages and same-folder files only.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .image_source import ImageDecodeError, ImageFolder, image_bytes, load_rgb_image, pixel_values

# Shared zero scalar behind the broadcast pixel block of examples without any image file.
_ZERO = torch.zeros(())


def _long_tensor(values: list[int]) -> torch.Tensor:
    # Through numpy: about twice as fast as torch.tensor(list) for the few values of a mask.
    return torch.from_numpy(np.array(values, dtype=np.int64))


def text_embeddings(texts: Sequence[str], embedding_cache, where: str = "") -> dict[str, torch.Tensor]:
    """`text_neighbor_embeds` `(Nt, Dt)` and `text_neighbor_mask` `(Nt,)` of `texts` from `embedding_cache`; a text
    the cache lacks is a `KeyError` naming the example (`where`) and the text."""
    num = len(texts)
    get_text = embedding_cache.get_text
    embeds = [get_text(text) for text in texts]
    for text, embed in zip(texts, embeds):
        if embed is None:
            raise KeyError(
                f"{where}: the embedding cache has no entry for text neighbour {text[:60]!r}...; precompute "
                "embeddings for the texts of `select_neighbors`"
            )
    if embeds:
        try:  # the cache returns tensors: one stack
            values = torch.stack(embeds)
        except TypeError:
            values = torch.stack([torch.as_tensor(embed) for embed in embeds])
        values = values.reshape(num, -1).to(torch.float32)
    else:  # a cache of a Hugging Face text encoder has its own text width
        width = getattr(embedding_cache, "text_embed_dim", None) or embedding_cache.embed_dim
        values = torch.zeros((0, int(width)))
    return {"text_neighbor_embeds": values, "text_neighbor_mask": torch.from_numpy(np.ones(num, dtype=np.int64))}


def image_sources(image_refs: Sequence[Any], folder: ImageFolder) -> list[tuple[int, Any, str | None]]:
    """`(slot, path or in-memory image, the fetcher's sha256 or None)` of each image slot that has something to
    read: a reference the folder resolves to a file, or an in-memory image."""
    sources = []
    for j, ref in enumerate(image_refs):
        if ref is None:
            continue
        if isinstance(ref, (str, os.PathLike)):
            path = folder.resolve(ref)
            if path is not None:
                sources.append((j, path, folder.sha256(ref)))
        else:
            sources.append((j, ref, None))
    return sources


def image_embeddings(sources: Sequence[tuple[int, Any, str | None]], num: int,
                     embedding_cache) -> tuple[dict[str, torch.Tensor], list[int]]:
    """`image_neighbor_embeds` `(Ni, Di)` and `image_neighbor_mask` `(Ni,)` from `embedding_cache` (a slot the cache
    lacks is masked), and the mask as a list."""
    mask = [0] * num
    found = {}
    for j, source, sha256 in sources:
        try:
            # The cache keys images by their file bytes: a PIL image by its PNG bytes (lossless); a
            # fetched file by the hash its manifest recorded (no need to read it again).
            if sha256 is not None:
                embed = embedding_cache.get_image(source, sha256=sha256)
            else:
                embed = embedding_cache.get_image(source if isinstance(source, str) else image_bytes(source))
        except OSError:
            embed = None
        if embed is not None:
            found[j] = torch.as_tensor(embed, dtype=torch.float32).reshape(-1)
    dim = next(iter(found.values())).shape[0] if found else int(embedding_cache.embed_dim)
    values = torch.zeros((num, dim))
    for j, embed in found.items():
        values[j] = embed
        mask[j] = 1
    return {"image_neighbor_embeds": values, "image_neighbor_mask": _long_tensor(mask)}, mask


def image_pixels(sources: Sequence[tuple[int, Any, str | None]], num: int, image_processor, size: tuple[int, int],
                 zero_pixels: dict) -> tuple[dict[str, torch.Tensor], list[int]]:
    """`image_neighbor_pixel_values` `(Ni, 3, H, W)` and `image_neighbor_mask` `(Ni,)` (an image that cannot be
    decoded is masked, with a warning), and the mask as a list. `zero_pixels` keeps one zero view per shape."""
    mask = [0] * num
    height, width = size
    loaded = []
    for j, source, _ in sources:
        try:
            loaded.append((j, load_rgb_image(source)))
        except ImageDecodeError as err:  # masked like a missing file, as the cache builder skips it
            warnings.warn(f"{err}; masking it")
    if loaded:
        values = torch.zeros((num, 3, height, width))
        pixels = pixel_values(image_processor, [image for _, image in loaded])
        for (j, _), pixel in zip(loaded, pixels):
            values[j] = pixel
            mask[j] = 1
    else:
        # Most sections have no image file: a zero-stride zero view instead of a fresh
        # (Ni, 3, H, W) buffer (3 MB of memset per example at 224 px). Writes to it fail (all its
        # elements share one memory location), so one view per shape serves every example.
        values = zero_pixels.get((num, height, width))
        if values is None:
            values = zero_pixels[(num, height, width)] = _ZERO.expand(num, 3, height, width)
    return {"image_neighbor_pixel_values": values, "image_neighbor_mask": _long_tensor(mask)}, mask


def pixel_size(image_processor) -> tuple[int, int]:
    """`(height, width)` of the pixels `image_processor` produces (its crop, or its size)."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None:
        return int(crop["height"]), int(crop["width"])
    size = image_processor.size
    if size.get("height") is not None:
        return int(size["height"]), int(size["width"])
    return int(size["shortest_edge"]), int(size["shortest_edge"])


__all__ = ["image_embeddings", "image_pixels", "image_sources", "pixel_size", "text_embeddings"]
