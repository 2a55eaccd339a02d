"""Batching MMGL examples: pad tokens, neighbour slots and neighbour graphs consistently.

One example (from `MMGLProcessor.build_example`) holds unbatched tensors; see docs/INTERFACE.md.
The collator pads

* `input_ids` with the pad id, `attention_mask` with 0 and `labels` with -100, on the left
  for generation (so every prompt ends where generation starts) and on the right for training;
* text slots to the batch's largest `Nt` and image slots to its largest `Ni`, masks 0;
* `neighbor_adjacency` to `Nt_max + Ni_max` nodes keeping the two blocks contiguous: an
  example's text node `i` stays at `i` and its image node `j` moves to `Nt_max + j`, so node
  `k` means the same kind of slot in every row of the batch. Padding nodes are isolated;
* `neighbor_laplacian_eigenvectors` `(Nt + Ni, k)` the same way, node by node (padding nodes zero).

Only `torch` is imported, so the file can sit in a flat Hub folder next to the processor.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import torch

TOKEN_KEYS = ("input_ids", "attention_mask", "labels")
TEXT_SLOT_KEYS = ("text_neighbor_embeds", "text_neighbor_input_ids", "text_neighbor_mask")
IMAGE_SLOT_KEYS = ("image_neighbor_embeds", "image_neighbor_pixel_values", "image_neighbor_mask")
ADJACENCY_KEY = "neighbor_adjacency"
EIGENVECTORS_KEY = "neighbor_laplacian_eigenvectors"


def _pad_slots(tensors: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Stack `(n_b, *rest)` tensors into `(B, size, *rest)`, zero-filled beyond each `n_b`."""
    first = tensors[0]
    out = first.new_zeros((len(tensors), size) + tuple(first.shape[1:]))
    for b, tensor in enumerate(tensors):
        if tensor.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"example {b}: slot tensor of shape {tuple(tensor.shape)} does not match example 0's "
                f"{tuple(first.shape)} beyond the slot dimension"
            )
        out[b, : tensor.shape[0]] = tensor
    return out


@dataclass
class MMGLDataCollator:
    """Pad a list of MMGL examples into a batch.

    Args:
        pad_token_id (`int`): id used to pad `input_ids`.
        for_generation (`bool`, *optional*, defaults to `False`): pad tokens on the left (for
            `generate`) instead of the right.
        pad_to_multiple_of (`int`, *optional*): round the token length up to a multiple of this.
        label_pad_token_id (`int`, *optional*, defaults to -100): id used to pad `labels`.

    Returns (from `__call__`):
        `dict[str, torch.Tensor]` with `input_ids` / `attention_mask` / `labels` `(B, L)`,
        `text_neighbor_*` `(B, Nt_max, ...)`, `image_neighbor_*` `(B, Ni_max, ...)` and
        `neighbor_adjacency` `(B, Nt_max + Ni_max, Nt_max + Ni_max)`, for the keys the examples have.
    """

    pad_token_id: int
    for_generation: bool = False
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = -100

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        keys = set(examples[0])
        for b, example in enumerate(examples):
            if set(example) != keys:
                raise ValueError(
                    f"example {b} has keys {sorted(example)} but example 0 has {sorted(keys)}; examples of one "
                    "batch must come from one processor configuration"
                )
        if "input_ids" not in keys:
            raise ValueError("examples have no 'input_ids'")
        batch: dict[str, torch.Tensor] = {}
        self._pad_tokens(examples, keys, batch)
        num_text = self._pad_modality(examples, keys, TEXT_SLOT_KEYS, "text_neighbor_mask", batch)
        num_image = self._pad_modality(examples, keys, IMAGE_SLOT_KEYS, "image_neighbor_mask", batch)
        for key, node_dims in ((ADJACENCY_KEY, 2), (EIGENVECTORS_KEY, 1)):
            if key in keys:
                batch[key] = self._pad_nodes(examples, keys, key, node_dims, num_text, num_image)
        handled = set(TOKEN_KEYS) | set(TEXT_SLOT_KEYS) | set(IMAGE_SLOT_KEYS) | {ADJACENCY_KEY, EIGENVECTORS_KEY}
        for key in sorted(keys - handled):
            # Unknown keys are passed through when they stack (same shape in every example).
            try:
                batch[key] = torch.stack([example[key] for example in examples])
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"cannot batch key {key!r}: {err}") from None
        return batch

    def _pad_tokens(self, examples, keys, batch) -> None:
        lengths = [int(example["input_ids"].shape[0]) for example in examples]
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": self.label_pad_token_id}
        for key in TOKEN_KEYS:
            if key not in keys:
                continue
            out = torch.full((len(examples), length), pad_values[key], dtype=torch.long)
            for b, (example, n) in enumerate(zip(examples, lengths)):
                values = example[key]
                if values.shape[0] != n:
                    raise ValueError(f"example {b}: {key!r} has length {values.shape[0]} but input_ids {n}")
                if self.for_generation:
                    out[b, length - n :] = values
                else:
                    out[b, :n] = values
            batch[key] = out

    @staticmethod
    def _pad_modality(examples, keys, slot_keys, mask_key, batch) -> int:
        present = [key for key in slot_keys if key in keys]
        if not present:
            return 0
        if mask_key not in keys:
            raise ValueError(f"examples have {present} but no {mask_key!r}")
        counts = [int(example[mask_key].shape[0]) for example in examples]
        size = max(counts)
        for key in present:
            for b, (example, n) in enumerate(zip(examples, counts)):
                if example[key].shape[0] != n:
                    raise ValueError(f"example {b}: {key!r} has {example[key].shape[0]} slots but {mask_key!r} {n}")
            batch[key] = _pad_slots([example[key] for example in examples], size)
        return size

    @staticmethod
    def _pad_nodes(examples, keys, key: str, node_dims: int, num_text: int, num_image: int) -> torch.Tensor:
        """Pad a per-node tensor whose first `node_dims` dimensions index the slots (adjacency: 2, one vector per
        node: 1) to `num_text + num_image` nodes, keeping the text and image blocks contiguous."""
        size = num_text + num_image
        rest = tuple(examples[0][key].shape[node_dims:])
        out = torch.zeros((len(examples),) + (size,) * node_dims + rest, dtype=torch.float)
        for b, example in enumerate(examples):
            values = example[key]
            nt = int(example["text_neighbor_mask"].shape[0]) if "text_neighbor_mask" in keys else 0
            ni = int(example["image_neighbor_mask"].shape[0]) if "image_neighbor_mask" in keys else 0
            if tuple(values.shape) != (nt + ni,) * node_dims + rest:
                raise ValueError(f"example {b}: {key!r} has shape {tuple(values.shape)} for {nt} text and {ni} image "
                                 f"slots (example 0: {tuple(examples[0][key].shape)})")
            # Text block stays at [0, nt); image block moves to [num_text, num_text + ni).
            rows = torch.cat([torch.arange(nt), num_text + torch.arange(ni)])
            if node_dims == 2:
                out[b, rows.unsqueeze(1), rows.unsqueeze(0)] = values.to(out.dtype)
            else:
                out[b, rows] = values.to(out.dtype)
        return out


__all__ = ["MMGLDataCollator", "TOKEN_KEYS", "TEXT_SLOT_KEYS", "IMAGE_SLOT_KEYS", "ADJACENCY_KEY", "EIGENVECTORS_KEY"]
