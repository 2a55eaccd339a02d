"""The target-aware graph (`graph_target_feature="distance"`): each slot's hops from the target section in the
page's tree, value by value on a hand-made page, through processor, collator, model, save / load; the default
("none") adds nothing."""
import io

import pytest
import torch
from PIL import Image

from modeling_mmgl import MMGLForConditionalGeneration
from processing.graph_projection import TARGET_DISTANCE_CAP, target_distances
from processing.page_graph import PageGraph
from processing.processing_mmgl import MMGLProcessor
from tests.modeling_helpers import labels_for, neighbor_batch, tiny_config, tiny_model
from tests.test_processor import image_processor, make_processor, tokenizer  # noqa: F401


def _png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def market_page() -> PageGraph:
    """Sections: 0 Introduction (lead) > 1 Market > 2 Stalls (the target's child); 0 > 3 Harbour > 4 Stalls (a
    decoy: same template, another parent); 0 > 5 Old town. Market has an image. Target: Market (section 1)."""
    def section(title, text, parent, images=()):
        return {"title": title, "text": text, "parent": parent, "images": list(images)}

    return PageGraph.from_dict({"title": "Kelvo", "description": "Kelvo is a town. It is small.", "sections": [
        section("Introduction", "Kelvo is a town. It lies in a valley.", -1),
        section("Market", "The market sells honey. It opens early.", 0,
                [{"image": _png((200, 10, 10)), "caption": "The market square."}]),
        section("Stalls", "Most stalls there sell honey. They are small.", 1),
        section("Harbour", "Boats are tied up. The quay is old.", 0),
        section("Stalls", "Most stalls there sell salt. They are small.", 3),
        section("Old town", "The lanes are narrow. The squares are small.", 0),
    ]})


def test_distances_value_by_value_on_a_hand_made_page():
    graph = market_page()
    page, (lead, market, stalls, harbour, decoy, old_town) = graph.page_node, graph.section_nodes
    (image,) = graph.image_nodes[1]
    target = market
    slots = [page, lead, stalls, harbour, decoy, old_town, image, market]
    got = target_distances(graph, target, slots, [1] * len(slots)).tolist()
    # page: market > lead > page; the child 1, the lead (parent) 1, the lead's other children 2, the decoy 3, the
    # target's own image 1 and the target itself 0.
    assert got == [2, 1, 1, 2, 3, 2, 1, 0]
    # Masked slots get the cap; a target deep in a long chain clamps at the cap.
    assert target_distances(graph, target, [stalls, decoy], [1, 0]).tolist() == [1, TARGET_DISTANCE_CAP]
    chain = PageGraph.from_dict({"title": "Deep", "description": "", "sections": [
        {"title": f"S{i}", "text": f"Section {i} starts. It goes on.", "parent": i - 1} for i in range(12)]})
    far = target_distances(chain, chain.section_nodes[11], chain.section_nodes, [1] * 12).tolist()
    assert far == [TARGET_DISTANCE_CAP] * 5 + [6, 5, 4, 3, 2, 1, 0]
    # SA-TE: image slots stand for their sections; the target's own image is the target (0).
    assert target_distances(graph, target, [image], [1], images_stand_for_sections=True).tolist() == [0]


def test_processor_writes_the_distances_of_its_slots(tokenizer, image_processor):
    graph = market_page()
    processor = make_processor(tokenizer, image_processor, "all", "sa_e", graph_target_feature="distance",
                               max_text_neighbors=8)
    plain = make_processor(tokenizer, image_processor, "all", "sa_e", max_text_neighbors=8)
    assert "neighbor_target_distances" in processor.model_input_names
    assert "neighbor_target_distances" not in plain.model_input_names
    example = processor.build_example(graph, 1)
    selection = processor.select_neighbors(graph, 1)
    expected = {graph.page_node: 2, graph.section_nodes[0]: 1, graph.section_nodes[2]: 1, graph.section_nodes[3]: 2,
                graph.section_nodes[4]: 3, graph.section_nodes[5]: 2, graph.image_nodes[1][0]: 1}
    nodes = selection.text_nodes + selection.image_nodes
    assert example["neighbor_target_distances"].tolist() == [expected[n] for n in nodes]
    assert example["neighbor_target_distances"].dtype == torch.long
    # The default adds nothing and changes nothing else, tensor by tensor.
    default = plain.build_example(graph, 1)
    assert set(example) - set(default) == {"neighbor_target_distances"}
    for key, value in default.items():
        assert torch.equal(value, example[key]), key
    # SA-TE: image slots only, standing for their sections.
    sa_te = make_processor(tokenizer, image_processor, "all", "sa_te", graph_target_feature="distance")
    assert sa_te.build_example(graph, 1)["neighbor_target_distances"].tolist() == [0]


def test_collator_pads_distances_as_integers_node_by_node(tokenizer, image_processor):
    graph = market_page()
    processor = make_processor(tokenizer, image_processor, "all", "sa_e", graph_target_feature="distance",
                               max_text_neighbors=8)
    small = make_processor(tokenizer, image_processor, "all", "sa_e", graph_target_feature="distance",
                           max_text_neighbors=2)
    a, b = processor.build_example(graph, 1), small.build_example(graph, 3)
    batch = processor.data_collator()([a, b])
    padded = batch["neighbor_target_distances"]
    num_text = batch["text_neighbor_mask"].shape[1]
    assert padded.dtype == torch.long and padded.shape == batch["neighbor_adjacency"].shape[:2]
    nt_b = b["text_neighbor_mask"].shape[0]
    assert padded[1, :nt_b].tolist() == b["neighbor_target_distances"][:nt_b].tolist()
    assert padded[1, num_text:num_text + 1].tolist() == b["neighbor_target_distances"][nt_b:].tolist()
    assert padded[1, nt_b:num_text].tolist() == [0] * (num_text - nt_b)


def test_processor_save_load_and_model_agreement(tokenizer, image_processor, tmp_path):
    processor = make_processor(tokenizer, image_processor, "all", "sa_e", graph_target_feature="distance")
    processor.save_pretrained(tmp_path)
    assert MMGLProcessor.from_pretrained(tmp_path).graph_target_feature == "distance"
    config = tiny_config("self_attention", "laplacian", lpe_k=3, max_text_neighbors=processor.max_text_neighbors,
                         max_image_neighbors=processor.max_image_neighbors, graph_target_feature="distance")
    with pytest.raises(ValueError, match="graph_target_feature: processor 'distance', model 'none'"):
        processor.check_model_config(tiny_config("self_attention", "laplacian", lpe_k=3))
    assert config.graph_target_feature == "distance"
    with pytest.raises(ValueError, match="graph_target_feature must be one of"):
        make_processor(tokenizer, image_processor, "all", "sa_e", graph_target_feature="marker")


def _distances(config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TARGET_DISTANCE_CAP + 1, (2, config.max_text_neighbors + config.max_image_neighbors),
                         generator=generator)


@pytest.mark.parametrize("encoding", ["laplacian", "gnn"])
def test_model_uses_the_distances_and_the_default_is_unchanged(encoding, tmp_path):
    plain = tiny_model("self_attention", encoding)
    assert not any("target_distance" in k for k in plain.state_dict()), "default: no new weights"
    model = tiny_model("self_attention", encoding, graph_target_feature="distance")
    new = [k for k in model.state_dict() if k not in plain.state_dict()]
    assert new == ["position_encoding.target_distance.embeddings.weight"]
    model.load_state_dict(plain.state_dict(), strict=False)
    batch = neighbor_batch(model.config)
    # neighbor_batch sizes its slots 3 text + 2 image
    num_nodes = batch["neighbor_adjacency"].shape[1]
    distances = _distances(model.config)[:, :num_nodes]
    with torch.no_grad():
        base = plain(**batch).logits
        with_distance = model(**batch, neighbor_target_distances=distances).logits
        assert (with_distance - base).abs().max() > 1e-4, "the distances reach the logits"
        model.position_encoding.target_distance.embeddings.weight.zero_()
        assert torch.equal(model(**batch, neighbor_target_distances=distances).logits, base), "only an addition"
        with pytest.raises(ValueError, match="needs `neighbor_target_distances` of shape"):
            model(**batch)
    # The distances train, and survive save / load.
    model.train()
    loss = model(**batch, neighbor_target_distances=distances, labels=labels_for(batch)).loss
    loss.backward()
    assert model.position_encoding.target_distance.embeddings.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = MMGLForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.graph_target_feature == "distance"
    torch.testing.assert_close(loaded.position_encoding.target_distance.embeddings.weight,
                               model.position_encoding.target_distance.embeddings.weight, atol=0, rtol=0)


def test_config_refuses_distance_without_lpe_or_gnn():
    with pytest.raises(ValueError, match="feeds the 'laplacian' or 'gnn' position encoding"):
        tiny_config("self_attention", "sequence", graph_target_feature="distance")
