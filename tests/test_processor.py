"""Tests of the page graph, `MMGLProcessor` and `MMGLDataCollator` (CPU, offline, tiny tokenizers)."""
import io
import itertools
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from processing.data.bpe_tokenizer import train_bpe_tokenizer
from processing.collator import MMGLDataCollator
from processing.page_graph import PageGraph
from processing.data.sample_index import PageGraphIndex
from processing.design_space import CONTEXTS, NEIGHBOR_ENCODINGS
from processing.image_source import clip_image_processor
from processing.neighbor_selection import section_ranking
from processing.processing_mmgl import NEIGHBOR_TOKEN, MMGLProcessor
from tests.modeling_helpers import TINY_CLIP
from processing.data.token_store import build_token_cache
from processing.data.neighbor_inputs import processor_neighbor_inputs

COMBOS = list(itertools.product(CONTEXTS, NEIGHBOR_ENCODINGS))
K_TEXT, K_IMAGE = 2, 3  # different placeholder counts per modality, so the counts tell them apart
TARGET = 2
SUMMARY = "The first settlers were fishermen."


def _url(name):
    return f"https://upload.wikimedia.org/wikipedia/commons/a/ab/{name}"


def known_row():
    """A hand-built WikiWeb2M page row. Target: section 2 ("Early days"), whose summary also appears
    verbatim inside section 3's text and inside an image caption (both must be cut out)."""
    sections = [
        # title, text, summary, rest, parent, images [(file, caption)]
        ("Introduction", "Alpha is a town in Nowhere. It lies on the Beta river.", "Alpha is a town in Nowhere.",
         "It lies on the Beta river.", -1, [("Lead.png", "Alpha from the air")]),
        ("History", "History of Alpha began long ago. Settlers arrived by boat.", "History of Alpha began long ago.",
         "Settlers arrived by boat.", 0, [("Hist1.png", "Old harbour. " + SUMMARY), ("Hist2.png", "Old market")]),
        ("Early days", f"{SUMMARY} They built wooden huts near the water.", SUMMARY,
         "They built wooden huts near the water.", 1, [("Early.png", "A wooden hut")]),
        ("Modern era", f"Today Alpha has a ferry port. {SUMMARY} Tourism grows.", "Today Alpha has a ferry port.",
         f"{SUMMARY} Tourism grows.", 1, [("Modern.png", "The ferry")]),
        ("Geography", "Alpha is flat. The climate is mild.", "Alpha is flat.", "The climate is mild.", 0, []),
    ]
    return {
        "split": "train",
        "page_url": "https://en.wikipedia.org/wiki/Alpha",
        "page_title": "Alpha",
        "raw_page_description": "Alpha is a small town on the Beta river.",
        "clean_page_description": "Alpha is a small town on the Beta river.",
        "page_contains_images": 1,
        "section_title": [s[0] for s in sections],
        "section_text": [s[1] for s in sections],
        "section_raw_1st_sentence": [s[2] for s in sections],
        "section_clean_1st_sentence": [s[2] for s in sections],
        "section_rest_sentence": [s[3] for s in sections],
        "section_index": list(range(len(sections))),
        "section_depth": [0, 1, 2, 2, 1],
        "section_heading_level": [0, 2, 3, 3, 2],
        "section_parent_index": [s[4] for s in sections],
        "section_subsection_index": [[1, 4], [2, 3], [], [], []],
        "section_contains_table_or_list": [0] * 5,
        "section_contains_images": [int(bool(s[5])) for s in sections],
        "is_section_summarization_sample": [0, 1, 1, 1, 1],
        "section_image_url": [[_url(f) for f, _ in s[5]] for s in sections],
        "section_image_mime_type": [["image/png"] * len(s[5]) for s in sections],
        "section_image_alt_text": [[""] * len(s[5]) for s in sections],
        "section_image_raw_ref_desc": [[c for _, c in s[5]] for s in sections],
        "section_image_clean_ref_desc": [[c for _, c in s[5]] for s in sections],
        "section_image_captions": [[c for _, c in s[5]] for s in sections],
        "section_image_width": [[8] * len(s[5]) for s in sections],
        "section_image_height": [[8] * len(s[5]) for s in sections],
    }


# Node ids of the known page: page 0, section i -> 1 + i, then images in page order.
PAGE, SEC = 0, {i: 1 + i for i in range(5)}
LEAD, HIST1, HIST2, EARLY, MODERN = 6, 7, 8, 9, 10
# Documented order for target 2: page description, the target's captions, then per ranked section
# (parent 1, then 3, 0, 4 by distance) its text and its captions.
EXPECTED_TEXT_NODES = [PAGE, EARLY, SEC[1], HIST1, HIST2, SEC[3], MODERN, SEC[0], LEAD, SEC[4]]
EXPECTED_TEXTS = [
    "Alpha is a small town on the Beta river.",
    "A wooden hut",
    "History of Alpha began long ago. Settlers arrived by boat.",
    "Old harbour.",  # summary cut out of the caption
    "Old market",
    "Today Alpha has a ferry port. Tourism grows.",  # summary cut out of section 3
    "The ferry",
    "Alpha is a town in Nowhere. It lies on the Beta river.",
    "Alpha from the air",
    "Alpha is flat. The climate is mild.",
]
EXPECTED_IMAGE_NODES = [EARLY, HIST1, HIST2, MODERN, LEAD]  # Hist2.png is not on disk
EXPECTED_SLOTS = {
    # context: (text nodes, image nodes) before encoding (SA-TE makes the texts raw tokens)
    "section_only": ([], []),
    "section_all": ([EARLY], [EARLY]),
    "text_only": (EXPECTED_TEXT_NODES, []),
    "all": (EXPECTED_TEXT_NODES, EXPECTED_IMAGE_NODES),
}


@pytest.fixture(scope="module")
def tokenizer():
    row = known_row()
    texts = row["section_text"] + [row["clean_page_description"]] * 3 + ["Context: Section: Summary:"] * 5
    return train_bpe_tokenizer(texts, vocab_size=600)


@pytest.fixture(scope="module")
def image_processor():
    return clip_image_processor("ViT-B-32", TINY_CLIP)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    colours = {"Lead.png": (255, 0, 0), "Hist1.png": (0, 255, 0), "Early.png": (0, 0, 255), "Modern.png": (9, 9, 9)}
    for name, colour in colours.items():
        Image.new("RGB", (40, 30), colour).save(folder / name)
    return str(folder)


def make_processor(tokenizer, image_processor, context="all", encoding="sa_e", **kwargs):
    options = dict(
        text_neighbor_num_tokens=K_TEXT,
        image_neighbor_num_tokens=K_IMAGE,
        neighbor_context_length=16,
    )
    options.update(kwargs)
    return MMGLProcessor(image_processor, tokenizer, context=context, neighbor_encoding=encoding, **options)


class FakeEmbeddingCache:
    """The `EmbeddingCache` interface over dicts: text -> vector, image file name -> vector."""

    embed_dim = 8

    def __init__(self, images):
        self.images = images
        self.text_calls = []

    def get_text(self, text):
        self.text_calls.append(text)
        seed = sum(text.encode("utf-8")) % 1000
        return torch.arange(self.embed_dim, dtype=torch.float32) + seed

    def get_image(self, path):
        return self.images.get(os.path.basename(path))


def _placeholder_count(example, processor):
    return int((example["input_ids"] == processor.neighbor_token_id).sum())


def _check_example(processor, graph, section_idx, example, selection, tokenizer):
    """Invariants every example must satisfy: labels, placeholders, masks, leakage, shapes."""
    summary = graph.summaries[section_idx]
    input_ids, labels = example["input_ids"], example["labels"]
    assert input_ids.shape == labels.shape == example["attention_mask"].shape
    # Labels: exactly the summary + eos, at the very end.
    supervised = (labels != -100).nonzero().flatten()
    start = int(supervised[0])
    assert supervised.tolist() == list(range(start, len(labels)))
    assert torch.equal(labels[start:], input_ids[start:])
    assert int(labels[-1]) == tokenizer.eos_token_id
    assert tokenizer.decode(labels[start:-1]).strip() == summary
    # Placeholders: num_tokens per real neighbour, all before the summary; SA-E in one block, SA-TE in runs of
    # whole images (where each run goes is checked value by value in the SA-TE layout tests).
    enc = processor.neighbor_encoding
    n_text = len(selection.texts) if processor.has_text_slots else 0
    image_mask = example.get("image_neighbor_mask", torch.zeros(0, dtype=torch.long))
    expected = 0
    if enc == "sa_e":
        expected = K_TEXT * n_text + K_IMAGE * int(image_mask.sum())
    elif enc == "sa_te":
        expected = K_IMAGE * int(image_mask.sum())
    positions = (input_ids == processor.neighbor_token_id).nonzero().flatten()
    assert len(positions) == expected
    if expected:
        assert int(positions[-1]) < start
        if enc == "sa_e":
            assert positions.tolist() == list(range(int(positions[0]), int(positions[0]) + expected))  # contiguous
        else:
            run_starts = [0] + [i for i in range(1, len(positions)) if positions[i] != positions[i - 1] + 1]
            runs = [b - a for a, b in zip(run_starts, run_starts[1:] + [len(positions)])]
            assert all(run % K_IMAGE == 0 for run in runs), runs
    # Keys depend on the configuration only.
    assert ("text_neighbor_mask" in example) == processor.has_text_slots
    assert ("image_neighbor_mask" in example) == processor.has_image_slots
    if processor.has_text_slots:
        assert example["text_neighbor_mask"].tolist() == [1] * n_text
    n_slots = (n_text if processor.has_text_slots else 0) + len(image_mask)
    if "neighbor_adjacency" in example:
        adjacency = example["neighbor_adjacency"]
        assert adjacency.shape == (n_slots, n_slots)
        assert torch.equal(adjacency, adjacency.T) and float(adjacency.diagonal().abs().sum()) == 0.0
        masked = (image_mask == 0).nonzero().flatten() + (n_text if processor.has_text_slots else 0)
        assert float(adjacency[masked].abs().sum()) == 0.0
    # No summary leakage: not in the decoded input, not in any neighbour text.
    source = tokenizer.decode(input_ids[:start])
    assert summary not in source
    for text in selection.texts:
        assert summary not in text
    if enc == "sa_te":
        # Raw neighbour texts: truncation only drops a suffix in slot order; the texts kept appear by section, in
        # the documented order (the target's captions, the page description, then the sections by rank).
        at = [source.find(text) for text in selection.texts]
        found = [a >= 0 for a in at]
        assert found == sorted(found, reverse=True)
        groups = [section_idx, None] + section_ranking(graph, section_idx)
        rank = [groups.index(graph.nodes[node].section) for node in selection.text_nodes]
        kept = sorted((r, i) for i, r in enumerate(rank) if found[i])
        assert [at[i] for _, i in kept] == sorted(at[i] for _, i in kept)
        assert source.startswith(tokenizer.decode(processor.tokenizer.bos_token_id) + " " + processor.section_prompt)


# --------------------------------------------------------------------------------------------- graph


def test_page_graph_nodes_and_edges_value_by_value():
    graph = PageGraph.from_wikiweb2m(known_row())
    assert [n.kind for n in graph.nodes] == ["page"] + ["section"] * 5 + ["image"] * 5
    assert graph.section_nodes == [1, 2, 3, 4, 5]
    assert graph.image_nodes == [[LEAD], [HIST1, HIST2], [EARLY], [MODERN], []]
    assert graph.nodes[PAGE].text == "Alpha is a small town on the Beta river."
    assert graph.nodes[HIST2].text == "Old market" and graph.nodes[HIST2].image == _url("Hist2.png")
    assert graph.nodes[HIST2].section == 1 and graph.nodes[SEC[3]].section == 3
    assert graph.edges["page"] == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]
    assert graph.edges["section_order"] == [(1, 2), (2, 3), (3, 4), (4, 5)]
    assert graph.edges["parent_child"] == [(1, 2), (2, 3), (2, 4), (1, 5)]
    assert graph.edges["section_image"] == [(1, 6), (2, 7), (2, 8), (3, 9), (4, 10)]
    assert "image_caption" not in graph.edges  # captions are the image node's text
    assert graph.neighbors[SEC[2]] == {PAGE, SEC[1], SEC[3], EARLY}
    assert graph.summaries[TARGET] == SUMMARY
    assert graph.rest_texts[TARGET] == "They built wooden huts near the water."
    assert graph.sample_sections() == [1, 2, 3, 4]


def test_page_graph_from_dict_matches_wikiweb2m_adapter():
    row = known_row()
    page = {
        "title": "Alpha",
        "url": row["page_url"],
        "description": row["clean_page_description"],
        "sections": [
            {
                "title": row["section_title"][i],
                "text": row["section_text"][i],
                "summary": row["section_clean_1st_sentence"][i],
                "rest": row["section_rest_sentence"][i],
                "parent": row["section_parent_index"][i],
                "is_sample": bool(row["is_section_summarization_sample"][i]),
                "images": [{"url": u, "caption": c} for u, c in
                           zip(row["section_image_url"][i], row["section_image_clean_ref_desc"][i])],
            }
            for i in range(5)
        ],
    }
    a, b = PageGraph.from_wikiweb2m(row), PageGraph.from_dict(page)
    assert a.nodes == b.nodes and a.edges == b.edges
    assert a.summaries == b.summaries and a.rest_texts == b.rest_texts and a.is_sample == b.is_sample
    # A minimal dict: the summary is split off, parents default to none.
    flat = PageGraph.from_dict({"title": "T", "description": "D", "sections": [
        {"title": "A", "text": "One. Two three.", "images": [{"path": "x.png", "caption": "c"}]},
        {"title": "B", "text": "Four. Five."}]})
    assert flat.summaries == ["One.", "Four."] and flat.rest_texts == ["Two three.", "Five."]
    assert flat.edges["parent_child"] == [] and flat.nodes[3].image == "x.png"


def test_page_graph_errors_name_page_section_field(caplog):
    row = known_row()
    row["section_parent_index"] = [-1, 0, 2, 1, 0]  # section 2 is its own parent: repaired, not raised
    with caplog.at_level("WARNING", logger="processing.page_graph"):
        graph = PageGraph.from_wikiweb2m(row)
    assert graph.section_parents == [-1, 0, -1, 1, 0]
    assert re.search(r"Alpha.*section 2.*section_parent_index.*edge dropped", caplog.text)
    row = known_row()
    row["section_rest_sentence"] = row["section_rest_sentence"][:3]
    with pytest.raises(ValueError, match=r"field 'section_rest_sentence'.*3 values for 5 sections"):
        PageGraph.from_wikiweb2m(row)
    with pytest.raises(IndexError, match=r"Alpha.*section index 9"):
        PageGraph.from_wikiweb2m(known_row()).section_node(9)


@pytest.mark.parametrize("arrow", [False, True])
def test_page_graph_index_lookups(arrow):
    rows = [known_row(), dict(known_row(), page_url="u2", split="val")]
    if arrow:
        datasets = pytest.importorskip("datasets")
        pages = datasets.Dataset.from_list(rows)
    else:
        pages = rows
    index = PageGraphIndex(pages)
    assert index.samples == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3), (1, 4)]
    graph, section = index[5]
    assert section == 2 and graph.page_id == "u2" and graph.summaries[2] == SUMMARY
    assert index.position(1, 2) == 5 and (0, 0) not in index
    assert index.graph(1) is graph  # memoised: one build per page
    assert PageGraphIndex(pages, split="val").samples == [(1, 1), (1, 2), (1, 3), (1, 4)]
    with pytest.raises(KeyError, match="not a sample"):
        index.position(0, 0)


# ------------------------------------------------------------------------------------- selection


def test_neighbor_order_as_documented(tokenizer, image_processor):
    graph = PageGraph.from_wikiweb2m(known_row())
    assert section_ranking(graph, TARGET) == [1, 3, 0, 4]
    for context in CONTEXTS:
        selection = make_processor(tokenizer, image_processor, context).select_neighbors(graph, TARGET)
        text_nodes, image_nodes = EXPECTED_SLOTS[context]
        assert selection.text_nodes == text_nodes, context
        assert selection.image_nodes == image_nodes, context
    selection = make_processor(tokenizer, image_processor, "all").select_neighbors(graph, TARGET)
    assert selection.texts == EXPECTED_TEXTS
    small = make_processor(tokenizer, image_processor, "all", max_text_neighbors=3, max_image_neighbors=2)
    selection = small.select_neighbors(graph, TARGET)
    assert selection.text_nodes == EXPECTED_TEXT_NODES[:3] and selection.image_nodes == EXPECTED_IMAGE_NODES[:2]


def test_neighbor_adjacency_known_page(tokenizer, image_processor, image_dir, tmp_path):
    graph = PageGraph.from_wikiweb2m(known_row())
    processor = make_processor(tokenizer, image_processor, "all", "sa_e")
    example = processor.build_example(graph, TARGET, image_dir=image_dir)
    assert example["image_neighbor_mask"].tolist() == [1, 1, 0, 1, 1]  # Hist2.png missing
    # Node-level edges among the chosen nodes, by hand: page-graph edges (page-section, order,
    # parent-child, section-image) plus pairs of nodes adjacent to the target section (node 3).
    node_edges = {
        (PAGE, SEC[0]), (PAGE, SEC[1]), (PAGE, SEC[3]), (PAGE, SEC[4]),
        (SEC[0], SEC[1]), (SEC[0], SEC[4]), (SEC[0], LEAD),
        (SEC[1], SEC[3]), (SEC[1], HIST1), (SEC[1], HIST2),
        (SEC[3], SEC[4]), (SEC[3], MODERN),
        # contracted target: its neighbours PAGE, SEC[1], SEC[3], EARLY become pairwise adjacent
        (PAGE, EARLY), (SEC[1], EARLY), (SEC[3], EARLY),
    }
    slots = EXPECTED_TEXT_NODES + EXPECTED_IMAGE_NODES
    real = [1] * 10 + [1, 1, 0, 1, 1]
    expected = torch.zeros(15, 15)
    for a, b in itertools.product(range(15), range(15)):
        u, v = slots[a], slots[b]
        if a != b and real[a] and real[b] and (u == v or (u, v) in node_edges or (v, u) in node_edges):
            expected[a, b] = 1
    assert torch.equal(example["neighbor_adjacency"], expected)
    # Spot checks, value by value: caption slot <-> its image slot; page <-> section; lone images.
    assert example["neighbor_adjacency"][1, 10] == 1  # "A wooden hut" text <-> Early image
    assert example["neighbor_adjacency"][0, 2] == 1  # page <-> History
    assert example["neighbor_adjacency"][11, 13] == 0  # Hist1 image, Modern image: not adjacent
    assert example["neighbor_adjacency"][4, 12] == 0  # Hist2 caption <-> masked Hist2 image: isolated
    # SA-TE: only image slots, each standing for its section: Early -> section 2 (the target), Hist1 / Hist2 ->
    # section 1, Modern -> 3, Lead -> 0. Section edges: order 0-1, 1-2, 2-3, 3-4; parent-child 0-1, 1-2, 1-3, 0-4;
    # the contracted target joins its neighbours 1 and 3 (already joined as parent and child).
    sa_te = make_processor(tokenizer, image_processor, "all", "sa_te").build_example(graph, TARGET, image_dir=image_dir)
    assert torch.equal(sa_te["neighbor_adjacency"], torch.tensor([
        # Early, Hist1, Hist2, Modern, Lead
        [0.0, 1.0, 0.0, 1.0, 0.0],  # Early (target): next to sections 1 and 3, not to 0
        [1.0, 0.0, 0.0, 1.0, 1.0],  # Hist1 (1): the target, its child 3, its parent 0
        [0.0, 0.0, 0.0, 0.0, 0.0],  # Hist2: not on disk, isolated
        [1.0, 1.0, 0.0, 0.0, 0.0],  # Modern (3): the target, its parent 1
        [0.0, 1.0, 0.0, 0.0, 0.0],  # Lead (0): its child 1 only
    ]))
    # With Hist2.png on disk, the two images of section 1 are adjacent (same section) and Hist2 gets Hist1's edges.
    with_hist2 = tmp_path / "images"
    shutil.copytree(image_dir, with_hist2)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(with_hist2 / "Hist2.png")
    sa_te = make_processor(tokenizer, image_processor, "all", "sa_te").build_example(graph, TARGET, image_dir=with_hist2)
    assert sa_te["neighbor_adjacency"][1, 2] == sa_te["neighbor_adjacency"][2, 1] == 1
    assert sa_te["neighbor_adjacency"][2].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    # section_all: caption slot and image slot of the same image.
    section_all = make_processor(tokenizer, image_processor, "section_all", "ca_e")
    adjacency = section_all.build_example(graph, TARGET, image_dir=image_dir)["neighbor_adjacency"]
    assert torch.equal(adjacency, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


# ------------------------------------------------------------------------------------- examples


@pytest.mark.parametrize("context,encoding", COMBOS)
def test_every_context_and_encoding_known_page(tokenizer, image_processor, image_dir, context, encoding):
    graph = PageGraph.from_wikiweb2m(known_row())
    processor = make_processor(tokenizer, image_processor, context, encoding)
    selection = processor.select_neighbors(graph, TARGET)
    example = processor.build_example(graph, TARGET, image_dir=image_dir)
    _check_example(processor, graph, TARGET, example, selection, tokenizer)
    text_nodes, image_nodes = EXPECTED_SLOTS[context]
    n_real_images = sum(node != HIST2 for node in image_nodes)
    expected = {
        "sa_e": K_TEXT * len(text_nodes) + K_IMAGE * n_real_images,
        "sa_te": K_IMAGE * n_real_images,
        "ca_e": 0,
    }[encoding]
    assert _placeholder_count(example, processor) == expected
    source = tokenizer.decode(example["input_ids"])
    if encoding == "sa_te" and text_nodes:
        # Raw neighbour texts after the target; " Context:" opens what follows the target's own group (its captions
        # and images).
        assert source.index("Section:") < min(source.index(text) for text in selection.texts)
        assert ("Context:" in source) == (context in ("text_only", "all"))
    else:
        assert "Context:" not in source
    if processor.has_text_slots:
        ids = example["text_neighbor_input_ids"]
        assert ids.shape == (len(text_nodes), 16)
        clip_ids = processor.clip_tokenizer(selection.texts) if selection.texts else torch.zeros(0, 16)
        assert torch.equal(ids, clip_ids.long())  # open_clip ids, in slot order
    if processor.has_image_slots:
        pixels = example["image_neighbor_pixel_values"]
        assert pixels.shape == (len(image_nodes), 3, 32, 32)
        for j, node in enumerate(image_nodes):
            assert bool(pixels[j].abs().sum() > 0) == (node != HIST2)
    # The target text is the section title and the text after the first sentence.
    assert "Early days: They built wooden huts near the water." in source
    assert source.index("Section:") < source.index("Summary:")


def test_layout_example_and_generation(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_wikiweb2m(known_row())
    processor = make_processor(tokenizer, image_processor, "section_all", "sa_te")
    example = processor.build_example(graph, TARGET, image_dir=image_dir)
    text = tokenizer.decode(example["input_ids"])
    ph = NEIGHBOR_TOKEN * K_IMAGE
    assert text == (
        f"</s> Section: Early days: They built wooden huts near the water. A wooden hut{ph} Summary: {SUMMARY}</s>"
    )
    generation = processor.build_example(graph, TARGET, image_dir=image_dir, for_generation=True)
    assert "labels" not in generation
    assert tokenizer.decode(generation["input_ids"]).endswith(" Summary:")
    n = generation["input_ids"].shape[0]
    assert torch.equal(generation["input_ids"], example["input_ids"][:n])


def test_truncation_keeps_placeholders_and_summary(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_wikiweb2m(known_row())
    full = make_processor(tokenizer, image_processor, "all", "sa_te").build_example(graph, TARGET, image_dir=image_dir)
    short = make_processor(tokenizer, image_processor, "all", "sa_te", max_source_length=40, max_target_length=5)
    example = short.build_example(graph, TARGET, image_dir=image_dir)
    start = int((example["labels"] != -100).nonzero()[0])
    assert start == 40  # source cut to max_source_length
    assert _placeholder_count(example, short) == _placeholder_count(full, short) == 4 * K_IMAGE
    assert example["labels"].shape[0] - start == 5 and int(example["labels"][-1]) == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"][:start]).endswith(" Summary:")
    with pytest.raises(ValueError, match=r"Alpha.*section 2.*max_source_length=10"):
        make_processor(tokenizer, image_processor, "all", "sa_e", max_source_length=10).build_example(
            graph, TARGET, image_dir=image_dir
        )


def test_missing_images_are_masked_with_embedding_cache(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_wikiweb2m(known_row())
    # The cache lacks Modern.png; Hist2.png is missing everywhere.
    cache = FakeEmbeddingCache({n: torch.full((8,), float(i + 1)) for i, n in enumerate(["Lead.png", "Hist1.png", "Early.png"])})
    processor = make_processor(tokenizer, image_processor, "all", "sa_e")
    example = processor.build_example(graph, TARGET, embedding_cache=cache, image_dir=image_dir)
    assert example["image_neighbor_mask"].tolist() == [1, 1, 0, 0, 1]
    assert example["image_neighbor_embeds"].shape == (5, 8)
    assert torch.equal(example["image_neighbor_embeds"][0], torch.full((8,), 3.0))  # Early.png
    assert float(example["image_neighbor_embeds"][2:4].abs().sum()) == 0.0
    assert example["text_neighbor_embeds"].shape == (10, 8)
    assert cache.text_calls == EXPECTED_TEXTS  # keys: the neighbour texts, in slot order
    assert "text_neighbor_input_ids" not in example and "image_neighbor_pixel_values" not in example
    assert _placeholder_count(example, processor) == K_TEXT * 10 + K_IMAGE * 3
    inputs = processor_neighbor_inputs(processor, [(graph, TARGET)], image_dir=image_dir)
    texts, images = inputs.texts, inputs.image_files
    assert texts == EXPECTED_TEXTS and [os.path.basename(p) for p in images] == [
        "Early.png", "Hist1.png", "Modern.png", "Lead.png"]  # Hist2.png: not on disk
    # Without an image folder nothing resolves: all image slots masked, no image placeholders.
    bare = processor.build_example(graph, TARGET)
    assert bare["image_neighbor_mask"].tolist() == [0] * 5
    assert _placeholder_count(bare, processor) == K_TEXT * 10


@pytest.mark.parametrize("encoding", NEIGHBOR_ENCODINGS)
def test_summary_repeated_in_target_text_and_title_is_cut(tokenizer, image_processor, encoding):
    row = known_row()
    row["section_rest_sentence"][TARGET] = f"They built huts. {SUMMARY} Boats too."
    row["section_title"][1] = f"History ({SUMMARY})"  # parent title is not input, but the text is
    row["section_text"][1] = f"History of Alpha. {SUMMARY}"
    graph = PageGraph.from_wikiweb2m(row)
    processor = make_processor(tokenizer, image_processor, "all", encoding)
    build_token_cache(processor, [graph], show_progress=False)
    example = processor.build_example(graph, TARGET)
    text = tokenizer.decode(example["input_ids"][example["labels"] == -100])
    assert SUMMARY not in text
    assert "Early days: They built huts. Boats too." in text
    assert processor.select_neighbors(graph, TARGET).texts[2] == "History of Alpha."


def test_special_token_strings_in_text_stay_text(tokenizer, image_processor):
    row = known_row()
    row["section_rest_sentence"][TARGET] = "Huts <neighbor> and </s> here."
    processor = make_processor(tokenizer, image_processor, "section_only", "sa_e")
    example = processor.build_example(PageGraph.from_wikiweb2m(row), TARGET)
    assert _placeholder_count(example, processor) == 0
    assert int((example["input_ids"] == tokenizer.eos_token_id).sum()) == 2  # bos and the final eos only


@pytest.mark.parametrize("context,encoding", COMBOS)
def test_token_cache_matches_uncached(tokenizer, image_processor, image_dir, context, encoding):
    graph = PageGraph.from_wikiweb2m(known_row())
    plain = make_processor(tokenizer, image_processor, context, encoding)
    cached = make_processor(tokenizer, image_processor, context, encoding)
    cache = build_token_cache(cached, [known_row()], show_progress=False)
    assert cache is cached.token_cache and len(cache) > 0
    for section_idx in graph.sample_sections():
        for for_generation in (False, True):
            a = plain.build_example(graph, section_idx, image_dir=image_dir, for_generation=for_generation)
            b = cached.build_example(graph, section_idx, image_dir=image_dir, for_generation=for_generation)
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), (key, section_idx)


# ------------------------------------------------------------------------- reference equality


def reference_example(processor, graph, t, embedding_cache=None, image_dir=None, for_generation=False):
    """The documented example of ``(graph, t)``, written the straightforward way: one tokenizer call per
    text, neighbours found by walking the graph, adjacency by testing every pair of slots. `None` when
    ``max_source_length`` cannot hold the prompt and placeholders."""
    tok = processor.tokenizer

    def lm(text):
        return tok(" " + text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    summary, raw = graph.summaries[t], graph.raw_summaries[t]

    def scrub(text):
        for sentence in (summary, raw):
            if sentence and sentence in text:
                text = " ".join(text.replace(sentence, " ").split())
        return text

    def usable(node):
        return bool(graph.nodes[node].text.strip())

    def captions(s):
        return [n for n in graph.image_nodes[s] if usable(n)]

    parent = graph.section_parents[t]
    ranking = ([parent] if parent >= 0 else []) + sorted(
        (s for s in range(graph.num_sections) if s not in (t, parent)), key=lambda s: (abs(s - t), s))
    context, encoding = processor.context, processor.neighbor_encoding
    candidates = []
    if context == "section_all":
        candidates = captions(t)
    elif context in ("text_only", "all"):
        candidates = ([0] if usable(0) else []) + captions(t)
        for s in ranking:
            candidates += ([graph.section_nodes[s]] if usable(graph.section_nodes[s]) else []) + captions(s)
    # A text that repeats, or lies inside a kept text or the target input, is dropped; a text holding a kept
    # one replaces it.
    title_t, rest_t = graph.section_title(t), graph.rest_texts[t]
    target_text = scrub(f"{title_t}: {rest_t}" if title_t and rest_t else (title_t or rest_t))
    text_nodes, texts = [], []
    for node in candidates:
        text = scrub(graph.nodes[node].text)
        if not text or len(texts) == processor.max_text_neighbors:
            continue
        if text in target_text or any(text in kept for kept in texts):
            continue
        keep = [i for i, kept in enumerate(texts) if kept not in text]
        text_nodes, texts = [text_nodes[i] for i in keep] + [node], [texts[i] for i in keep] + [text]
    image_nodes = []
    if context in ("section_all", "all"):
        for s in [t] + (ranking if context == "all" else []):
            image_nodes += graph.image_nodes[s]
    image_nodes = image_nodes[: processor.max_image_neighbors]

    example = {}
    text_slots = encoding != "sa_te" and context != "section_only"
    image_slots = context in ("section_all", "all")
    if text_slots:
        if embedding_cache is not None:
            embeds = [embedding_cache.get_text(text) for text in texts]
            example["text_neighbor_embeds"] = torch.stack(embeds) if embeds else torch.zeros(0, embedding_cache.embed_dim)
        else:
            example["text_neighbor_input_ids"] = processor.clip_tokenizer(texts).long() if texts else torch.zeros(0, 16, dtype=torch.long)
        example["text_neighbor_mask"] = torch.ones(len(texts), dtype=torch.long)
    image_mask = []
    if image_slots:
        values = []
        for node in image_nodes:
            path = processor.image_folder(image_dir).resolve(graph.nodes[node].image)
            value = None
            if path is not None and os.path.isfile(path):
                if embedding_cache is not None:
                    value = embedding_cache.get_image(path)
                else:
                    with Image.open(path) as image:
                        value = processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]
            image_mask.append(int(value is not None))
            values.append(value)
        if embedding_cache is not None:
            example["image_neighbor_embeds"] = torch.stack(
                [v if v is not None else torch.zeros(embedding_cache.embed_dim) for v in values]
            ) if values else torch.zeros(0, embedding_cache.embed_dim)
        else:
            example["image_neighbor_pixel_values"] = torch.stack(
                [v if v is not None else torch.zeros(3, 32, 32) for v in values]) if values else torch.zeros(0, 3, 32, 32)
        example["image_neighbor_mask"] = torch.tensor(image_mask, dtype=torch.long)
    if text_slots or image_slots:
        # Without text slots (SA-TE) an image slot stands for its section's node.
        slots = text_nodes + image_nodes if text_slots else [graph.section_nodes[graph.nodes[n].section] for n in image_nodes]
        real = ([1] * len(text_nodes) if text_slots else []) + image_mask
        around = graph.neighbors[graph.section_nodes[t]]
        adjacency = torch.zeros(len(slots), len(slots))
        for a, u in enumerate(slots):
            for b, v in enumerate(slots):
                if a != b and real[a] and real[b] and (u == v or v in graph.neighbors[u] or (u in around and v in around)):
                    adjacency[a, b] = 1
        example["neighbor_adjacency"] = adjacency

    placeholders = processor.image_neighbor_num_tokens * sum(image_mask) if encoding != "ca_e" else 0
    if encoding == "sa_e":
        placeholders += processor.text_neighbor_num_tokens * len(texts)
    title, rest = graph.section_title(t) if processor.include_section_title else "", graph.rest_texts[t]
    target = lm(scrub(f"{title}: {rest}" if title and rest else (title or rest)))
    neighbor_ids = [lm(text) for text in texts] if encoding == "sa_te" else []
    # SA-TE groups: the target section, the page description (section None), then the ranked sections.
    groups = [t, None] + ranking
    text_group = [groups.index(graph.nodes[n].section) for n in text_nodes] if encoding == "sa_te" else []
    image_group = [groups.index(graph.nodes[n].section) for n, real in zip(image_nodes, image_mask) if real]
    beyond_target = any(g > 0 for g in text_group) or any(g > 0 for g in image_group)
    context_prompt = lm(processor.context_prompt) if encoding == "sa_te" and beyond_target else []
    section_prompt, summary_prompt = lm(processor.section_prompt), lm(processor.summary_prompt)
    budget = processor.max_source_length - (1 + len(context_prompt) + len(section_prompt) + len(summary_prompt) + placeholders)
    if budget < 0:
        return None  # the placeholders alone do not fit
    if len(target) + sum(map(len, neighbor_ids)) > budget:
        target = target[: max(budget // 2, budget - sum(map(len, neighbor_ids)))]
        left = budget - len(target)
        for i, ids in enumerate(neighbor_ids):  # in slot order
            neighbor_ids[i] = ids[:left]
            left -= len(neighbor_ids[i])
    if encoding == "sa_te":
        body = section_prompt + target
        for g in range(len(groups)):
            if g == 1:
                body += context_prompt
            body += [i for ids, group in zip(neighbor_ids, text_group) if group == g for i in ids]
            body += [processor.neighbor_token_id] * processor.image_neighbor_num_tokens * image_group.count(g)
    else:
        body = section_prompt + target + [processor.neighbor_token_id] * placeholders
    source = [tok.bos_token_id] + body + summary_prompt
    target_ids = [] if for_generation else lm(summary)[: processor.max_target_length - 1] + [tok.eos_token_id]
    example["input_ids"] = torch.tensor(source + target_ids, dtype=torch.long)
    example["attention_mask"] = torch.ones(len(source) + len(target_ids), dtype=torch.long)
    if not for_generation:
        example["labels"] = torch.tensor([-100] * len(source) + target_ids, dtype=torch.long)
    return example


def _reference_pages():
    """The known page, the known page with the summary repeated in the target and parent texts, and
    two generated pages (longer, with truncation at max_source_length=80)."""
    from processing.data.sample_data import make_page

    repeated = known_row()
    repeated["section_rest_sentence"][TARGET] = f"They built huts. {SUMMARY} Boats too."
    repeated["section_text"][1] = f"History of Alpha. {SUMMARY}"
    return [PageGraph.from_wikiweb2m(row) for row in (known_row(), repeated, make_page(4).row, make_page(11).row)]


@pytest.mark.parametrize("context,encoding", COMBOS)
def test_examples_equal_a_straightforward_reference(tokenizer, image_processor, image_dir, context, encoding):
    pages = _reference_pages()
    images = {name: torch.full((8,), float(i + 1)) for i, name in enumerate(["Lead.png", "Hist1.png", "Early.png"])}
    compared = 0
    for options in ({}, {"max_source_length": 80, "max_target_length": 6, "max_text_neighbors": 4}, {"max_source_length": 40}):
        plain = make_processor(tokenizer, image_processor, context, encoding, **options)
        cached = make_processor(tokenizer, image_processor, context, encoding, **options)
        build_token_cache(cached, pages, neighbor_input_ids=True, show_progress=False)
        for processor, graph, embeddings, for_generation in itertools.product(
            (plain, cached), pages, (None, FakeEmbeddingCache(images)), (False, True)
        ):
            for t in graph.sample_sections():
                expected = reference_example(processor, graph, t, embeddings, image_dir, for_generation)
                if expected is None:
                    with pytest.raises(ValueError, match="cannot hold the prompt"):
                        processor.build_example(graph, t, embedding_cache=embeddings, image_dir=image_dir,
                                                for_generation=for_generation)
                    continue
                example = processor.build_example(graph, t, embedding_cache=embeddings, image_dir=image_dir,
                                                  for_generation=for_generation)
                where = (graph.page_id, t, processor is cached, embeddings is not None, for_generation, options)
                assert set(example) == set(expected), where
                compared += 1
                for key, value in expected.items():
                    assert example[key].dtype == value.dtype and torch.equal(example[key], value), (key, where)
    assert compared >= 200


def test_in_memory_images_of_page_dicts(tokenizer, image_processor, image_dir):
    """A PIL image (or the file's bytes) in a page dict is used like the same image on disk."""
    with Image.open(os.path.join(image_dir, "Early.png")) as image:
        picture = image.convert("RGB")
    with open(os.path.join(image_dir, "Lead.png"), "rb") as f:
        encoded = f.read()

    def page(first, second):
        return {"title": "P", "description": "A page.", "sections": [
            {"title": "A", "text": "Alpha is first. It has an image.", "images": [first, second]},
            {"title": "B", "text": "Beta is second. It follows."}]}

    on_disk = PageGraph.from_dict(page({"path": "Early.png", "caption": "early"}, {"path": "Lead.png", "caption": "lead"}))
    in_memory = PageGraph.from_dict(page({"image": picture, "caption": "early"}, {"image": encoded, "caption": "lead"}))
    processor = make_processor(tokenizer, image_processor, "all", "sa_e")
    a = processor.build_example(on_disk, 0, image_dir=image_dir)
    b = processor.build_example(in_memory, 0)
    assert a["image_neighbor_mask"].tolist() == [1, 1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # With an embedding cache, an in-memory image is looked up by its bytes (a PIL image by its PNG).
    png = io.BytesIO()
    picture.save(png, format="PNG")

    class BytesCache(FakeEmbeddingCache):
        def get_image(self, key):
            assert isinstance(key, bytes)
            return {png.getvalue(): torch.ones(8), encoded: torch.zeros(8) + 2}.get(key)

    c = processor.build_example(in_memory, 0, embedding_cache=BytesCache({}))
    assert c["image_neighbor_mask"].tolist() == [1, 1]
    assert torch.equal(c["image_neighbor_embeds"], torch.stack([torch.ones(8), torch.zeros(8) + 2]))
    inputs = processor_neighbor_inputs(processor, [(in_memory, 0)], image_dir=image_dir)
    texts, files = inputs.texts, inputs.image_files
    assert files == [] and "early" in texts  # in-memory images have no file to list


# ----------------------------------------------------------------------------------- real pages


def _realwiki_rows(realwiki_dir):
    wikiweb2m = pytest.importorskip("processing.data.wikiweb2m")
    return list(wikiweb2m.iter_pages(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz")))


@pytest.mark.parametrize("context,encoding", COMBOS)
def test_every_context_and_encoding_realwiki(realwiki_dir, tokenizer, image_processor, context, encoding):
    rows = _realwiki_rows(realwiki_dir)
    graph = PageGraph.from_wikiweb2m(max(rows, key=lambda row: len(row["section_title"])))
    processor = make_processor(
        tokenizer, image_processor, context, encoding, max_source_length=1024, max_target_length=512
    )
    build_token_cache(processor, [graph], show_progress=False)
    images = str(realwiki_dir / "images")
    assert graph.sample_sections()
    for section_idx in graph.sample_sections():
        selection = processor.select_neighbors(graph, section_idx)
        example = processor.build_example(graph, section_idx, image_dir=images)
        _check_example(processor, graph, section_idx, example, selection, tokenizer)
        assert len(selection.texts) <= processor.max_text_neighbors
        assert len(selection.image_nodes) <= processor.max_image_neighbors
        if processor.has_image_slots:
            # Image files of this set are all on disk: every selected image is real.
            assert example["image_neighbor_mask"].tolist() == [1] * len(selection.image_nodes)


# ----------------------------------------------------------------------------------- collator


def test_collator_padding_generation_left_training_right(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_wikiweb2m(known_row())
    processor = make_processor(tokenizer, image_processor, "all", "sa_e")
    # Section 4 has fewer neighbours than section 2 (fewer images by distance too).
    processor_small = make_processor(tokenizer, image_processor, "all", "sa_e", max_text_neighbors=2, max_image_neighbors=1)
    a = processor.build_example(graph, TARGET, image_dir=image_dir, for_generation=True)
    b = processor_small.build_example(graph, 4, image_dir=image_dir, for_generation=True)
    batch = processor.data_collator(for_generation=True)([a, b])
    la, lb = a["input_ids"].shape[0], b["input_ids"].shape[0]
    length = max(la, lb)
    assert batch["input_ids"].shape == (2, length)
    short, long_ = (1, 0) if lb < la else (0, 1)
    n_short = min(la, lb)
    assert batch["attention_mask"][short].tolist() == [0] * (length - n_short) + [1] * n_short  # left padding
    assert (batch["input_ids"][short, : length - n_short] == tokenizer.pad_token_id).all()
    assert tokenizer.decode(batch["input_ids"][short, length - n_short :]).endswith(" Summary:")
    assert batch["attention_mask"][long_].all()
    # Slots padded to the batch max, masks 0; adjacency blocks kept contiguous.
    assert batch["text_neighbor_input_ids"].shape == (2, 10, 16)
    assert batch["text_neighbor_mask"][1].tolist() == [1, 1] + [0] * 8
    assert batch["image_neighbor_pixel_values"].shape == (2, 5, 3, 32, 32)
    assert batch["image_neighbor_mask"][1].tolist() == [1, 0, 0, 0, 0]
    adjacency = batch["neighbor_adjacency"]
    assert adjacency.shape == (2, 15, 15)
    assert torch.equal(adjacency[0], a["neighbor_adjacency"])
    b_adj = b["neighbor_adjacency"]  # 2 text + 1 image slot -> rows [0, 1, 10]
    keep = torch.tensor([0, 1, 10])
    assert torch.equal(adjacency[1][keep][:, keep], b_adj)
    assert float(adjacency[1].sum()) == float(b_adj.sum())
    # Training: right padding, labels padded with -100.
    ta = processor.build_example(graph, TARGET, image_dir=image_dir)
    tb = processor_small.build_example(graph, 4, image_dir=image_dir)
    train = MMGLDataCollator(tokenizer.pad_token_id)([ta, tb])
    n = tb["input_ids"].shape[0]
    if n < ta["input_ids"].shape[0]:
        assert train["attention_mask"][1, n:].sum() == 0 and (train["labels"][1, n:] == -100).all()
        assert torch.equal(train["input_ids"][1, :n], tb["input_ids"])
    # The processor's __call__ builds and collates in one go.
    out = processor([graph, graph], [TARGET, 4], image_dir=image_dir)
    assert out["input_ids"].shape[0] == 2 and "labels" in out


def test_collator_rejects_mixed_configurations(tokenizer, image_processor):
    graph = PageGraph.from_wikiweb2m(known_row())
    a = make_processor(tokenizer, image_processor, "all", "sa_e").build_example(graph, TARGET)
    b = make_processor(tokenizer, image_processor, "section_only", "sa_e").build_example(graph, TARGET)
    with pytest.raises(ValueError, match="one processor configuration"):
        MMGLDataCollator(tokenizer.pad_token_id)([a, b])


# ----------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tokenizer, image_processor, tmp_path):
    processor = make_processor(
        tokenizer, image_processor, "text_only", "ca_e", max_text_neighbors=7, max_source_length=300,
        summary_prompt="TL;DR:",
    )
    build_token_cache(processor, [known_row()], show_progress=False)  # runtime state is not saved
    processor.save_pretrained(tmp_path)
    loaded = MMGLProcessor.from_pretrained(tmp_path)
    for name in (
        "context", "neighbor_encoding", "text_neighbor_num_tokens", "image_neighbor_num_tokens",
        "max_text_neighbors", "max_image_neighbors", "max_source_length", "max_target_length",
        "neighbor_encoder_name", "neighbor_context_length", "include_section_title", "summary_prompt",
    ):
        assert getattr(loaded, name) == getattr(processor, name), name
    assert loaded.token_cache is None
    assert loaded.neighbor_token_id == processor.neighbor_token_id
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded.image_processor.crop_size == processor.image_processor.crop_size
    assert list(loaded.image_processor.image_mean) == list(processor.image_processor.image_mean)
    graph = PageGraph.from_wikiweb2m(known_row())
    a, b = processor.build_example(graph, TARGET), loaded.build_example(graph, TARGET)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_processor_remote_code_round_trip(tokenizer, image_processor, tmp_path):
    """Hub-style folder: the processor file and its same-folder imports are copied; a fresh process
    loads it with `AutoProcessor(trust_remote_code=True)` without importing this repository."""
    processor = make_processor(tokenizer, image_processor, "section_all", "sa_te")
    previous = MMGLProcessor._auto_class
    MMGLProcessor.register_for_auto_class("AutoProcessor")
    try:
        processor.save_pretrained(tmp_path)
    finally:
        MMGLProcessor._auto_class = previous
    assert {"processing_mmgl.py", "page_graph.py", "collator.py"} <= set(os.listdir(tmp_path))
    code = (
        "from transformers import AutoProcessor\n"
        f"p = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        "assert type(p).__module__.startswith('transformers_modules'), type(p).__module__\n"
        "print(p.context, p.neighbor_encoding, p.neighbor_token_id)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["section_all", "sa_te", str(processor.neighbor_token_id)]


def test_invalid_options(tokenizer, image_processor):
    with pytest.raises(ValueError, match="context must be one of"):
        MMGLProcessor(image_processor, tokenizer, context="page_all")
    with pytest.raises(ValueError, match="neighbor_encoding must be one of"):
        MMGLProcessor(image_processor, tokenizer, neighbor_encoding="sa")
    with pytest.raises(ValueError, match="max_target_length"):
        MMGLProcessor(image_processor, tokenizer, max_target_length=1)
    graph = PageGraph.from_wikiweb2m(known_row())
    with pytest.raises(ValueError, match=r"Alpha.*section 0.*empty summary"):
        row = known_row()
        row["section_clean_1st_sentence"][0] = ""
        make_processor(tokenizer, image_processor).build_example(PageGraph.from_wikiweb2m(row), 0)
    with pytest.raises(IndexError, match="section index 7"):
        make_processor(tokenizer, image_processor).build_example(graph, 7)
