"""The model card (README.md) of an exported MMGL model, generated from the run."""
from __future__ import annotations

from pathlib import Path


def write_model_card(output_dir, model_args, mmgl_args, data_args, metrics):
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [mmgl, multimodal-graph-learning, wikiweb2m, opt]", "---",
        "# MMGL section summarizer", "",
        "Writes the first sentence of a Wikipedia section from its multimodal neighbours (WikiWeb2M section "
        "summarization; Multimodal Graph Learning, Yoon et al. 2023).", "",
        "## Design", "",
        f"- base model: `{model_args.model_name_or_path or 'from scratch: ' + str(model_args.config_overrides)}`",
        f"- context: `{mmgl_args.context}`; neighbour encoding: `{mmgl_args.neighbor_encoding}`; "
        f"graph position encoding: `{mmgl_args.position_encoding}`; tuning: `{mmgl_args.tuning}`",
        f"- neighbour budgets: {mmgl_args.max_text_neighbors} texts, {mmgl_args.max_image_neighbors} images; "
        f"{mmgl_args.text_neighbor_num_tokens}/{mmgl_args.image_neighbor_num_tokens} tokens each",
        f"- frozen encoder: open_clip `{mmgl_args.neighbor_encoder_name}` ({mmgl_args.neighbor_encoder_pretrained})", "",
        "## Data", "", f"WikiWeb2M records: `{data_args.train_files}` "
        f"({'study split' if data_args.use_study_split else 'official split field'}).", "",
        "## Metrics", "", "| metric | value |", "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if isinstance(v, float)], "",
        "## Use", "", "```python", "from transformers import pipeline",
        f'summarize = pipeline("mmgl-summarization", model="{Path(output_dir).name}", trust_remote_code=True)',
        'summarize({"page": page, "section": 2})', "```", "",
    ]
    (Path(output_dir) / "README.md").write_text("\n".join(lines))



__all__ = ["write_model_card"]
