"""An offline byte-level BPE tokenizer with OPT's special tokens, for models trained from scratch without the Hub.

OPT's conventions: `</s>` is both bos and eos, `<pad>` pads, `<unk>` is unknown (never produced by a
byte-level BPE, kept for the vocabulary layout). Used by `run_summarization.py` when no tokenizer is given, by
the benchmarks and by the tests.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from processing.mapped_pages import ReleaseEvery, release_mapped_files, track_table

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in OPT's vocabulary


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, show_progress: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most `vocab_size` tokens trained on `texts`, wrapped as a transformers tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def wikiweb2m_texts(pages) -> Iterable[str]:
    """Every text of WikiWeb2M rows a model reads: titles, descriptions, section texts and image captions (a
    memory-mapped table's pages are given back as it goes: `processing.mapped_pages`)."""
    track_table(pages)
    release = ReleaseEvery()
    for row in pages:
        if release.due():
            release_mapped_files()
        yield row["page_title"] + "\n" + row["clean_page_description"]
        yield from row["section_title"]
        yield from row["section_text"]
        for captions in row["section_image_captions"]:
            yield from captions
