"""What must agree across tools, checked before any work: a processor and its model, the sequence lengths and the
model's positions, and the cache builder's embeddings and the in-model encoder's (same wrapper, same preprocessing)."""
import pytest
import torch
from PIL import Image

import run_summarization
from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
from processing.data.bpe_tokenizer import train_bpe_tokenizer
from processing.data.build_embedding_cache import build_embedding_cache
from processing.image_source import clip_image_processor
from processing.page_graph import PageGraph
from processing.processing_mmgl import MMGLProcessor
from processing.training.export import attach_neighbor_encoder
from tests.modeling_helpers import TINY_CLIP, TINY_OPT
from processing.data.neighbor_inputs import processor_neighbor_inputs


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(["A cat sat on a mat. Dogs bark. Context: Section: Summary:"] * 20, vocab_size=300)


def page(image_path):
    return {
        "title": "Cats",
        "description": "Cats are small animals.",
        "sections": [
            {"title": "Intro", "text": "Cats purr. They sleep a lot."},
            {"title": "Looks", "text": "Cats have fur. It is soft.", "images": [{"path": str(image_path), "caption": "a cat"}]},
        ],
    }


def processor_for(tokenizer, **kwargs):
    return MMGLProcessor(clip_image_processor("ViT-B-32", TINY_CLIP), tokenizer, context="all", neighbor_encoding="sa_e",
                         max_text_neighbors=4, max_image_neighbors=2, neighbor_context_length=16, **kwargs)


def model_for(processor, **overrides):
    config = dict(TINY_OPT, vocab_size=len(processor.tokenizer), neighbor_mode="self_attention",
                  neighbor_token_id=processor.neighbor_token_id, text_neighbor_embed_dim=32, image_neighbor_embed_dim=32,
                  max_text_neighbors=4, max_image_neighbors=2, neighbor_encoder_name="ViT-B-32",
                  neighbor_encoder_config=TINY_CLIP)
    config.update(overrides)
    return MMGLForConditionalGeneration(MMGLConfig(**config)).eval()


def test_processor_and_model_that_disagree_are_refused_naming_both(tokenizer):
    processor = processor_for(tokenizer)
    processor.check_model_config(model_for(processor).config, embed_dim=32)  # agreeing pair: no error
    for overrides, message in [
        ({"text_neighbor_num_tokens": 2}, "text_neighbor_num_tokens: processor 4, model 2"),
        ({"max_image_neighbors": 5}, "max_image_neighbors: processor 2, model 5"),
        ({"neighbor_token_id": 7}, f"neighbor_token_id: processor {processor.neighbor_token_id}, model 7"),
        ({"neighbor_mode": "cross_attention"}, "needs 'self_attention', model has 'cross_attention'"),
    ]:
        with pytest.raises(ValueError, match=message):
            processor.check_model_config(model_for(processor, **overrides).config)
    with pytest.raises(ValueError, match="text_neighbor_embed_dim: processor 16, model 32"):
        processor.check_model_config(model_for(processor).config, embed_dim=16)  # e.g. a cache of another width


def test_sequence_longer_than_the_positions_is_refused_before_any_work(tmp_path):
    args = ["--config_overrides", "hidden_size=32,num_hidden_layers=2,ffn_dim=64,num_attention_heads=4,"
            "max_position_embeddings=100", "--train_files", str(tmp_path / "never-read.tfrecord"),
            "--output_dir", str(tmp_path / "out"), "--do_train", "--max_source_length", "80", "--max_target_length", "16"]
    with pytest.raises(ValueError, match=r"--max_source_length 80 \+ --max_target_length 16 \+ 20 virtual tokens "
                                         r"\(--tuning prefix\) = 116 tokens, but the model has max_position_embeddings=100"):
        run_summarization.main(args + ["--tuning", "prefix", "--neighbor_encoding", "sa_e"])
    with pytest.raises(ValueError, match="= 96 tokens, but the model has max_position_embeddings=90"):
        run_summarization.main([a.replace("max_position_embeddings=100", "max_position_embeddings=90") for a in args])
    assert not (tmp_path / "out").exists()  # refused before any work


def test_cache_equals_the_in_model_encoder_for_the_same_file_and_text(tokenizer, tmp_path):
    """float32 storage: the cache builder and the model run one wrapper on one preprocessing, so they agree to 1e-5."""
    image = tmp_path / "cat.png"
    Image.radial_gradient("L").convert("RGB").resize((50, 37)).save(image)
    processor = processor_for(tokenizer)
    inputs = processor_neighbor_inputs(processor, [(page(image), 1)])
    assert inputs.image_files == [str(image)] and inputs.texts
    encoder = MMGLNeighborEncoder.from_settings("ViT-B-32", model_config=TINY_CLIP)
    cache = build_embedding_cache(tmp_path / "cache", inputs.texts, inputs.image_files, encoder=encoder,
                                  dtype="float32", progress=False)
    model = attach_neighbor_encoder(model_for(processor), encoder)
    raw = processor.build_example(PageGraph.from_dict(page(image)), 1)
    cached = processor.build_example(PageGraph.from_dict(page(image)), 1, embedding_cache=cache)
    with torch.no_grad():
        torch.testing.assert_close(model.neighbor_encoder.encode_text(raw["text_neighbor_input_ids"]),
                                   cached["text_neighbor_embeds"], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.neighbor_encoder.encode_image(raw["image_neighbor_pixel_values"]),
                                   cached["image_neighbor_embeds"], atol=1e-5, rtol=0)
    # A model built from scratch with the same settings holds the same (seeded) encoder: no attach needed.
    fresh = model_for(processor)
    assert fresh.neighbor_encoder.identity()["weights_sha256"] == encoder.identity()["weights_sha256"]
