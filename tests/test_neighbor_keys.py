"""The neighbour-tensor key names agree across the processor (what it writes), the collator (what it pads) and the
model (what its `forward` takes): a key spelt differently in one of them would be dropped without an error."""
import inspect

import pytest
import torch

from modeling_mmgl import MMGLForConditionalGeneration
from processing.collator import ADJACENCY_KEY, EIGENVECTORS_KEY, IMAGE_SLOT_KEYS, TEXT_SLOT_KEYS
from processing.page_graph import PageGraph

from .test_processor import FakeEmbeddingCache, image_dir, image_processor, known_row, make_processor, tokenizer  # noqa: F401

COLLATOR_KEYS = {*TEXT_SLOT_KEYS, *IMAGE_SLOT_KEYS, ADJACENCY_KEY, EIGENVECTORS_KEY}
FORWARD = set(inspect.signature(MMGLForConditionalGeneration.forward).parameters)
# What `forward` takes about neighbours besides the tensors a processor writes: the reused cross-attention cache.
MODEL_ONLY = {"neighbor_key_values"}


def test_model_forward_takes_exactly_the_collator_keys():
    model_neighbor_params = {name for name in FORWARD if "neighbor" in name} - MODEL_ONLY
    assert model_neighbor_params == COLLATOR_KEYS
    assert len(COLLATOR_KEYS) == 8


def test_processor_declares_the_collator_keys(tokenizer, image_processor):  # noqa: F811
    processor = make_processor(tokenizer, image_processor, "all", "sa_e", lpe_k=2)
    names = processor.model_input_names
    assert set(names) - {"input_ids", "attention_mask", "labels"} == COLLATOR_KEYS
    assert set(names) <= FORWARD


@pytest.mark.parametrize("encoding", ["sa_e", "sa_te", "ca_e"])
@pytest.mark.parametrize("cached", [False, True])
def test_processor_batches_feed_forward_by_name(tokenizer, image_processor, image_dir, encoding, cached):  # noqa: F811
    """Real examples, raw (pixels, neighbour token ids) and from an embedding cache, collated: every key the batch
    holds is a `forward` argument, and every neighbour key is one the collator pads."""
    processor = make_processor(tokenizer, image_processor, "all", encoding, lpe_k=2)
    graph = PageGraph.from_wikiweb2m(known_row())
    cache = FakeEmbeddingCache({name: torch.ones(8) for name in ("Lead.png", "Hist1.png", "Early.png")}) if cached else None
    examples = [processor.build_example(graph, t, image_dir=image_dir, embedding_cache=cache) for t in (1, 2)]
    batch = processor.data_collator()(examples)
    assert set(batch) <= FORWARD
    neighbor_keys = {key for key in batch if "neighbor" in key}
    assert neighbor_keys <= COLLATOR_KEYS and ADJACENCY_KEY in neighbor_keys and EIGENVECTORS_KEY in neighbor_keys
    assert ("image_neighbor_embeds" if cached else "image_neighbor_pixel_values") in neighbor_keys
