"""The model card (README.md) of an exported MMGL model, generated from the run: base model, every design choice,
the actual frozen encoder, training setup, data, metrics, intended use, limitations and how to load it."""
from __future__ import annotations

import json
from pathlib import Path

DESIGN_FIELDS = ("context", "neighbor_encoding", "position_encoding", "tuning", "max_text_neighbors",
                 "max_image_neighbors", "text_neighbor_num_tokens", "image_neighbor_num_tokens",
                 "cross_attention_interval", "lpe_k", "gnn_type", "gnn_num_layers", "first_stage_steps")


def encoder_description(name: str | None, pretrained: str | None, config: dict | None) -> str:
    """``open_clip `ViT-B-32`, weights `openai` `` or ``custom config {...}, random init (seeded)``."""
    if name is None and config is None:
        return "none (no neighbour is given as an embedding)"
    weights = f"weights `{pretrained}`" if pretrained not in (None, "", "none") else "random init (seeded)"
    custom = f", custom config `{json.dumps(config, sort_keys=True)}`" if config is not None else ""
    return f"open_clip `{name}`, {weights}{custom}"


def write_model_card(output_dir, model_args, mmgl_args, data_args, metrics, training_args=None,
                     encoder: tuple[str | None, str | None, dict | None] | None = None,
                     sample_counts: dict[str, int] | None = None, license: str = "other") -> str:
    """Writes ``<output_dir>/README.md``; returns its text.

    Args:
        output_dir (`str`): the Hub folder.
        model_args, mmgl_args, data_args: the run's arguments (base model, design, data).
        metrics (`dict`): final metrics (floats go to the table).
        training_args (`TrainingArguments`, *optional*): learning rate, steps, global batch, seed.
        encoder (`tuple`, *optional*): (open_clip name, pretrained or `None`, custom config or `None`) of the
            frozen encoder actually used; defaults to the flags.
        sample_counts (`dict[str, int]`, *optional*): samples per split (``train`` / ``eval`` / ``predict``).
        license (`str`, *optional*, defaults to ``"other"``): the card's license field.
    """
    base = model_args.model_name_or_path or f"from scratch (OPT config `{model_args.config_overrides}`)"
    if encoder is None:
        encoder = (mmgl_args.neighbor_encoder_name, mmgl_args.neighbor_encoder_pretrained, None)
    design = [f"- {name}: `{getattr(mmgl_args, name)}`" for name in DESIGN_FIELDS if hasattr(mmgl_args, name)]
    design += [f"- max_source_length: `{data_args.max_source_length}`; max_target_length: `{data_args.max_target_length}`"]
    text_encoder = []
    if getattr(mmgl_args, "text_neighbor_encoder", None) is not None:
        text_encoder = [f"- frozen text neighbour encoder (Hugging Face): `{mmgl_args.text_neighbor_encoder}`, "
                        f"{mmgl_args.text_neighbor_pooling} pooling, {mmgl_args.text_neighbor_max_length} tokens"]
    training = []
    if training_args is not None:
        world = getattr(training_args, "world_size", 1) or 1
        global_batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world)
        training = [
            "## Training", "",
            f"- learning rate: `{training_args.learning_rate}`; steps: `{training_args.max_steps}`; "
            f"global batch: `{global_batch}` ({training_args.per_device_train_batch_size} per device x "
            f"{training_args.gradient_accumulation_steps} accumulation x {world} processes); seed: `{training_args.seed}`",
            "",
        ]
    counts = sample_counts or {}
    lines = [
        "---", f"license: {license}", "library_name: transformers", "pipeline_tag: text-generation",
        f"base_model: {model_args.model_name_or_path}" if model_args.model_name_or_path else "base_model: null",
        "tags: [mmgl, multimodal-graph-learning, wikiweb2m, opt]", "---",
        "# MMGL section summarizer", "",
        "Writes the first sentence of a Wikipedia section from its multimodal neighbours (WikiWeb2M section "
        "summarization; Multimodal Graph Learning, Yoon et al. 2023).", "",
        "## Design", "", f"- base model: `{base}`", *design,
        f"- frozen neighbour encoder: {encoder_description(*encoder)}",
        *text_encoder, "",
        *training,
        "## Data", "",
        f"- files: `{data_args.train_files}`; split: "
        f"{'the original study split' if data_args.use_study_split else 'the official `split` field'}",
        "- samples: " + ", ".join(f"{split} {counts[split]}" for split in ("train", "eval", "predict") if split in counts),
        "",
        "## Metrics", "", "| metric | value |", "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if isinstance(v, float)], "",
        "## Intended use", "",
        "Research on multimodal graph learning: generating section summaries of Wikipedia-like pages from the "
        "section, its page and its images. Not for factual use: summaries may be wrong or invented.", "",
        "## Limitations", "",
        "- Trained on WikiWeb2M pages only (English Wikipedia); other page kinds are out of distribution.",
        "- Inputs longer than max_source_length are truncated; a model trained on few steps or a small model "
        "from scratch produces poor text; check the metrics above.",
        "- The frozen encoder above must encode the neighbours (the embedding cache or the in-model encoder).", "",
        "## How to load", "", "```python", "from transformers import AutoModel, pipeline",
        f'model = AutoModel.from_pretrained("{Path(output_dir).name}", trust_remote_code=True)',
        f'summarize = pipeline("mmgl-summarization", model="{Path(output_dir).name}", trust_remote_code=True)',
        'summarize({"page": page, "section": 2})', "```", "",
    ]
    text = "\n".join(lines)
    (Path(output_dir) / "README.md").write_text(text)
    return text


__all__ = ["encoder_description", "write_model_card"]
