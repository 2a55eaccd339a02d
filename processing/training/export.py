"""Export a trained model as a complete Hub folder (`save_hub_folder`): remote code, weights, processor,
the custom pipeline and, for a model trained from an embedding cache, the frozen encoder that filled it."""
from __future__ import annotations

import os
from pathlib import Path

from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder


def attach_neighbor_encoder(model, encoder: MMGLNeighborEncoder):
    """Put ``encoder`` (the frozen encoder that filled the embedding cache) into ``model``, so that the model also
    takes raw neighbour texts and images (the pipeline without a cache) and encodes them exactly as the cache
    did. The model's config records the encoder, and a Hugging Face text encoder's architecture (its weights go
    into the model's state dict, its tokenizer is saved with the processor)."""
    config = model.config
    config.neighbor_encoder_name = encoder.name
    config.neighbor_encoder_pretrained = getattr(encoder, "pretrained", None)
    config.neighbor_encoder_config = dict(encoder.model_config)
    config.embedding_cache_encoder = None  # the encoder is inside now: one record of it
    # A design without text neighbours (SA-TE, section_only) records no text encoder: the model carries only the
    # open_clip part of an encoder that also has one (the cache records it for the designs that read texts).
    text_model = encoder.text_model if config.text_neighbor_encoder is not None else None
    if text_model is not None:
        wanted = (config.text_neighbor_encoder, config.text_neighbor_pooling, config.text_neighbor_max_length)
        given = (text_model.name, text_model.pooling, text_model.max_length)
        if wanted != given:
            raise ValueError(f"the model encodes text neighbours with (text_neighbor_encoder, pooling, max_length) "
                             f"{wanted} but the encoder to attach with {given}")
        config.text_neighbor_encoder_config = text_model.config_dict()  # built from it: no second download
    elif config.text_neighbor_encoder is not None and encoder.text_model is None:
        raise ValueError(f"the model encodes text neighbours with {config.text_neighbor_encoder!r} but the encoder "
                         "to attach has no Hugging Face text encoder")
    if model.neighbor_encoder is None:
        model.neighbor_encoder = MMGLNeighborEncoder(config)
    if text_model is None:
        model.neighbor_encoder.model.load_state_dict(encoder.model.state_dict())
    else:
        model.neighbor_encoder.load_state_dict(encoder.state_dict())
    return model


def trained_model(model):
    """The plain `MMGLForConditionalGeneration` that computes what ``model`` (a peft model or a plain one) computes.

    - LoRA: merged into the weights (`merge_and_unload`), so no adapter is left to apply twice.
    - Prefix / prompt tuning: the trained virtual tokens become the model's own `virtual_tokens` module
      (`MMGLConfig.virtual_tokens`), applied exactly as peft applies them, so `AutoModel`, the pipeline and
      `run_summarization.py --model_name_or_path` need no peft step.
    - The MMGL modules trained as peft `modules_to_save` (projectors, position encoding, gated cross-attention) keep
      their trained weights.

    A peft model is changed in place (merged / unwrapped): call this once, at the end.
    """
    from peft import PeftModel, PeftType

    from modeling_mmgl.virtual_tokens import MMGLVirtualTokens
    from processing.training.tuning import unwrap_modules_to_save

    if not isinstance(model, PeftModel):
        return model
    adapter = model.active_adapter
    peft_config = model.peft_config[adapter]
    peft_type = PeftType(peft_config.peft_type)
    if peft_type == PeftType.LORA:
        return unwrap_modules_to_save(model.merge_and_unload())
    if peft_type not in (PeftType.PREFIX_TUNING, PeftType.PROMPT_TUNING):
        raise ValueError(f"a {peft_type.value} adapter cannot be exported as one model (LoRA, prefix and prompt "
                         "tuning can)")
    weight = model.get_prompt_embedding_to_save(adapter)  # (num_virtual_tokens, width), peft's flattened layout
    plain = unwrap_modules_to_save(model.get_base_model())
    plain.config.virtual_tokens = "prefix" if peft_type == PeftType.PREFIX_TUNING else "prompt"
    plain.config.num_virtual_tokens = peft_config.num_virtual_tokens
    virtual = MMGLVirtualTokens(plain.config)
    if tuple(virtual.embedding.weight.shape) != tuple(weight.shape):
        raise ValueError(f"the {peft_type.value} adapter holds virtual tokens of shape {tuple(weight.shape)}, but this model "
                         f"takes {tuple(virtual.embedding.weight.shape)}")
    device = next(plain.parameters()).device
    virtual.embedding.weight.data.copy_(weight)
    plain.virtual_tokens = virtual.to(device=device, dtype=plain.dtype)
    return plain


def save_adapter_base(model, processor, checkpoint_dir: str | os.PathLike, keep_existing: bool = False,
                      should_save: bool = True) -> str:
    """Saves ``model`` (the plain model a peft adapter is about to wrap) as ``<checkpoint_dir>/base_model``, a
    complete Hub folder, and returns its absolute path: every ``checkpoint-N`` adapter records it as
    ``base_model_name_or_path``, so `AutoPeftModelForCausalLM` and ``run_summarization.py --model_name_or_path
    checkpoint-N`` rebuild the run's model from the adapter alone.

    Written through a staging folder (a kill leaves no half-written base). ``keep_existing`` (a resumed run): the
    base the earlier checkpoints were saved against is kept.
    """
    from processing.atomic_write import replace_folder, staging_folder
    from processing.pipeline_mmgl import save_for_hub

    folder = Path(checkpoint_dir).resolve() / "base_model"
    if should_save and not (keep_existing and (folder / "config.json").is_file()):
        staging = staging_folder(folder)
        save_for_hub(model, processor, staging)
        replace_folder(staging, folder)
    return str(folder)


def save_hub_folder(model, processor, output_dir: str | os.PathLike, neighbor_encoder: MMGLNeighborEncoder | None = None,
                    state_dict: dict | None = None):
    """A complete Hub repository in ``output_dir``: the model ``model`` is (`trained_model`: LoRA merged, prefix /
    prompt virtual tokens inside), its processor, remote code and pipeline. No adapter is written: a peft adapter
    lives only beside its unmerged base (the Trainer checkpoints, `base_model/` in the checkpoint folder).
    ``neighbor_encoder``: trained from an embedding cache, the model is exported with that frozen encoder inside.

    ``state_dict``: the model's full weights gathered across processes (`MMGLSummarizationTrainer.save_model`; under
    FSDP / DeepSpeed ZeRO-3 ``model`` itself holds only shards): the folder is written from a fresh copy of the model
    carrying them (`processing.training.distributed.model_with_state_dict`), and ``model`` is left as it is.
    """
    from processing.pipeline_mmgl import save_for_hub

    if state_dict is not None:
        from processing.training.distributed import model_with_state_dict

        model = model_with_state_dict(model, state_dict)
    model = trained_model(model)
    if neighbor_encoder is not None and model.neighbor_encoder is None:
        model = attach_neighbor_encoder(model, neighbor_encoder)
    return save_for_hub(model, processor, output_dir)


__all__ = ["attach_neighbor_encoder", "save_adapter_base", "save_hub_folder", "trained_model"]
