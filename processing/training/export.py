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


def save_hub_folder(model, processor, output_dir: str | os.PathLike, neighbor_encoder: MMGLNeighborEncoder | None = None,
                    state_dict: dict | None = None):
    """A complete Hub repository in ``output_dir``.

    ``state_dict``: the model's full weights gathered across processes (`MMGLSummarizationTrainer.save_model`; under
    FSDP / DeepSpeed ZeRO-3 ``model`` itself holds only shards): the folder is written from a fresh copy of the model
    carrying them (`processing.training.distributed.model_with_state_dict`), and ``model`` is left as it is.

    peft adapters are also saved as adapters (``adapter/``); LoRA is merged into the exported weights; prefix /
    prompt adapters cannot be merged, so the exported weights are the base model and the adapter must be loaded
    with peft on top. Either way the MMGL modules trained as peft `modules_to_save` (projectors, position
    encoding, gated cross-attention) are exported with their trained weights. ``neighbor_encoder``: trained from an embedding cache, the model is exported with that
    frozen encoder inside.
    """
    from peft import PeftModel

    from processing.pipeline_mmgl import save_for_hub
    from processing.training.tuning import unwrap_modules_to_save

    if state_dict is not None:
        from processing.training.distributed import model_with_state_dict

        model = model_with_state_dict(model, state_dict)
    if isinstance(model, PeftModel):
        model.save_pretrained(Path(output_dir) / "adapter")
        is_lora = model.peft_config[model.active_adapter].peft_type == "LORA"
        model = model.merge_and_unload() if is_lora else model.get_base_model()
        model = unwrap_modules_to_save(model)  # merge_and_unload does this for LoRA; the base model keeps wrappers
    if neighbor_encoder is not None and model.neighbor_encoder is None:
        model = attach_neighbor_encoder(model, neighbor_encoder)
    return save_for_hub(model, processor, output_dir)


__all__ = ["attach_neighbor_encoder", "save_hub_folder"]
