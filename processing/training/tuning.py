"""Which parameters train for each point of the design space: the tuning method (`full`, `flamingo`, `lora`,
`prefix`, `prompt`) applied to a model with a given neighbour encoding, and the optional first stage.

Rule: every module MMGL adds on top of OPT (neighbour projectors, graph position encoding, the neighbour bridge
(Perceiver Resampler / Q-Former) and, with `ca_e`, the gated cross-attention blocks) is new and randomly initialised,
so it always trains, whatever adapter trains the language model. With peft this is `modules_to_save`; the frozen
neighbour encoder never trains.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from processing.design_space import PEFT_TUNINGS, TUNINGS

# peft matches `modules_to_save` by suffix of the full module name: these match exactly the MMGL modules.
MMGL_MODULES = ("neighbor_projection", "position_encoding", "neighbor_bridge", "gated_cross_attention")
# OPT decoder self-attention only: a bare ["q_proj", ..., "out_proj"] list would also wrap the cross-attention
# blocks (trained in full instead) and open_clip's attention `out_proj` inside the frozen neighbour encoder.
LORA_TARGET_MODULES = r".*model\.decoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj"


def is_mmgl_parameter(name: str) -> bool:
    """Whether the parameter `name` (as in `model.named_parameters()`) belongs to a module MMGL adds to OPT."""
    return (name.startswith(("neighbor_projection", "position_encoding", "neighbor_bridge"))
            or "gated_cross_attention" in name)


def mmgl_modules_to_save(model) -> list[str]:
    """The MMGL modules present in `model` (its neighbour encoding decides which), as peft `modules_to_save`."""
    present = []
    for name in MMGL_MODULES:
        if name == "gated_cross_attention":
            if any(getattr(layer, name, None) is not None for layer in model.model.decoder.layers):
                present.append(name)
        elif getattr(model, name, None) is not None:
            present.append(name)
    return present


def check_tuning(tuning: str, neighbor_encoding: str) -> None:
    """Refuses an unknown tuning method or an illegal (encoding, tuning) pair before any work."""
    if tuning not in TUNINGS:
        raise ValueError(f"--tuning must be one of {TUNINGS}, got {tuning!r}.")
    if tuning == "flamingo" and neighbor_encoding != "ca_e":
        raise ValueError(
            f"--tuning flamingo trains only the gated cross-attention blocks (and projectors / position encoding): "
            f"it needs --neighbor_encoding ca_e, got {neighbor_encoding!r}."
        )


def apply_tuning(model, mmgl_args, base_model_name_or_path: str | None = None):
    """Freezes / wraps `model` for `mmgl_args.tuning`; returns the model to train.

    - `full`: the model as built (every parameter).
    - `flamingo` (`ca_e` only): the gated cross-attention blocks, projectors, position encoding and bridge; OPT
      frozen.
    - `lora` / `prefix` / `prompt`: the peft adapter, plus the MMGL modules as `modules_to_save`.
      `base_model_name_or_path`: where `model` itself is saved (recorded in every saved adapter's config, so
      `AutoPeftModelForCausalLM` finds the unmerged base).
    """
    virtual = getattr(model.config, "virtual_tokens", "none")
    if mmgl_args.tuning in ("prefix", "prompt") and virtual != "none":
        raise ValueError(f"--tuning {mmgl_args.tuning} would add virtual tokens to a model that already applies "
                         f"{model.config.num_virtual_tokens} {virtual} tokens of its own (an exported {virtual}-tuned "
                         "model); train it with --tuning full, lora or flamingo, or start from its base model.")
    if mmgl_args.tuning == "full":
        return model
    if mmgl_args.tuning == "flamingo":
        for name, param in model.named_parameters():
            param.requires_grad_(is_mmgl_parameter(name))
        return model
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    modules_to_save = mmgl_modules_to_save(model) or None
    if mmgl_args.tuning == "lora":
        peft_config = LoraConfig(
            task_type="CAUSAL_LM", r=mmgl_args.lora_r, lora_alpha=mmgl_args.lora_alpha,
            target_modules=LORA_TARGET_MODULES, modules_to_save=modules_to_save,
        )
    elif mmgl_args.tuning == "prefix":
        peft_config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=mmgl_args.num_virtual_tokens,
                                         modules_to_save=modules_to_save)
    else:
        peft_config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=mmgl_args.num_virtual_tokens,
                                         modules_to_save=modules_to_save)
    model = get_peft_model(model, peft_config)
    if base_model_name_or_path is not None:
        model.peft_config[model.active_adapter].base_model_name_or_path = str(base_model_name_or_path)
    return model


def load_adapter(model, adapter_dir):
    """`model` (the unmerged base) with the peft adapter saved in `adapter_dir` (a Trainer `checkpoint-N` of
    a lora / prefix / prompt run), for evaluation: it computes exactly what the run computed at that step."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir).eval()


def unwrap_modules_to_save(model):
    """Replaces every peft `ModulesToSaveWrapper` in `model` by its trained copy, in place (the base model of a
    prefix / prompt adapter still holds the wrappers; their state-dict names would not load as MMGL)."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], module.modules_to_save[module.active_adapter])
    return model


def first_stage_parameter(name: str) -> bool:
    """Parameters the first stage trains: projectors, position encoding, the bridge and (with `ca_e`) the gated
    cross-attention blocks, which are the only path from neighbours to the LM there."""
    return is_mmgl_parameter(name)


def run_first_stage(model, training_args, train_dataset, data_collator, steps: int, trainer_class=None):
    """Trains only the MMGL modules (projectors, position encoding, bridge, gated cross-attention) for `steps` steps
    (output in `<output_dir>/first_stage`), then restores which parameters train, ready for the main stage.
    `trainer_class` (default `Trainer`): the main stage's, so both stages treat the inputs alike."""
    from transformers import Trainer

    was_trainable = {name: param.requires_grad for name, param in model.named_parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(first_stage_parameter(name))
    trainable, total = count_parameters(model)
    if training_args.should_log:
        print(f"first stage: {steps} steps, trainable parameters: {trainable:,} / total: {total:,}")
    stage_args = dataclasses.replace(
        training_args, output_dir=str(Path(training_args.output_dir) / "first_stage"), max_steps=steps,
        save_strategy="no", push_to_hub=False, resume_from_checkpoint=None,
    )
    trainer_class = trainer_class or Trainer
    trainer_class(model=model, args=stage_args, train_dataset=train_dataset, data_collator=data_collator).train()
    for name, param in model.named_parameters():
        param.requires_grad_(was_trainable[name])


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


__all__ = [
    "LORA_TARGET_MODULES", "MMGL_MODULES", "PEFT_TUNINGS", "TUNINGS", "apply_tuning", "check_tuning",
    "count_parameters", "is_mmgl_parameter", "load_adapter", "mmgl_modules_to_save", "run_first_stage",
    "unwrap_modules_to_save",
]
