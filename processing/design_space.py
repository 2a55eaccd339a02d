"""The MMGL design space in one place: every axis (context, neighbour encoding, neighbour bridge, graph position
encoding, tuning, cross-attention gating, budgets) with its choices and defaults, and which neighbour slots and which
model mode each (encoding, context) pair gives. The processor, the training script (its flags and their defaults),
the tuning helpers and the study runner all read this file.

The model configuration (`modeling_mmgl/configuration_mmgl.py`) validates the model-side choices
(`POSITION_ENCODINGS`, `GNN_TYPES`, `NEIGHBOR_BRIDGES`, `ALPHA_INITIALIZERS`, `GRAPH_TARGET_FEATURES`) itself,
because a Hub folder's modeling code cannot import the `processing` package; `tests/test_design_space.py` checks that
its tuples equal these.

This file imports nothing: it is Hub-loadable and cheap.
"""

CONTEXTS = ("section_only", "section_all", "text_only", "all")
NEIGHBOR_ENCODINGS = ("sa_te", "sa_e", "ca_e")
# What the LM reads of the neighbour embeddings (`MMGLConfig.neighbor_bridge`): each neighbour's projected tokens, or
# a fixed number of latents from a Perceiver Resampler / Q-Former over all of them.
NEIGHBOR_BRIDGES = ("linear", "perceiver", "qformer")
POSITION_ENCODINGS = ("none", "sequence", "laplacian", "gnn")
GNN_TYPES = ("gcn", "gat", "sage")
TUNINGS = ("full", "lora", "prefix", "prompt", "flamingo")
PEFT_TUNINGS = ("lora", "prefix", "prompt")
# CA-E gate initialisers, IDEFICS' `alpha_initializer` (`MMGLConfig.alpha_initializer`).
ALPHA_INITIALIZERS = ("zeros", "ones", "normal")
# What the neighbour graph says about the target (`MMGLConfig.graph_target_feature`): nothing (the target is
# contracted) or each slot's distance to it in the page's tree (`graph_projection.target_distances`).
GRAPH_TARGET_FEATURES = ("none", "distance")
#: The default of every axis and budget: `run_summarization.py`'s flags, `MMGLProcessor`'s options, the study's
#: unset design keys. `cross_attention_gating`: CA-E's tanh gates (False: the paper's ungated CA-E), closed at init
#: with `alpha_initializer` zeros (the model starts as OPT); `graph_target_feature` none: the graph as before.
DESIGN_DEFAULTS = {
    "context": "all",
    "neighbor_encoding": "sa_e",
    "position_encoding": "none",
    "tuning": "full",
    "cross_attention_gating": True,
    "alpha_initializer": "zeros",
    "alphas_initializer_range": 0.0,
    "text_neighbor_num_tokens": 4,
    "image_neighbor_num_tokens": 4,
    "max_text_neighbors": 11,
    "max_image_neighbors": 5,
    "cross_attention_interval": 4,
    "lpe_k": 4,
    "graph_target_feature": "none",
    "gnn_type": "gcn",
    "gnn_num_layers": 2,
    "neighbor_bridge": "linear",
    "bridge_num_latents": 32,
    "bridge_num_layers": 2,
}
# How each encoding reaches the LM (`MMGLConfig.neighbor_mode`).
NEIGHBOR_MODE_OF_ENCODING = {"sa_te": "self_attention", "sa_e": "self_attention", "ca_e": "cross_attention"}


def check_design(context: str, neighbor_encoding: str) -> None:
    """Raise `ValueError` naming the argument when a choice is unknown."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if neighbor_encoding not in NEIGHBOR_ENCODINGS:
        raise ValueError(f"neighbor_encoding must be one of {NEIGHBOR_ENCODINGS}, got {neighbor_encoding!r}")


def has_text_slots(neighbor_encoding: str, context: str) -> bool:
    """Text neighbours are slots (embeddings or encoder ids): SA-E and CA-E beyond `section_only`.
    In SA-TE they are raw tokens of the prompt instead."""
    return neighbor_encoding != "sa_te" and context != "section_only"


def has_image_slots(context: str) -> bool:
    """Image neighbours exist for `section_all` (the target's images) and `all` (the page's)."""
    return context in ("section_all", "all")


def has_neighbor_slots(neighbor_encoding: str, context: str) -> bool:
    """Whether any neighbour reaches the model as an embedding (what projectors and position encodings need)."""
    return has_text_slots(neighbor_encoding, context) or has_image_slots(context)


def check_text_neighbor_encoder(neighbor_encoding: str, context: str, text_neighbor_encoder: str | None) -> None:
    """A Hugging Face text neighbour encoder encodes text slots: refuse one (`ValueError`) for a design without any,
    where it would silently do nothing."""
    if text_neighbor_encoder is not None and not has_text_slots(neighbor_encoding, context):
        why = ("SA-TE writes neighbour texts as LM tokens" if neighbor_encoding == "sa_te"
               else "section_only has no text neighbour")
        raise ValueError(
            f"text_neighbor_encoder {text_neighbor_encoder!r} encodes text neighbours given as embeddings, but "
            f"neighbor_encoding {neighbor_encoding!r} with context {context!r} has none ({why}); leave it unset"
        )


def check_neighbor_bridge(neighbor_bridge: str, neighbor_encoding: str, context: str) -> None:
    """Refuse (`ValueError`) an unknown bridge, or a bridge for a design without neighbour embeddings to bridge."""
    if neighbor_bridge not in NEIGHBOR_BRIDGES:
        raise ValueError(f"neighbor_bridge must be one of {NEIGHBOR_BRIDGES}, got {neighbor_bridge!r}")
    if neighbor_bridge != "linear" and not has_neighbor_slots(neighbor_encoding, context):
        raise ValueError(
            f"neighbor_bridge {neighbor_bridge!r} compresses neighbour embeddings, but neighbor_encoding "
            f"{neighbor_encoding!r} with context {context!r} has none; use neighbor_bridge 'linear'"
        )


def neighbor_mode(neighbor_encoding: str, context: str) -> str:
    """`MMGLConfig.neighbor_mode` for a design point: `"none"` when no neighbour is an embedding (plain OPT)."""
    if not has_neighbor_slots(neighbor_encoding, context):
        return "none"
    return NEIGHBOR_MODE_OF_ENCODING[neighbor_encoding]


__all__ = [
    "ALPHA_INITIALIZERS",
    "CONTEXTS",
    "DESIGN_DEFAULTS",
    "GNN_TYPES",
    "GRAPH_TARGET_FEATURES",
    "NEIGHBOR_BRIDGES",
    "NEIGHBOR_ENCODINGS",
    "NEIGHBOR_MODE_OF_ENCODING",
    "PEFT_TUNINGS",
    "POSITION_ENCODINGS",
    "TUNINGS",
    "check_design",
    "check_neighbor_bridge",
    "check_text_neighbor_encoder",
    "has_image_slots",
    "has_neighbor_slots",
    "has_text_slots",
    "neighbor_mode",
]
