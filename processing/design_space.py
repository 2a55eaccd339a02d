"""The MMGL design space in one place: context levels, neighbour encodings, and which neighbour slots
and which model mode each (encoding, context) pair gives. The processor, the training script and the
model configuration built by the script all ask these functions.

This file imports nothing: it is Hub-loadable and cheap.
"""

CONTEXTS = ("section_only", "section_all", "text_only", "all")
NEIGHBOR_ENCODINGS = ("sa_te", "sa_e", "ca_e")
# How each encoding reaches the LM (`MMGLConfig.neighbor_mode`).
NEIGHBOR_MODE_OF_ENCODING = {"sa_te": "self_attention", "sa_e": "self_attention", "ca_e": "cross_attention"}
# What the LM reads of the neighbour embeddings (`MMGLConfig.neighbor_bridge`): each neighbour's projected tokens, or
# a fixed number of latents from a Perceiver Resampler / Q-Former over all of them.
NEIGHBOR_BRIDGES = ("linear", "perceiver", "qformer")


def check_design(context: str, neighbor_encoding: str) -> None:
    """Raise `ValueError` naming the argument when a choice is unknown."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if neighbor_encoding not in NEIGHBOR_ENCODINGS:
        raise ValueError(f"neighbor_encoding must be one of {NEIGHBOR_ENCODINGS}, got {neighbor_encoding!r}")


def has_text_slots(neighbor_encoding: str, context: str) -> bool:
    """Text neighbours are slots (embeddings or encoder ids): SA-E and CA-E beyond ``section_only``.
    In SA-TE they are raw tokens of the prompt instead."""
    return neighbor_encoding != "sa_te" and context != "section_only"


def has_image_slots(context: str) -> bool:
    """Image neighbours exist for ``section_all`` (the target's images) and ``all`` (the page's)."""
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
    """`MMGLConfig.neighbor_mode` for a design point: ``"none"`` when no neighbour is an embedding (plain OPT)."""
    if not has_neighbor_slots(neighbor_encoding, context):
        return "none"
    return NEIGHBOR_MODE_OF_ENCODING[neighbor_encoding]


__all__ = [
    "CONTEXTS",
    "NEIGHBOR_BRIDGES",
    "NEIGHBOR_ENCODINGS",
    "NEIGHBOR_MODE_OF_ENCODING",
    "check_design",
    "check_neighbor_bridge",
    "check_text_neighbor_encoder",
    "has_image_slots",
    "has_neighbor_slots",
    "has_text_slots",
    "neighbor_mode",
]
