"""The model card (README.md) of an exported MMGL model, built with `huggingface_hub.ModelCard` from the run's real
state: the exported model's own config and processor (only the settings its design uses), the run record saved in
`trainer_state.json` (training setup, whole-run loss, resumes; `run_record.py`), the decoding settings, the data
actually read, and the metrics with the implementation that produced them. `ModelCard.load` reads its metadata back:
`base_model`, `datasets`, `metrics`, `model-index`, `license` (+ name and link), `pipeline_tag`, `tags`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from processing.atomic_write import atomic_write_bytes
from processing.design_space import has_image_slots, has_text_slots

# facebook/opt-* weights come under Meta's OPT license (the Hub lists it as "other").
OPT_LICENSE = ("other", "opt-175b-license",
               "https://github.com/facebookresearch/metaseq/blob/main/projects/OPT/MODEL_LICENSE.md")
WIKIWEB2M_URL = "https://github.com/google-research-datasets/wit/blob/main/wikiweb2m.md"
# Metric key suffix -> (model-index metric type, display name).
MODEL_INDEX_METRICS = {"bleu4": ("bleu", "BLEU-4"), "rougeL": ("rouge", "ROUGE-L"), "cider": ("cider", "CIDEr")}
SPLITS = {"eval": "validation", "predict": "test"}


def encoder_description(name: str | None, pretrained: str | None, config: dict | None) -> str:
    """The encoder as the card names it (markdown), e.g. "open_clip `ViT-B-32`, weights `openai`", or with its custom
    config and "random init (seeded)"."""
    if name is None and config is None:
        return "none (no neighbour is given as an embedding)"
    weights = f"weights `{pretrained}`" if pretrained not in (None, "", "none") else "random init (seeded)"
    custom = f", custom config `{json.dumps(config, sort_keys=True)}`" if config is not None else ""
    return f"open_clip `{name}`, {weights}{custom}"


def card_license(base_model: str | None, given: str | None = None) -> tuple[str, str | None, str | None]:
    """(license, license_name, license_link): `given` (an SPDX id) when set, else the base model's (OPT: Meta's
    OPT license), else `other` / `unspecified` (weights trained from scratch, no --license)."""
    if given:
        return given, None, None
    if base_model and base_model.split("/")[-1].lower().startswith("opt-"):
        return OPT_LICENSE
    return "other", "unspecified", None


def base_model_of(model_name_or_path: str | None) -> str | None:
    """The Hub base model of a run started from `model_name_or_path`: a hub id itself; a local folder's own
    recorded base (its card's `base_model`, or the run record of its `trainer_state.json`); `None` from scratch."""
    if not model_name_or_path:
        return None
    folder = Path(os.path.expanduser(model_name_or_path))
    if not folder.exists():
        return model_name_or_path
    from processing.training.run_record import read_run_record, read_trainer_state

    for candidate in (folder, folder.parent / "base_model"):
        readme = candidate / "README.md"
        if readme.is_file():
            try:
                base = ModelCard.load(readme).data.base_model
            except Exception:  # a README that is not a card says nothing about the base
                base = None
            if base:
                return base if isinstance(base, str) else base[0]
        record = read_run_record(read_trainer_state(candidate))
        if record and record.get("arguments", {}).get("base_model"):
            return record["arguments"]["base_model"]
    return None


@dataclass
class CardInputs:
    """What the card is built from.

    Args:
        config (`dict`): the exported model's `config.json`.
        processor (`dict | None`): its `processor_config.json`.
        record (`dict | None`): the run record (`run_record.read_run_record`) of the training run, `None` when the
            model's folder holds none.
        trainer_state (`dict | None`): `trainer_state.json` of the training run.
        metrics (`dict`): the metrics to report (`eval_*` / `predict_*`), measured by this run or recorded by the
            run that trained the model (`metrics_source` says which).
        generation (`dict`): the decoding settings the metrics used (`generation.reported_settings`).
        data (`dict`): `files`, `generated` (pages from the bundled generator, not WikiWeb2M), `study_split`,
            `samples` (per split).
        folder_name (`str`): the export folder's name; `hub_model_id` the Hub id when pushed.
    """

    config: dict
    processor: dict | None
    record: dict | None
    trainer_state: dict | None
    metrics: dict
    generation: dict
    data: dict
    folder_name: str
    hub_model_id: str | None = None
    metrics_source: str = "this run"
    license: str | None = None
    metrics_implementation: dict = field(default_factory=dict)


def design_lines(config: dict, processor: dict | None) -> list[str]:
    """The design settings the exported model uses, and only those."""
    processor = processor or {}
    encoding, context = processor.get("neighbor_encoding"), processor.get("context")
    mode = config.get("neighbor_mode", "none")
    lines = [f"- context: `{context}`; neighbour encoding: `{encoding}`"]
    texts = mode != "none" and encoding is not None and has_text_slots(encoding, context)
    images = mode != "none" and context is not None and has_image_slots(context)
    if texts:
        lines.append(f"- text neighbours: up to `{config.get('max_text_neighbors')}`, "
                     f"`{config.get('text_neighbor_num_tokens')}` tokens each")
    if images:
        lines.append(f"- image neighbours: up to `{config.get('max_image_neighbors')}`, "
                     f"`{config.get('image_neighbor_num_tokens')}` tokens each")
    bridge = config.get("neighbor_bridge", "linear")
    if mode != "none" and bridge != "linear":
        name = {"perceiver": "Perceiver Resampler (Flamingo, IDEFICS' module)",
                "qformer": "Q-Former (BLIP-2)"}.get(bridge, bridge)
        read = "keys and values of the cross-attention" if mode == "cross_attention" else "tokens in the sequence"
        lines.append(f"- neighbour bridge: `{bridge}`, a {name} of `{config.get('bridge_num_layers')}` layers: every "
                     f"example's neighbours become `{config.get('bridge_num_latents')}` {read}")
    position = config.get("position_encoding", "none")
    if mode != "none":
        detail = {"laplacian": f", `{config.get('lpe_k')}` eigenvectors",
                  "gnn": f", `{config.get('gnn_type')}` x `{config.get('gnn_num_layers')}` layers"}.get(position, "")
        if config.get("graph_target_feature", "none") != "none":
            detail += f", target-aware (`{config['graph_target_feature']}` to the target section)"
        lines.append(f"- graph position encoding: `{position}`{detail}")
    if mode == "cross_attention":
        start = config.get("alpha_initializer", "zeros")
        gating = ("ungated" if not config.get("cross_attention_gating", True)
                  else "tanh gates closed at init" if start == "zeros" else f"tanh gates initialised with `{start}`")
        lines.append(f"- gated cross-attention: a block every `{config.get('cross_attention_interval')}` layers "
                     f"({gating})")
    if mode != "none":
        cached = config.get("embedding_cache_encoder") or {}
        name = config.get("neighbor_encoder_name") or cached.get("name")
        pretrained = config.get("neighbor_encoder_pretrained") if config.get("neighbor_encoder_name") or \
            config.get("neighbor_encoder_config") else cached.get("pretrained")
        custom = config.get("neighbor_encoder_config") or cached.get("config")
        lines.append(f"- frozen neighbour encoder: {encoder_description(name, pretrained, custom)}")
        if texts and config.get("text_neighbor_encoder"):
            lines.append(f"- frozen text neighbour encoder (Hugging Face): `{config['text_neighbor_encoder']}`, "
                         f"{config.get('text_neighbor_pooling')} pooling, {config.get('text_neighbor_max_length')} "
                         "tokens")
    lines.append(f"- max_source_length: `{processor.get('max_source_length')}`; max_target_length: "
                 f"`{processor.get('max_target_length')}`")
    return lines


def tuning_lines(config: dict, record: dict | None) -> tuple[str | None, list[str]]:
    """(tuning, lines): what trained and, for PEFT, its settings as exported."""
    mmgl = ((record or {}).get("arguments") or {}).get("mmgl") or {}
    tuning = mmgl.get("tuning")
    virtual = config.get("virtual_tokens", "none")
    if tuning is None and virtual != "none":
        tuning = virtual
    if tuning is None:
        return None, ["- tuning: not recorded (the model's folder holds no run record)"]
    lines = [f"- tuning: `{tuning}`"]
    if tuning == "lora":
        lines.append(f"- LoRA: rank `{mmgl.get('lora_r')}`, alpha `{mmgl.get('lora_alpha')}`, on the decoder "
                     "self-attention (q, k, v, out); merged into these weights (no adapter to apply)")
    elif tuning in ("prefix", "prompt"):
        lines.append(f"- {tuning} tuning: `{config.get('num_virtual_tokens')}` virtual tokens, applied by the model "
                     "itself (`MMGLConfig.virtual_tokens`), exactly as peft applied them in training")
    elif tuning == "flamingo":
        lines.append("- flamingo: only the gated cross-attention blocks, neighbour projectors and position encoding "
                     "trained; OPT frozen")
    if tuning in ("lora", "prefix", "prompt"):
        lines.append("- the MMGL modules (neighbour projectors and, where the design has them, position encoding and "
                     "gated cross-attention) trained in full (peft `modules_to_save`)")
    if mmgl.get("first_stage_steps"):
        lines.append(f"- first stage: `{mmgl['first_stage_steps']}` steps training only the MMGL modules")
    return tuning, lines


def training_lines(record: dict | None, trainer_state: dict | None, train_samples: int | None) -> list[str]:
    """The training setup of the run that trained the model, from its own record (not the exporting command)."""
    if not record or not trainer_state:
        return ["- not recorded: the model's folder holds no run record (trainer_state.json)"]
    arguments = record.get("arguments", {})
    training, world = arguments.get("training", {}), int(arguments.get("world_size", 1) or 1)
    per_device, accumulation = training.get("per_device_train_batch_size"), training.get("gradient_accumulation_steps")
    global_batch = per_device * accumulation * world if per_device and accumulation else None
    step = trainer_state.get("global_step", 0)
    lines = [f"- steps: `{step}` (of max_steps `{trainer_state.get('max_steps')}`), epochs: "
             f"`{round(trainer_state.get('epoch') or 0, 3)}`; learning rate `{training.get('learning_rate')}` "
             f"(`{training.get('lr_scheduler_type')}`, warmup `{training.get('warmup_steps')}` steps); seed "
             f"`{training.get('seed')}`",
             f"- global batch: `{global_batch}` ({per_device} per device x {accumulation} accumulation x {world} "
             "processes)"]
    if global_batch and train_samples and train_samples < global_batch:
        lines.append(f"- the training set ({train_samples} samples) is smaller than the global batch: every optimizer "
                     f"step covers one epoch of {train_samples} samples, not {global_batch}")
    if step and record.get("loss_sum") is not None:
        lines.append(f"- training loss over the whole run: `{record['loss_sum'] / step:.4f}`")
    for resume in record.get("resumes", []):
        lines.append(f"- resumed at step `{resume.get('step')}` from `{resume.get('checkpoint')}`")
    return lines


def data_description(data: dict) -> str:
    if data.get("generated"):
        return ("generated sample pages in the WikiWeb2M format (`processing/data/sample_data.py`), not Wikipedia: the "
                "metrics say nothing about real pages")
    return f"WikiWeb2M pages ([WikiWeb2M]({WIKIWEB2M_URL}), English Wikipedia)"


def build_model_card(inputs: CardInputs) -> ModelCard:
    """The card of an exported model (see the module docstring)."""
    arguments = (inputs.record or {}).get("arguments") or {}
    base_model = arguments.get("base_model")
    license_id, license_name, license_link = card_license(base_model, inputs.license)
    data = inputs.data
    dataset_id = "mmgl-generated-sample" if data.get("generated") else "wikiweb2m"
    dataset_name = "Generated WikiWeb2M-format sample" if data.get("generated") else "WikiWeb2M"
    model_name = inputs.hub_model_id or inputs.folder_name
    style = inputs.metrics_implementation.get("style", "mmgl")
    eval_results = []
    for prefix, split in SPLITS.items():
        for key, (metric_type, display) in MODEL_INDEX_METRICS.items():
            value = inputs.metrics.get(f"{prefix}_{key}")
            if isinstance(value, (int, float)):
                eval_results.append(EvalResult(
                    task_type="summarization", task_name="Section summarization", dataset_type=dataset_id,
                    dataset_name=dataset_name, dataset_split=split, metric_type=metric_type,
                    metric_name=f"{display} ({style} style)", metric_value=round(float(value), 6),
                    metric_config=style))
    tuning, tuning_text = tuning_lines(inputs.config, inputs.record)
    tags = ["mmgl", "multimodal-graph-learning", "opt", "summarization"]
    tags += [] if data.get("generated") else ["wikiweb2m"]
    tags += {"lora": ["peft", "lora"], "prefix": ["peft", "prefix-tuning"], "prompt": ["peft", "prompt-tuning"],
             "flamingo": ["flamingo"]}.get(tuning, [])
    card_data = ModelCardData(
        base_model=base_model, datasets=[dataset_id], metrics=["bleu", "rouge", "cider"], license=license_id,
        license_name=license_name, license_link=license_link, library_name="transformers",
        pipeline_tag="text-generation", tags=tags, model_name=model_name, eval_results=eval_results or None)
    samples = data.get("samples") or {}
    generation = ", ".join(f"{k} `{v}`" for k, v in inputs.generation.items() if v is not None)
    implementation = inputs.metrics_implementation
    metric_rows = [f"| {k} | {v:.4f} |" for k, v in sorted(inputs.metrics.items())
                   if isinstance(v, float) and k.startswith(("eval_", "predict_", "train_loss"))
                   and not k.endswith(("_runtime", "_per_second"))]
    base = base_model or (f"from scratch (OPT config `{arguments.get('model', {}).get('config_overrides')}`)"
                          if arguments.get("model", {}).get("config_overrides") else "not recorded")
    body = [
        f"# {model_name}", "",
        "MMGL section summarizer: writes the first sentence of a Wikipedia section from its multimodal neighbours "
        "(WikiWeb2M section summarization; Multimodal Graph Learning, Yoon et al. 2023).", "",
        "## Design", "", f"- base model: `{base}`", *design_lines(inputs.config, inputs.processor), "",
        "## Tuning", "", *tuning_text, "",
        "## Training", "", *training_lines(inputs.record, inputs.trainer_state, samples.get("train")), "",
        "## Decoding", "", f"- {generation} (`generation_config.json`: evaluation and the pipeline use it)", "",
        "## Data", "", f"- {data_description(data)}",
        f"- files: `{data.get('files')}`; split: "
        f"{'the original study split' if data.get('study_split') else 'the official `split` field'}",
        "- samples: " + ", ".join(f"{s} {samples[s]}" for s in ("train", "eval", "predict") if s in samples), "",
        "## Metrics", "",
        f"Measured by {inputs.metrics_source}, `{style}` style: {implementation.get('description', '')}", "",
        "| metric | value |", "|---|---|", *metric_rows, "",
        "## Intended use", "",
        "Research on multimodal graph learning: generating section summaries of Wikipedia-like pages from the "
        "section, its page and its images. Not for factual use: summaries may be wrong or invented.", "",
        "## Limitations", "",
        "- Trained on " + ("generated pages only: not a model of real Wikipedia text." if data.get("generated") else
                           "WikiWeb2M pages only (English Wikipedia); other page kinds are out of distribution."),
        "- Inputs longer than max_source_length are truncated; a model trained on few steps or a small model from "
        "scratch produces poor text; check the metrics above.",
        "- The frozen encoder above must encode the neighbours (the embedding cache or the in-model encoder).",
        *(["- No license was chosen for these weights (`--license`)."] if license_name == "unspecified" else []), "",
        "## How to load", "", "```python", "from transformers import AutoModel, pipeline", "",
        f'model = AutoModel.from_pretrained("{model_name}", trust_remote_code=True)',
        f'summarize = pipeline("mmgl-summarization", model="{model_name}", trust_remote_code=True)',
        'summarize({"page": page, "section": 2})', "```", "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def export_card_inputs(folder: str | os.PathLike, folder_name: str, source: str | os.PathLike | None, metrics: dict,
                       generation: dict, data: dict, hub_model_id: str | None = None, license: str | None = None,
                       metrics_implementation: dict | None = None) -> CardInputs:
    """The card inputs of the export written in `folder` (to be named `folder_name`), read from what is there: its config, processor and
    `trainer_state.json` (the run record). `source`: the folder the model was loaded from (a checkpoint being
    exported without training), whose recorded metrics (`all_results.json`) the card reports when this run
    measured none. `data`: this run's data, used when no record names the training data."""
    from processing.training.run_record import read_run_record

    folder = Path(folder)
    trainer_state = _read_json(folder / "trainer_state.json")
    record = read_run_record(trainer_state)
    measured = {k: v for k, v in metrics.items() if k.startswith(("eval_", "predict_", "train_"))}
    metrics_source = "this run"
    if not any(k.startswith(("eval_", "predict_")) for k in measured) and source is not None:
        recorded = _read_json(Path(source) / "all_results.json")
        logged = [entry for entry in (trainer_state or {}).get("log_history", []) if "eval_loss" in entry]
        if recorded:
            measured = {**{k: v for k, v in recorded.items() if isinstance(v, (int, float))}, **measured}
            metrics_source = f"the run that trained it (`{Path(source).name}/all_results.json`)"
            metrics_implementation = recorded.get("metrics_implementation", metrics_implementation)
        elif logged:  # a Trainer checkpoint: the last evaluation logged up to its step
            from processing.training.metrics import metrics_implementation as implementation_of

            measured = {**{k: v for k, v in logged[-1].items() if k.startswith("eval_")}, **measured}
            metrics_source = f"the evaluation logged at step {logged[-1].get('step')} (`trainer_state.json`)"
            style = (((record or {}).get("arguments") or {}).get("data") or {}).get("metrics_style")
            metrics_implementation = implementation_of(style) if style else metrics_implementation
        else:
            metrics_source = "nobody: no metrics are recorded for this model (evaluate it with --do_eval / --do_predict)"
    arguments = (record or {}).get("arguments") or {}
    if arguments.get("data"):
        data = {"files": arguments["data"].get("train_files"), "study_split": arguments["data"].get("use_study_split"),
                "generated": arguments.get("generated_data"), "samples": arguments.get("samples") or {}}
    return CardInputs(
        config=_read_json(folder / "config.json") or {}, processor=_read_json(folder / "processor_config.json"),
        record=record, trainer_state=trainer_state, metrics=measured, generation=generation, data=data,
        folder_name=folder_name,
        hub_model_id=hub_model_id, metrics_source=metrics_source, license=license,
        metrics_implementation=metrics_implementation or {})


def write_adapter_card(checkpoint: str | os.PathLike, record: dict | None, trainer_state: dict | None) -> ModelCard:
    """Replaces peft's unfilled template in a `checkpoint-N` adapter folder by a card that says what the adapter
    is, what it applies to and how to load it."""
    checkpoint = Path(checkpoint)
    adapter = json.loads((checkpoint / "adapter_config.json").read_text())
    base = adapter.get("base_model_name_or_path")
    peft_type = adapter.get("peft_type", "")
    tuning = {"LORA": "lora", "PREFIX_TUNING": "prefix-tuning", "PROMPT_TUNING": "prompt-tuning"}.get(peft_type)
    settings = {"LORA": f"rank `{adapter.get('r')}`, alpha `{adapter.get('lora_alpha')}`",
                "PREFIX_TUNING": f"`{adapter.get('num_virtual_tokens')}` virtual tokens",
                "PROMPT_TUNING": f"`{adapter.get('num_virtual_tokens')}` virtual tokens"}.get(peft_type, "")
    card_data = ModelCardData(base_model=base, library_name="peft",
                              tags=["mmgl", "peft", *([tuning] if tuning else [])], pipeline_tag="text-generation")
    step = (trainer_state or {}).get("global_step")
    body = [
        f"# MMGL {peft_type.lower().replace('_', ' ')} adapter, step {step}", "",
        f"A Trainer checkpoint of an MMGL run: the peft adapter ({settings}) and the trained MMGL modules (peft "
        f"`modules_to_save`), to apply to the unmerged base model it was trained on: `{base}` (`base_model/` in the "
        "checkpoint folder). Not merged: applying it to an export (which already holds the trained weights) would "
        "apply it twice.", "",
        "## Training", "", *training_lines(record, trainer_state, ((record or {}).get("arguments") or {})
                                           .get("samples", {}).get("train")), "",
        "## How to load", "", "```python", "from peft import AutoPeftModelForCausalLM", "",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{checkpoint}")', "```", "",
        f"or evaluate it with only the data: `python run_summarization.py --model_name_or_path {checkpoint} "
        "--train_files ... --output_dir ... --do_predict`; `--export` writes the complete model (LoRA merged, "
        "virtual tokens inside).", "",
    ]
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))
    atomic_write_bytes(checkpoint / "README.md", str(card).encode("utf-8"))
    return card


def write_model_card(output_dir: str | os.PathLike, inputs: CardInputs) -> ModelCard:
    """Writes `<output_dir>/README.md` (atomically); returns the card."""
    card = build_model_card(inputs)
    atomic_write_bytes(Path(output_dir) / "README.md", str(card).encode("utf-8"))
    return card


__all__ = ["CardInputs", "base_model_of", "build_model_card", "card_license", "design_lines", "encoder_description",
           "export_card_inputs", "write_adapter_card", "write_model_card"]
