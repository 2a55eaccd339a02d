"""The ONE tokenisation of text neighbours: `text_neighbor_ids` for a Hugging Face text neighbour encoder
(`MMGLConfig.text_neighbor_encoder`), `clip_text_ids` for open_clip's text tower. The processor (raw
`text_neighbor_input_ids`) and the embedding-cache builder both call them, and the model encodes what they return,
so a cached text embedding equals the in-model one.

This file is Hub-loadable: it imports installed packages only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

# Where an exported processor keeps the text neighbour tokenizer (transformers' convention for a processor's
# additional tokenizers: a sub-folder named after it).
TEXT_NEIGHBOR_TOKENIZER_DIR = "text_neighbor_tokenizer"


def load_text_neighbor_tokenizer(name_or_path: str, **kwargs):
    """`AutoTokenizer.from_pretrained(name_or_path)`, refusing a tokenizer without a pad token (padding must be
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
    """`(n, max_length)` ids of `texts`: the encoder's special tokens added (CLS / SEP, as it was trained),
    truncated to `max_length` and right-padded with the pad id up to it (fixed width, so examples batch like
    open_clip's 77-token ids; the encoder drops all-pad columns before running)."""
    if not texts:
        return torch.zeros((0, max_length), dtype=torch.long)
    encoded = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, padding_side="right",
        return_tensors="pt",
    )
    return encoded["input_ids"].long()


def clip_text_ids(tokenizer, texts: Sequence[str]) -> torch.LongTensor:
    """`(n, context_length)` open_clip ids of `texts`: exactly `tokenizer(texts)`. For open_clip's own BPE
    tokenizer (`SimpleTokenizer`, truncating) each text's words are encoded only until its context is full, since
    the rest is cut anyway: a section has ~200 words and the context ~75, so a data set's texts tokenise in a
    fraction of the CPU; the cleaning sees a prefix ending at a line break (`_line_prefixes`), so the ids do not
    change."""
    from open_clip.tokenizer import SimpleTokenizer

    if type(tokenizer) is not SimpleTokenizer or tokenizer.reduction_fn is not None:
        return tokenizer(list(texts)).long()
    length, sot, eot = tokenizer.context_length, tokenizer.sot_token_id, tokenizer.eot_token_id
    result = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        for prefix in _line_prefixes(text, 8 * length):
            ids = [sot]
            # `SimpleTokenizer.encode` on the prefix, stopping when the context is full
            for word in tokenizer.pat.finditer(tokenizer.clean_fn(prefix)):
                word = "".join(tokenizer.byte_encoder[b] for b in word.group().encode("utf-8"))
                ids.extend(tokenizer.encoder[piece] for piece in tokenizer.bpe(word).split(" "))
                if len(ids) >= length:
                    break
            if len(ids) >= length:
                break
        ids = ids[: length - 1] + [eot]  # `SimpleTokenizer.__call__`'s truncation: the last id becomes the end token
        result[row, : len(ids)] = torch.tensor(ids)
    _bound_bpe_memo(tokenizer)
    return result


BPE_MEMO_SIZE = 1 << 17


def _bound_bpe_memo(tokenizer, size: int = BPE_MEMO_SIZE) -> None:
    """`SimpleTokenizer.bpe` memoises every distinct word it meets, without a bound: over a full data set's texts
    (millions of distinct words) that dict would grow with the corpus in every process. Past `size` words it
    starts again from its special tokens (stored as themselves); the frequent words come back within a few texts."""
    if len(tokenizer.cache) > size:
        tokenizer.cache = {word: bpe for word, bpe in tokenizer.cache.items() if word == bpe}


def _line_prefixes(text: str, size: int):
    """Growing prefixes of `text` that end just after a line break, then `text` itself. open_clip's cleaning
    (ftfy fixes a text line by line, each line on its own or given what came before; HTML entities, whitespace and
    case are local) turns such a prefix into a prefix of the cleaned text, ending between words: its ids are the
    first ids of the whole text's, so a long text is cleaned only as far as its context reaches."""
    while size < len(text):
        cut = text.find("\n", size)
        if cut < 0:
            break
        yield text[: cut + 1]
        size = 2 * (cut + 1)
    yield text


__all__ = ["TEXT_NEIGHBOR_TOKENIZER_DIR", "clip_text_ids", "load_text_neighbor_tokenizer", "text_neighbor_ids"]
