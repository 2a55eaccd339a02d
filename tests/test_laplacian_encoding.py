"""Laplacian position encodings computed once per example: the processor stores them, the collator pads them
like the adjacency, the model only projects them (random sign flips while training, no decomposition in forward)."""
import pytest
import torch

from processing.laplacian_encoding import slot_laplacian_eigenvectors
from tests.modeling_helpers import laplacian_eigenvectors
from processing.page_graph import PageGraph
from processing.processing_mmgl import MMGLProcessor
from tests.modeling_helpers import labels_for, neighbor_batch, tiny_config, tiny_model
from tests.test_processor import TARGET, image_dir, image_processor, known_row, make_processor, tokenizer  # noqa: F401

K = 3


def test_slot_eigenvectors_drop_masked_slots():
    # A path 0-1-2-3 plus a masked slot 4 that the adjacency (wrongly) connects: it must not count.
    adjacency = torch.zeros(5, 5)
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 4)]:
        adjacency[a, b] = adjacency[b, a] = 1
    out = slot_laplacian_eigenvectors(adjacency, [1, 1, 1, 1, 0], K)
    path = torch.tensor([[0, 1, 2], [1, 2, 3]])
    torch.testing.assert_close(out[:4], laplacian_eigenvectors(path, 4, K), atol=0, rtol=0)
    assert out[4].abs().sum() == 0


def test_processor_example_holds_the_slot_graphs_eigenvectors(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_wikiweb2m(known_row())
    processor = make_processor(tokenizer, image_processor, "all", "sa_e", lpe_k=K)
    assert "neighbor_laplacian_eigenvectors" in processor.model_input_names
    example = processor.build_example(graph, TARGET, image_dir=image_dir)
    adjacency, eigenvectors = example["neighbor_adjacency"], example["neighbor_laplacian_eigenvectors"]
    num_nodes = adjacency.shape[0]
    assert eigenvectors.shape == (num_nodes, K)
    # Numbers: the eigenvectors of L = I - D^-1/2 A D^-1/2 over the real slots, orthonormal columns.
    slot_mask = torch.cat([example["text_neighbor_mask"], example["image_neighbor_mask"]]).bool()
    real = slot_mask.nonzero(as_tuple=True)[0]
    sub = adjacency[real][:, real].double()
    degree = sub.sum(1)
    scale = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    laplacian = torch.eye(len(real), dtype=torch.float64) - scale[:, None] * sub * scale
    values = torch.linalg.eigvalsh(laplacian)
    vectors = eigenvectors[real].double()
    for column in range(K):
        torch.testing.assert_close(laplacian @ vectors[:, column], values[column + 1] * vectors[:, column], atol=1e-5, rtol=0)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(K, dtype=torch.float64), atol=1e-5, rtol=0)
    # Without lpe_k nothing is computed.
    plain = make_processor(tokenizer, image_processor, "all", "sa_e").build_example(graph, TARGET, image_dir=image_dir)
    assert "neighbor_laplacian_eigenvectors" not in plain


def test_collator_pads_eigenvectors_node_by_node(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_wikiweb2m(known_row())
    big = make_processor(tokenizer, image_processor, "all", "sa_e", lpe_k=K)
    small = make_processor(tokenizer, image_processor, "all", "sa_e", lpe_k=K, max_text_neighbors=2, max_image_neighbors=1)
    a = big.build_example(graph, TARGET, image_dir=image_dir)
    b = small.build_example(graph, 4, image_dir=image_dir)
    batch = big.data_collator()([a, b])
    padded = batch["neighbor_laplacian_eigenvectors"]
    num_text = batch["text_neighbor_mask"].shape[1]
    assert padded.shape == (2, batch["neighbor_adjacency"].shape[1], K)
    torch.testing.assert_close(padded[0], a["neighbor_laplacian_eigenvectors"], atol=0, rtol=0)
    # b: 2 text slots stay at 0, 1; its image slot moves to num_text; everything else is zero padding.
    keep = torch.tensor([0, 1, num_text])
    torch.testing.assert_close(padded[1][keep], b["neighbor_laplacian_eigenvectors"], atol=0, rtol=0)
    assert float(padded[1].abs().sum()) == pytest.approx(float(b["neighbor_laplacian_eigenvectors"].abs().sum()))


def test_model_projects_given_eigenvectors_without_decomposing(monkeypatch):
    model = tiny_model("self_attention", "laplacian")
    batch = neighbor_batch(model.config)

    def no_decomposition(*args, **kwargs):
        raise AssertionError("the forward pass must not decompose a Laplacian")

    monkeypatch.setattr(torch.linalg, "eigh", no_decomposition)
    with torch.no_grad():
        logits = model(**batch).logits
        # The encoding is the projection of exactly the given eigenvectors: other eigenvectors, other logits.
        other = model(**dict(batch, neighbor_laplacian_eigenvectors=batch["neighbor_laplacian_eigenvectors"].flip(-1))).logits
    assert (logits - other).abs().max() > 1e-4
    encoder = model.position_encoding
    node_mask = torch.cat([batch["text_neighbor_mask"], batch["image_neighbor_mask"]], 1)
    expected = encoder.projection(batch["neighbor_laplacian_eigenvectors"])
    got = encoder(torch.zeros(2, 5, 32), node_mask, None, None, batch["neighbor_laplacian_eigenvectors"])
    torch.testing.assert_close(got, expected)


def test_training_flips_signs_at_random_eval_does_not():
    model = tiny_model("self_attention", "laplacian")
    eigenvectors = neighbor_batch(model.config)["neighbor_laplacian_eigenvectors"]
    encoder = model.position_encoding
    states = torch.zeros(2, 5, 32)
    encoder.eval()
    assert torch.equal(encoder(states, None, None, None, eigenvectors), encoder(states, None, None, None, eigenvectors))
    encoder.train()
    torch.manual_seed(0)
    seen = {tuple(encoder(states, None, None, None, eigenvectors)[0, 0].tolist()) for _ in range(16)}
    assert len(seen) > 1, "sign flips are a training-time augmentation"
    # Every training output is the projection of +/- each eigenvector column.
    weight, bias = encoder.projection.weight, encoder.projection.bias
    for _ in range(4):
        out = encoder(states, None, None, None, eigenvectors)
        # Solve for the signs of row 0's columns and check they are +/-1.
        nonzero = eigenvectors[0, 0].abs() > 1e-6
        signs = torch.linalg.lstsq(weight[:, nonzero] * eigenvectors[0, 0, nonzero], (out[0, 0] - bias)[:, None]).solution
        torch.testing.assert_close(signs.abs().squeeze(1), torch.ones(int(nonzero.sum())), atol=1e-4, rtol=0)


def test_model_without_eigenvectors_is_refused_with_the_key_named():
    model = tiny_model("cross_attention", "laplacian")
    batch = neighbor_batch(model.config)
    del batch["neighbor_laplacian_eigenvectors"]
    with pytest.raises(ValueError, match=r"needs `neighbor_laplacian_eigenvectors` of shape \(2, 5, 4\), got None"):
        model(**batch)


def test_training_step_trains_the_projection():
    model = tiny_model("self_attention", "laplacian").train()
    batch = neighbor_batch(model.config)
    model(**batch, labels=labels_for(batch)).loss.backward()
    assert model.position_encoding.projection.weight.grad.abs().sum() > 0


def test_processor_and_model_must_agree_on_lpe_k(tokenizer, image_processor):
    processor = make_processor(tokenizer, image_processor, "all", "sa_e", lpe_k=K)
    config = tiny_config("self_attention", "laplacian", lpe_k=K, max_text_neighbors=processor.max_text_neighbors,
                         max_image_neighbors=processor.max_image_neighbors)
    mismatch = tiny_config("self_attention", "laplacian", lpe_k=K + 1)
    with pytest.raises(ValueError, match=r"lpe_k: processor 3, model 4"):
        processor.check_model_config(mismatch)
    without = make_processor(tokenizer, image_processor, "all", "sa_e")
    with pytest.raises(ValueError, match=r"lpe_k: processor None, model 3"):
        without.check_model_config(config)
    with pytest.raises(ValueError, match="lpe_k must be an int >= 1"):
        make_processor(tokenizer, image_processor, "all", "sa_e", lpe_k=0)


def test_lpe_k_survives_save_and_load(tokenizer, image_processor, tmp_path):
    make_processor(tokenizer, image_processor, "all", "sa_e", lpe_k=K).save_pretrained(tmp_path)
    assert MMGLProcessor.from_pretrained(tmp_path).lpe_k == K
