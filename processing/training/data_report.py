"""The data report of a run (`data_report.json` and a startup log): what the model will actually see, so that
truncation, masked images and duplicated neighbours are visible instead of silent.

Per split it reports the samples, and over the first `max_examples` of them (examples are built exactly as in
training, with the run's processor, embedding cache and image folder): how many sources and targets were truncated,
the mean and maximum input tokens, the mean and maximum neighbour tokens (the LM token vectors the neighbours become:
placeholders in the sequence, or cross-attention keys with `ca_e`; constant with a perceiver / qformer bridge), the
real and masked image slots, and the neighbour texts dropped as duplicates.
Truncation is found by building the same example once more with unbounded lengths and comparing.
"""
from __future__ import annotations

import copy
import json
import os

from processing.data.sample_index import PageGraphIndex


def _unbounded(processor):
    """A shallow copy of `processor` (same tokenizer, token cache and prompts) that never truncates."""
    clone = copy.copy(processor)
    clone.max_source_length = clone.max_target_length = 10**9
    return clone


def neighbor_tokens(processor, example: dict) -> int:
    """How many LM token vectors the neighbours of `example` become: its `<neighbor>` placeholders (SA-E, SA-TE),
    or with `ca_e` the keys the cross-attention reads (per real neighbour, or a bridge's latents)."""
    if processor.neighbor_encoding != "ca_e":
        return int((example["input_ids"] == processor.neighbor_token_id).sum())
    texts = int(example["text_neighbor_mask"].sum()) if "text_neighbor_mask" in example else 0
    images = int(example["image_neighbor_mask"].sum()) if "image_neighbor_mask" in example else 0
    if getattr(processor, "neighbor_bridge", "linear") != "linear":
        return processor.bridge_num_latents if texts + images else 0
    return texts * processor.text_neighbor_num_tokens + images * processor.image_neighbor_num_tokens


def split_report(index: PageGraphIndex, processor, embedding_cache=None, image_dir=None, max_examples: int = 1000) -> dict:
    """The report of one split (see the module docstring)."""
    unbounded = _unbounded(processor)
    report = {"samples": len(index), "examples_checked": 0, "truncated_source": 0, "truncated_target": 0,
              "mean_input_tokens": None, "max_input_tokens": 0, "mean_neighbor_tokens": None, "max_neighbor_tokens": 0,
              "real_images": 0, "masked_images": 0, "duplicate_texts_dropped": 0}
    total_tokens = total_neighbor_tokens = 0
    for i in range(min(len(index), max_examples)):
        graph, section = index[i]
        built = processor.build_example(graph, section, embedding_cache=embedding_cache, image_dir=image_dir)
        full = unbounded.build_example(graph, section, embedding_cache=embedding_cache, image_dir=image_dir)
        target, full_target = int((built["labels"] != -100).sum()), int((full["labels"] != -100).sum())
        source, full_source = len(built["labels"]) - target, len(full["labels"]) - full_target
        report["truncated_source"] += full_source > source
        report["truncated_target"] += full_target > target
        report["max_input_tokens"] = max(report["max_input_tokens"], source)
        total_tokens += source
        neighbors = neighbor_tokens(processor, built)
        report["max_neighbor_tokens"] = max(report["max_neighbor_tokens"], neighbors)
        total_neighbor_tokens += neighbors
        mask = built.get("image_neighbor_mask")
        if mask is not None:
            report["real_images"] += int(mask.sum())
            report["masked_images"] += int(len(mask) - mask.sum())
        dropped = graph.memo.get("duplicates_dropped", {})
        report["duplicate_texts_dropped"] += sum(n for (s, *_), n in dropped.items() if s == section)
        report["examples_checked"] += 1
    if report["examples_checked"]:
        report["mean_input_tokens"] = round(total_tokens / report["examples_checked"], 2)
        report["mean_neighbor_tokens"] = round(total_neighbor_tokens / report["examples_checked"], 2)
    return report


def data_report(indices: dict, processor, embedding_cache=None, image_dir=None, max_examples: int = 1000) -> dict:
    """`{split: split_report}` for every split with samples, plus the design the inputs were built for."""
    report = {name: split_report(index, processor, embedding_cache, image_dir, max_examples)
              for name, index in indices.items() if len(index)}
    report["design"] = {"context": processor.context, "neighbor_encoding": processor.neighbor_encoding,
                        "neighbor_bridge": getattr(processor, "neighbor_bridge", "linear"),
                        "max_source_length": processor.max_source_length,
                        "max_target_length": processor.max_target_length}
    return report


def write_data_report(report: dict, output_dir: str | os.PathLike) -> str:
    """Write `data_report.json` into `output_dir`; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "data_report.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return path


def report_lines(report: dict) -> list[str]:
    """One log line per split."""
    lines = []
    for name, split in report.items():
        if name == "design":
            continue
        lines.append(
            f"data {name}: {split['samples']} samples; of {split['examples_checked']} checked, "
            f"{split['truncated_source']} sources and {split['truncated_target']} targets truncated, "
            f"input tokens mean {split['mean_input_tokens']} max {split['max_input_tokens']}, "
            f"neighbour tokens mean {split['mean_neighbor_tokens']} max {split['max_neighbor_tokens']}, "
            f"images {split['real_images']} real / {split['masked_images']} masked, "
            f"{split['duplicate_texts_dropped']} duplicated neighbour texts dropped")
    return lines


__all__ = ["data_report", "neighbor_tokens", "report_lines", "split_report", "write_data_report"]
