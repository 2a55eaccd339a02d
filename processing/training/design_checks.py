"""Checks of a run's design against the model it trains, before any work: a design point that would silently
build nothing (no cross-attention block) is refused; freezing a random language model is warned about."""
from __future__ import annotations

import logging

from transformers import OPTConfig

logger = logging.getLogger(__name__)

FREEZING_TUNINGS = ("lora", "prefix", "prompt", "flamingo")


def num_decoder_layers(model_name_or_path: str | None, opt_config_kwargs: dict | None) -> int:
    """``num_hidden_layers`` of the model to be trained, from its ``config.json`` or the from-scratch overrides."""
    if model_name_or_path:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(model_name_or_path).num_hidden_layers)
    return int(OPTConfig(**(opt_config_kwargs or {})).num_hidden_layers)


def check_model_design(mmgl_args, num_layers: int, from_scratch: bool) -> None:
    """Refuses a CA-E model without a cross-attention block; warns when PEFT / flamingo freezes a random LM.

    Args:
        mmgl_args: the run's MMGL arguments (`neighbor_encoding`, `context`, `cross_attention_interval`, `tuning`).
        num_layers (`int`): decoder layers of the model.
        from_scratch (`bool`): the language model starts from a random init (no `--model_name_or_path`).
    """
    from processing.design_space import neighbor_mode

    mode = neighbor_mode(mmgl_args.neighbor_encoding, mmgl_args.context)
    if mode == "cross_attention" and mmgl_args.cross_attention_interval > num_layers:
        raise ValueError(
            f"--cross_attention_interval {mmgl_args.cross_attention_interval} is larger than the model's "
            f"{num_layers} decoder layers: no gated cross-attention block would exist (a block follows every "
            f"interval-th layer). Use --cross_attention_interval <= {num_layers}."
        )
    if from_scratch and mmgl_args.tuning in FREEZING_TUNINGS:
        logger.warning(
            f"--tuning {mmgl_args.tuning} freezes the language model, but it is trained from scratch (no "
            "--model_name_or_path): a random language model stays frozen. Use --tuning full, or start from a "
            "pretrained OPT checkpoint."
        )


__all__ = ["check_model_design", "num_decoder_layers"]
