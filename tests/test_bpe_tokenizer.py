"""The offline byte-level BPE: OPT's special tokens and conventions, lossless on any text."""

from processing.data.bpe_tokenizer import train_bpe_tokenizer, wikiweb2m_texts


def test_opt_conventions_and_round_trip():
    tokenizer = train_bpe_tokenizer(["The flag of Kelvo is red.", "Kelvo lies close to Pessa."] * 5, vocab_size=300)
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer.bos_token == tokenizer.eos_token == "</s>" and tokenizer.pad_token_id == 1
    for text in ("The flag of Kelvo is red.", "Ünïcödé, never seen: 東京 🙂"):  # unseen bytes stay encodable
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    assert len(tokenizer("The flag of Kelvo is red.")["input_ids"]) < len("The flag of Kelvo is red.")  # merges learnt


def test_wikiweb2m_texts_reads_every_text_field():
    row = {"page_title": "Kelvo", "clean_page_description": "A town.", "section_title": ["Flag"],
           "section_text": ["The flag."], "section_image_captions": [["A red flag.", "Another."]]}
    assert list(wikiweb2m_texts([row])) == ["Kelvo\nA town.", "Flag", "The flag.", "A red flag.", "Another."]
