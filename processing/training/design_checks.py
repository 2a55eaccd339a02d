"""Checks of a run's design against the model it trains, before any work: a design point that would silently
build nothing (no cross-attention block) or learn nothing from the graph (a graph position encoding over a graph
that can have no edge) is refused; freezing a random language model is warned about."""
from __future__ import annotations

import logging

from transformers import OPTConfig

logger = logging.getLogger(__name__)

FREEZING_TUNINGS = ("lora", "prefix", "prompt", "flamingo")
# Position encodings read from the graph's edges (the sequence encoding reads the slot index only).
EDGE_POSITION_ENCODINGS = ("laplacian", "gnn")


def num_decoder_layers(model_name_or_path: str | None, opt_config_kwargs: dict | None) -> int:
    """`num_hidden_layers` of the model to be trained, from its `config.json` or the from-scratch overrides."""
    if model_name_or_path:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(model_name_or_path).num_hidden_layers)
    return int(OPTConfig(**(opt_config_kwargs or {})).num_hidden_layers)


def check_model_design(mmgl_args, num_layers: int, from_scratch: bool) -> None:
    """Refuses a CA-E model without a cross-attention block and a graph position encoding over at most one neighbour
    slot; warns when PEFT / flamingo freezes a random LM.

    Args:
        mmgl_args: the run's MMGL arguments (`neighbor_encoding`, `context`, `cross_attention_interval`, `tuning`,
            `position_encoding`, `max_text_neighbors`, `max_image_neighbors`).
        num_layers (`int`): decoder layers of the model.
        from_scratch (`bool`): the language model starts from a random init (no `--model_name_or_path`).
    """
    from processing.design_space import has_image_slots, has_text_slots, neighbor_mode

    mode = neighbor_mode(mmgl_args.neighbor_encoding, mmgl_args.context)
    if mmgl_args.position_encoding in EDGE_POSITION_ENCODINGS:
        # An edge joins two slots, and every design with two slots can have one (`graph_projection`: in SA-TE
        # two images of one section are adjacent; in SA-E / CA-E the first candidates all touch the target, and
        # the contracted target joins them).
        encoding, context = mmgl_args.neighbor_encoding, mmgl_args.context
        slots = ((mmgl_args.max_text_neighbors if has_text_slots(encoding, context) else 0)
                 + (mmgl_args.max_image_neighbors if has_image_slots(context) else 0))
        if slots < 2:
            raise ValueError(
                f"--position_encoding {mmgl_args.position_encoding} reads the edges between neighbour slots, but "
                f"--context {context} with --neighbor_encoding {encoding}, "
                f"--max_text_neighbors {mmgl_args.max_text_neighbors} and --max_image_neighbors "
                f"{mmgl_args.max_image_neighbors} gives at most {slots} slot(s), so no edge can exist. Raise the "
                "neighbour budgets, or use --position_encoding sequence or none."
            )
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


__all__ = ["EDGE_POSITION_ENCODINGS", "check_model_design", "num_decoder_layers"]
