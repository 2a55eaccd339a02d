"""The design of an MMGL checkpoint (an exported Hub folder or a Trainer `checkpoint-N`), read from its
`config.json` and `processor_config.json`, and reconciled with the command line before any work.

A checkpoint whose `model_type` is `"mmgl"` with `neighbor_mode != "none"` carries its design: the run takes
it, and a flag given on the command line that contradicts it is refused naming both values. A plain OPT checkpoint,
or an MMGL one without neighbour slots (`neighbor_mode == "none"`), is a *base* model: the design flags apply.
Any other model type is refused (MMGL extends OPT).

A peft checkpoint (`checkpoint-N` of a LoRA / prefix / prompt run: `adapter_config.json`, no `config.json`) is
read through its base: the unmerged MMGL model its `base_model_name_or_path` names (`base_model/` in the
checkpoint folder), found beside the checkpoint when the folder has moved. Its tuning is fixed by the adapter.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from processing.loading import read_json

logger = logging.getLogger(__name__)

# Command-line argument -> key in config.json (the model's design).
CONFIG_FIELDS = {
    "position_encoding": "position_encoding",
    "text_neighbor_num_tokens": "text_neighbor_num_tokens",
    "image_neighbor_num_tokens": "image_neighbor_num_tokens",
    "max_text_neighbors": "max_text_neighbors",
    "max_image_neighbors": "max_image_neighbors",
    "cross_attention_interval": "cross_attention_interval",
    "cross_attention_gating": "cross_attention_gating",
    "lpe_k": "lpe_k",
    "graph_target_feature": "graph_target_feature",
    "gnn_type": "gnn_type",
    "gnn_num_layers": "gnn_num_layers",
    "text_neighbor_encoder": "text_neighbor_encoder",
    "text_neighbor_pooling": "text_neighbor_pooling",
    "text_neighbor_max_length": "text_neighbor_max_length",
    "neighbor_bridge": "neighbor_bridge",
    "bridge_num_latents": "bridge_num_latents",
    "bridge_num_layers": "bridge_num_layers",
}
# Command-line argument -> key in processor_config.json (how inputs are built).
PROCESSOR_FIELDS = {
    "context": "context",
    "neighbor_encoding": "neighbor_encoding",
    "text_neighbor_num_tokens": "text_neighbor_num_tokens",
    "image_neighbor_num_tokens": "image_neighbor_num_tokens",
    "max_text_neighbors": "max_text_neighbors",
    "max_image_neighbors": "max_image_neighbors",
    "max_source_length": "max_source_length",
    "max_target_length": "max_target_length",
    "graph_target_feature": "graph_target_feature",
    "neighbor_bridge": "neighbor_bridge",
    "bridge_num_latents": "bridge_num_latents",
}
# Settings that may legitimately differ from the run that trained the checkpoint: applied and logged.
FREE_FIELDS = ("generation_max_new_tokens", "generation_num_beams", "no_repeat_ngram_size", "generation_config",
               "metrics_style", "max_train_samples", "max_eval_samples", "max_predict_samples",
               "per_device_eval_batch_size")
# peft's type of a saved adapter -> --tuning.
ADAPTER_TUNINGS = {"LORA": "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}


@dataclass
class CheckpointDesign:
    """What an MMGL checkpoint fixes.

    Args:
        path (`str`): the checkpoint folder.
        config (`dict`): its `config.json`.
        processor (`dict | None`): its `processor_config.json`, or `None` when it has none.
        values (`dict`): command-line argument name -> the checkpoint's value.
        adapter (`dict | None`): a peft checkpoint's `adapter_config.json`, `None` for a complete model.
        base_path (`str | None`): a peft checkpoint's base model folder (where `config` comes from).
    """

    path: str
    config: dict
    processor: dict | None
    values: dict = field(default_factory=dict)
    adapter: dict | None = None
    base_path: str | None = None

    @property
    def model_path(self) -> str:
        """Where the model's `config.json` and weights are: the base of a peft checkpoint, else the checkpoint."""
        return self.base_path or self.path

    @property
    def has_processor(self) -> bool:
        return self.processor is not None

    @property
    def encoder(self) -> tuple[str, str | None, dict | None] | None:
        """(open_clip name, pretrained or `None` for the seeded random init, custom config) recorded in the
        checkpoint, or `None` when it records no frozen encoder."""
        name = self.config.get("neighbor_encoder_name")
        if name is None and self.config.get("neighbor_encoder_config") is None:
            # A Trainer checkpoint of a run trained from an embedding cache: the encoder is named, not inside.
            cached = self.config.get("embedding_cache_encoder")
            if not cached:
                return None
            name, pretrained, config = cached.get("name"), cached.get("pretrained"), cached.get("config")
        else:
            pretrained, config = self.config.get("neighbor_encoder_pretrained"), self.config.get("neighbor_encoder_config")
        return name, None if pretrained in ("", "none") else pretrained, config


def adapter_base_path(folder: str | os.PathLike) -> str | None:
    """The base model folder of the peft checkpoint `folder`, or `None` when `folder` is not one (it has a
    `config.json` or no `adapter_config.json`). Raises `FileNotFoundError` naming the file when the base is gone."""
    folder = Path(os.path.expanduser(os.fspath(folder)))
    adapter_file = folder / "adapter_config.json"
    if (folder / "config.json").is_file() or not adapter_file.is_file():
        return None
    recorded = read_json(adapter_file, dict, "a peft adapter config (a JSON object)").get("base_model_name_or_path")
    beside = folder.parent / "base_model"  # the checkpoint folder moved as a whole
    for candidate in (recorded, beside):
        if candidate and (Path(os.path.expanduser(candidate)) / "config.json").is_file():
            return str(Path(os.path.expanduser(candidate)))
    raise FileNotFoundError(
        f"{adapter_file}: base_model_name_or_path {recorded!r} is not a model folder here, and there is no "
        f"{beside} with a config.json: the adapter needs the unmerged base model it was trained on (saved as "
        "base_model/ in the checkpoint folder).")


def read_checkpoint_design(model_name_or_path: str | None) -> CheckpointDesign | None:
    """The design of the MMGL checkpoint in `model_name_or_path`; `None` for a base model (OPT, MMGL without
    neighbour slots, from scratch, or a hub id not present locally). Raises `ValueError` for a non-OPT model."""
    if not model_name_or_path:
        return None
    folder = Path(os.path.expanduser(model_name_or_path))
    config_file = folder / "config.json"
    base_path = adapter_base_path(folder)
    adapter = None
    if base_path is not None:
        adapter = read_json(folder / "adapter_config.json", dict, "a peft adapter config (a JSON object)")
        config = read_json(Path(base_path) / "config.json", dict, "the model's config (a JSON object)")
    elif config_file.is_file():
        config = read_json(config_file, dict, "the model's config (a JSON object)")
    elif folder.exists() or os.path.isabs(model_name_or_path) or model_name_or_path.startswith((".", "~")) \
            or model_name_or_path.count("/") > 1:
        return None  # a local path without config.json: the argument checks report it
    else:
        try:  # a hub id: only config.json, from the local hub cache when offline
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_name_or_path).to_dict()
        except OSError:
            return None  # not reachable now: loading the model reports it
        except ValueError as err:
            if "model_type" in str(err) or "Unrecognized model" in str(err):
                raise ValueError(f"--model_name_or_path {model_name_or_path}: {err}") from None
            raise
    model_type = config.get("model_type")
    if model_type not in ("opt", "mmgl"):
        raise ValueError(f"MMGL extends OPT; got model_type {model_type!r} in --model_name_or_path {model_name_or_path}.")
    if (model_type == "opt" or config.get("neighbor_mode", "none") == "none") and adapter is None:
        return None
    processor_file = folder / "processor_config.json"
    processor = read_json(processor_file, dict, "the processor's config (a JSON object)") if processor_file.is_file() else None
    if processor is not None:
        problems = contradictions(config, processor)
        if problems:
            raise ValueError(
                f"--model_name_or_path {folder}: processor_config.json and config.json contradict each other ("
                + "; ".join(problems) + "): they come from different models; re-export the checkpoint or fix the files."
            )
    values = {arg: config[key] for arg, key in CONFIG_FIELDS.items() if key in config}
    if processor is not None:
        # Lengths and slots of the processor win over the config: they decide the inputs actually built.
        values.update({arg: processor[key] for arg, key in PROCESSOR_FIELDS.items() if key in processor})
    if adapter is not None:
        peft_type = adapter.get("peft_type")
        if peft_type not in ADAPTER_TUNINGS:
            raise ValueError(f"{folder / 'adapter_config.json'}: peft_type {peft_type!r} is not one of the tunings "
                             f"this script trains ({', '.join(ADAPTER_TUNINGS)})")
        values["tuning"] = ADAPTER_TUNINGS[peft_type]
    return CheckpointDesign(str(folder), config, processor, values, adapter=adapter, base_path=base_path)


def contradictions(config: dict, processor: dict) -> list[str]:
    """Where a checkpoint's `processor_config.json` and `config.json` disagree on what they both decide: the
    neighbour mode the processor's design needs, and (with neighbour slots) the budgets, the bridge (and its number of
    latents) and, in self-attention, the tokens per neighbour. Empty when they agree (the check
    `MMGLProcessor.check_model_config` makes on loaded objects, here on the two files before any work)."""
    from processing.design_space import check_design, neighbor_mode

    try:
        check_design(processor.get("context"), processor.get("neighbor_encoding"))
        wanted = neighbor_mode(processor.get("neighbor_encoding"), processor.get("context"))
    except (ValueError, KeyError, TypeError) as err:
        return [f"processor_config.json: {err}"]
    mode = config.get("neighbor_mode", "none")
    if mode != wanted:
        return [f"the processor's neighbor_encoding {processor.get('neighbor_encoding')!r} with context "
                f"{processor.get('context')!r} needs neighbor_mode {wanted!r}, config.json has {mode!r}"]
    shared = ["max_text_neighbors", "max_image_neighbors"]
    # Files written before the bridge switch have neither key: both mean "linear".
    bridge = processor.get("neighbor_bridge", "linear"), config.get("neighbor_bridge", "linear")
    if bridge[0] != bridge[1]:
        return [f"neighbor_bridge: processor_config.json {bridge[0]!r}, config.json {bridge[1]!r}"]
    if bridge[0] != "linear":
        shared.append("bridge_num_latents")
    if mode == "self_attention":
        shared += ["text_neighbor_num_tokens", "image_neighbor_num_tokens"]
    shared.append("graph_target_feature")
    return [f"{name}: processor_config.json {processor[name]!r}, config.json {config[name]!r}"
            for name in shared if name in processor and name in config and processor[name] != config[name]]


def given_on_command_line(argv: list[str] | None, name: str, args, default) -> bool:
    """Whether `--name` was given: scanned in `argv` (command line), else compared with the default (JSON)."""
    if argv is not None and not (len(argv) == 1 and argv[0].endswith(".json")):
        flag = f"--{name}"
        return any(item == flag or item.startswith(flag + "=") for item in argv)
    return getattr(args, name) != default


def _default(args, name):
    for f in dataclasses.fields(args):
        if f.name == name:
            return f.default if f.default is not dataclasses.MISSING else None
    return None


def apply_checkpoint_design(design: CheckpointDesign, argv: list[str] | None, *arg_groups,
                            encoder_config_file: str | None = None) -> dict:
    """Sets every design argument in `arg_groups` to the checkpoint's value.

    A flag given on the command line with another value is refused, naming both (`ValueError`). Returns the
    argument -> value pairs taken from the checkpoint (for the log).
    """
    conflicts, taken = [], {}
    for name, value in design.values.items():
        for args in arg_groups:
            if not hasattr(args, name):
                continue
            current = getattr(args, name)
            if current != value and given_on_command_line(argv, name, args, _default(args, name)):
                conflicts.append(f"--{name} {current!r} contradicts the checkpoint's {value!r}")
            elif current != value:
                setattr(args, name, value)
                taken[name] = value
    encoder = design.encoder
    if encoder is not None:
        name, pretrained, config = encoder
        for args in arg_groups:
            if not hasattr(args, "neighbor_encoder_name"):
                continue
            if given_on_command_line(argv, "neighbor_encoder_name", args, "ViT-B-32") and args.neighbor_encoder_name != name:
                conflicts.append(f"--neighbor_encoder_name {args.neighbor_encoder_name!r} contradicts the checkpoint's {name!r}")
            given_pretrained = args.neighbor_encoder_pretrained
            given_pretrained = None if given_pretrained in (None, "", "none") else given_pretrained
            if given_on_command_line(argv, "neighbor_encoder_pretrained", args, "openai") and given_pretrained != pretrained:
                conflicts.append(f"--neighbor_encoder_pretrained {args.neighbor_encoder_pretrained!r} contradicts the "
                                 f"checkpoint's {pretrained or 'none'!r}")
            if encoder_config_file and config is not None:
                given = read_json(encoder_config_file, dict, "a full open_clip model config (a JSON object)")
                if given != config:
                    conflicts.append(f"--neighbor_encoder_config {encoder_config_file} differs from the checkpoint's "
                                     "neighbor_encoder_config")
    if conflicts:
        raise ValueError(f"--model_name_or_path {design.path} is an MMGL checkpoint whose design is fixed: "
                         + "; ".join(conflicts) + ". Drop these flags (or start from its base OPT model).")
    return taken


def log_free_settings(argv: list[str] | None, *arg_groups) -> dict:
    """The settings a run may change on a checkpoint (generation length, sample limits, eval batch size)."""
    applied = {}
    for args in arg_groups:
        for name in FREE_FIELDS:
            if hasattr(args, name) and given_on_command_line(argv, name, args, _default(args, name)):
                applied[name] = getattr(args, name)
    return applied


__all__ = ["ADAPTER_TUNINGS", "CheckpointDesign", "adapter_base_path", "apply_checkpoint_design", "contradictions",
           "given_on_command_line", "log_free_settings",
           "read_checkpoint_design"]
