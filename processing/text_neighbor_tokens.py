"""The ONE tokenisation of text neighbours for a Hugging Face text neighbour encoder
(`MMGLConfig.text_neighbor_encoder`): the processor (raw ``text_neighbor_input_ids``) and the embedding-cache builder
both call `text_neighbor_ids`, and the model's `MMGLTextNeighborEncoder` pools what it returns, so a cached text
embedding equals the in-model one.

This file is Hub-loadable: it imports installed packages only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

# Where an exported processor keeps the text neighbour tokenizer (transformers' convention for a processor's
# additional tokenizers: a sub-folder named after it).
TEXT_NEIGHBOR_TOKENIZER_DIR = "text_neighbor_tokenizer"


def load_text_neighbor_tokenizer(name_or_path: str, **kwargs):
    """``AutoTokenizer.from_pretrained(name_or_path)``, refusing a tokenizer without a pad token (padding must be
    told apart from text: the encoder masks the pad id)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"the tokenizer of text neighbour encoder {name_or_path!r} has no pad token; a text neighbour encoder "
            "needs one (BERT, RoBERTa and sentence-transformers models have it)"
        )
    return tokenizer


def text_neighbor_ids(tokenizer, texts: Sequence[str], max_length: int) -> torch.LongTensor:
    """`(n, max_length)` ids of ``texts``: the encoder's special tokens added (CLS / SEP, as it was trained),
    truncated to ``max_length`` and right-padded with the pad id up to it (fixed width, so examples batch like
    open_clip's 77-token ids; the encoder drops all-pad columns before running)."""
    if not texts:
        return torch.zeros((0, max_length), dtype=torch.long)
    encoded = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, padding_side="right",
        return_tensors="pt",
    )
    return encoded["input_ids"].long()


__all__ = ["TEXT_NEIGHBOR_TOKENIZER_DIR", "load_text_neighbor_tokenizer", "text_neighbor_ids"]
