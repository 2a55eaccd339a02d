"""The processor, the collator, the data report and the checkpoint checks with a neighbour bridge, on real WikiWeb2M
pages (`../shared/data/realwiki`): a bridged example holds `bridge_num_latents` placeholders whatever its neighbour
count, a bridged model reads the processor's batches, and cache-fed and raw inputs give the same logits."""

import pytest
import torch

from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from processing.page_graph import PageGraph
from processing.processing_mmgl import MMGLProcessor
from processing.training.checkpoint_design import contradictions
from processing.training.data_report import neighbor_tokens
from tests.modeling_helpers import TINY_CLIP, TINY_OPT
from tests.test_processor import image_processor, make_processor, tokenizer  # noqa: F401 (fixtures)

LATENTS = 7


@pytest.fixture(scope="module")
def real_page(realwiki_dir):
    from processing.data.wikiweb2m import iter_pages

    rows = list(iter_pages(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz")))
    graph = PageGraph.from_wikiweb2m(max(rows, key=lambda row: len(row["section_title"])))
    images = str(realwiki_dir / "images")
    # A target whose page has images on disk, so that every design has image slots to bridge.
    section = next(s for s in graph.sample_sections() if graph.image_nodes)
    return graph, section, images


def summary_start(processor, example) -> int:
    prompt = processor._prompt_ids()["summary"]
    ids = example["input_ids"].tolist()
    return next(i for i in range(len(ids)) if ids[i : i + len(prompt)] == prompt.tolist())


def budgets_processor(tokenizer, image_processor, encoding, bridge, texts, images):  # noqa: F811
    return make_processor(tokenizer, image_processor, "all", encoding, neighbor_bridge=bridge,
                          bridge_num_latents=LATENTS, max_text_neighbors=texts, max_image_neighbors=images,
                          max_source_length=100_000, max_target_length=256)  # no truncation


@pytest.mark.parametrize("bridge", ["linear", "perceiver", "qformer"])
def test_sa_e_input_length_is_constant_with_a_bridge(real_page, tokenizer, image_processor, bridge):  # noqa: F811
    graph, section, images = real_page
    lengths, placeholders = [], []
    for texts, num_images in ((1, 1), (4, 2), (11, 5)):
        processor = budgets_processor(tokenizer, image_processor, "sa_e", bridge, texts, num_images)
        example = processor.build_example(graph, section, image_dir=images)
        lengths.append(len(example["input_ids"]))
        placeholders.append(int((example["input_ids"] == processor.neighbor_token_id).sum()))
        real = len(processor.select_neighbors(graph, section).texts) + int(example["image_neighbor_mask"].sum())
        assert real > 0
        assert neighbor_tokens(processor, example) == placeholders[-1]
    if bridge == "linear":
        assert lengths[0] < lengths[1] < lengths[2] and placeholders[0] < placeholders[1] < placeholders[2]
    else:
        assert len(set(lengths)) == 1 and placeholders == [LATENTS] * 3


@pytest.mark.parametrize("bridge", ["perceiver", "qformer"])
def test_sa_te_bridges_only_its_images_in_one_block_before_the_summary(real_page, tokenizer, image_processor, bridge):  # noqa: F811
    graph, section, images = real_page
    linear = budgets_processor(tokenizer, image_processor, "sa_te", "linear", 11, 5)
    bridged = budgets_processor(tokenizer, image_processor, "sa_te", bridge, 11, 5)
    with_images = bridged.build_example(graph, section, image_dir=images)
    assert int(with_images["image_neighbor_mask"].sum()) > 0 and "text_neighbor_mask" not in with_images
    ids = with_images["input_ids"]
    positions = (ids == bridged.neighbor_token_id).nonzero().flatten().tolist()
    start = summary_start(bridged, with_images)
    assert positions == list(range(start - LATENTS, start)), "one block, right before ' Summary:'"
    # The texts are the linear layout's raw tokens, placeholders aside.
    plain = linear.build_example(graph, section, image_dir=images)["input_ids"]
    assert torch.equal(ids[ids != bridged.neighbor_token_id], plain[plain != linear.neighbor_token_id])
    # No real image (none on disk): nothing to bridge, no placeholders.
    without_images = bridged.build_example(graph, section, image_dir=None)
    assert int(without_images["image_neighbor_mask"].sum()) == 0
    assert int((without_images["input_ids"] == bridged.neighbor_token_id).sum()) == 0


def test_ca_e_neighbour_tokens_count_the_bridge(real_page, tokenizer, image_processor):  # noqa: F811
    graph, section, images = real_page
    linear = budgets_processor(tokenizer, image_processor, "ca_e", "linear", 11, 5)
    bridged = budgets_processor(tokenizer, image_processor, "ca_e", "qformer", 11, 5)
    example = linear.build_example(graph, section, image_dir=images)
    texts, real_images = int(example["text_neighbor_mask"].sum()), int(example["image_neighbor_mask"].sum())
    assert neighbor_tokens(linear, example) == texts * linear.text_neighbor_num_tokens + real_images * linear.image_neighbor_num_tokens
    assert neighbor_tokens(bridged, bridged.build_example(graph, section, image_dir=images)) == LATENTS
    assert torch.equal(example["input_ids"], bridged.build_example(graph, section, image_dir=images)["input_ids"])


def bridged_model(processor, mode, bridge):
    torch.manual_seed(0)
    config = MMGLConfig(
        **dict(TINY_OPT, vocab_size=len(processor.tokenizer), max_position_embeddings=2048),
        neighbor_mode=mode, neighbor_token_id=processor.neighbor_token_id, text_neighbor_embed_dim=TINY_CLIP["embed_dim"],
        image_neighbor_embed_dim=TINY_CLIP["embed_dim"], max_text_neighbors=processor.max_text_neighbors,
        max_image_neighbors=processor.max_image_neighbors, text_neighbor_num_tokens=processor.text_neighbor_num_tokens,
        image_neighbor_num_tokens=processor.image_neighbor_num_tokens, position_encoding="sequence",
        cross_attention_interval=2, neighbor_encoder_config=TINY_CLIP, neighbor_bridge=bridge,
        bridge_num_latents=LATENTS,
    )
    model = MMGLForConditionalGeneration(config).eval()
    for name, param in model.named_parameters():
        if "alpha_" in name:  # open the gates so that the neighbours reach the logits
            param.data.fill_(1.0)
    return model


class DictCache:
    """An embedding cache holding, for each text and resolved image path, the in-model encoder's embedding."""

    embed_dim = TINY_CLIP["embed_dim"]

    def __init__(self):
        self.texts, self.images = {}, {}

    def get_text(self, text):
        return self.texts[text]

    def get_image(self, path):
        return self.images.get(str(path))


@pytest.mark.parametrize("encoding,bridge", [("sa_e", "perceiver"), ("ca_e", "qformer"), ("sa_te", "qformer"),
                                             ("sa_e", "qformer")])
def test_cache_fed_and_raw_batches_give_the_same_logits(real_page, tokenizer, image_processor, encoding, bridge):  # noqa: F811
    graph, _, images = real_page
    processor = make_processor(tokenizer, image_processor, "all", encoding, neighbor_bridge=bridge,
                               bridge_num_latents=LATENTS, max_source_length=1024, max_target_length=64)
    model = bridged_model(processor, "cross_attention" if encoding == "ca_e" else "self_attention", bridge)
    processor.check_model_config(model.config, embed_dim=TINY_CLIP["embed_dim"])
    sections = graph.sample_sections()[:3]
    raw = [processor.build_example(graph, s, image_dir=images) for s in sections]
    cache, folder = DictCache(), processor.image_folder(images)
    with torch.no_grad():
        for s, example in zip(sections, raw):
            selection = processor.select_neighbors(graph, s)
            if "text_neighbor_input_ids" in example:
                for text, embedding in zip(selection.texts, model.neighbor_encoder.encode_text(example["text_neighbor_input_ids"])):
                    cache.texts[text] = embedding
            pixels = model.neighbor_encoder.encode_image(example["image_neighbor_pixel_values"])
            for ref, embedding, real in zip(selection.image_refs, pixels, example["image_neighbor_mask"]):
                if real:
                    cache.images[str(folder.resolve(ref))] = embedding
        cached = [processor.build_example(graph, s, embedding_cache=cache, image_dir=images) for s in sections]
        collate = processor.data_collator()
        raw_batch, cached_batch = collate(raw), collate(cached)
        assert "image_neighbor_embeds" in cached_batch and "image_neighbor_pixel_values" in raw_batch
        assert torch.equal(raw_batch["input_ids"], cached_batch["input_ids"])
        from_raw = model(**raw_batch).logits
        torch.testing.assert_close(model(**cached_batch).logits, from_raw, atol=1e-5, rtol=1e-5)
        # And the neighbours matter: other image embeddings, other logits.
        other = dict(cached_batch, image_neighbor_embeds=torch.randn_like(cached_batch["image_neighbor_embeds"]))
        assert not torch.equal(model(**other).logits, from_raw)


def test_model_and_processor_must_agree_on_the_bridge(tokenizer, image_processor):  # noqa: F811
    processor = make_processor(tokenizer, image_processor, "all", "sa_e", neighbor_bridge="perceiver",
                               bridge_num_latents=LATENTS)
    for bridge, latents, problem in (("linear", LATENTS, "neighbor_bridge: processor 'perceiver', model 'linear'"),
                                     ("perceiver", 3, "bridge_num_latents: processor 7, model 3")):
        config = MMGLConfig(**TINY_OPT, neighbor_mode="self_attention", neighbor_token_id=processor.neighbor_token_id,
                            max_text_neighbors=11, max_image_neighbors=5, text_neighbor_num_tokens=2,
                            image_neighbor_num_tokens=3, neighbor_bridge=bridge, bridge_num_latents=latents)
        with pytest.raises(ValueError, match=problem):
            processor.check_model_config(config)


def test_checkpoint_files_that_disagree_on_the_bridge_are_named():
    config = {"neighbor_mode": "self_attention", "neighbor_bridge": "qformer", "bridge_num_latents": 8}
    processor = {"context": "all", "neighbor_encoding": "sa_e", "neighbor_bridge": "perceiver", "bridge_num_latents": 8}
    assert contradictions(config, processor) == [
        "neighbor_bridge: processor_config.json 'perceiver', config.json 'qformer'"]
    processor["neighbor_bridge"] = "qformer"
    assert contradictions(config, dict(processor, bridge_num_latents=4)) == [
        "bridge_num_latents: processor_config.json 4, config.json 8"]
    assert contradictions(config, processor) == []
    # Files written before the switch have no bridge at all: that is `linear` on both sides.
    assert contradictions({"neighbor_mode": "self_attention"}, {"context": "all", "neighbor_encoding": "sa_e"}) == []


def test_save_load_and_invalid_options(tokenizer, image_processor, tmp_path):  # noqa: F811
    processor = make_processor(tokenizer, image_processor, "all", "sa_te", neighbor_bridge="qformer",
                               bridge_num_latents=LATENTS)
    processor.save_pretrained(tmp_path)
    loaded = MMGLProcessor.from_pretrained(tmp_path)
    assert (loaded.neighbor_bridge, loaded.bridge_num_latents) == ("qformer", LATENTS)
    with pytest.raises(ValueError, match="neighbor_bridge must be one of"):
        make_processor(tokenizer, image_processor, "all", "sa_e", neighbor_bridge="resampler")
    with pytest.raises(ValueError, match="bridge_num_latents must be an int >= 1"):
        make_processor(tokenizer, image_processor, "all", "sa_e", neighbor_bridge="perceiver", bridge_num_latents=0)
    with pytest.raises(ValueError, match="'sa_te' with context 'text_only' has none"):
        make_processor(tokenizer, image_processor, "text_only", "sa_te", neighbor_bridge="perceiver")
