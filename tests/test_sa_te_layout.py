"""The SA-TE layout (`processing.token_layout`) and the SA-TE image graph, value by value: on a hand-made page
where several sections have images (one with a blank text, two beyond the text budget), and on a real Wikipedia
page. Each image's placeholders must follow the text of its own section, in slot order; truncation cuts texts and
never a placeholder."""
import pytest
import torch
from PIL import Image

from processing.data.bpe_tokenizer import train_bpe_tokenizer
from processing.neighbor_selection import section_ranking
from processing.page_graph import PageGraph
from processing.processing_mmgl import MMGLProcessor
from processing.token_layout import SectionGroup, sa_te_groups
from tests.test_processor import image_processor  # noqa: F401

K = 3  # placeholders per image

# Target: section 2 "Minerals" (parent 1). Neighbour order: parent 1, then 3, 0, 4, 5 by distance.
SECTIONS = [
    # title, text, parent, images [(file, caption)]
    ("Overview", "Basalt Hill rises above the plain. It is two hundred metres high.", -1,
     [("o1.png", "Aerial photo")]),
    ("Geology", "The ridge formed from lava. Columns of basalt are common.", 0, []),
    ("Minerals", "Amethyst fills many cavities. Some geodes hold citrine too.", 1,
     [("m1.png", "Purple geode"), ("m2.png", "Yellow point")]),
    ("Mining", "", 1, [("x1.png", "Pickaxe")]),  # a blank text: its images come with its caption only
    ("Trade", "Stone was sold in the town. Merchants came from afar.", -1, [("t1.png", "Market stall")]),
    ("Legends", "A giant built the hill. Children still tell the tale.", 4, [("l1.png", "Old carving")]),
]
TARGET = 2
DESCRIPTION = "Basalt Hill is a volcanic ridge."


def hand_page():
    return {"title": "Basalt Hill", "description": DESCRIPTION, "sections": [
        {"title": title, "text": text, "parent": parent, "images": [{"path": f, "caption": c} for f, c in images]}
        for title, text, parent, images in SECTIONS]}


@pytest.fixture(scope="module")
def tokenizer():
    texts = [DESCRIPTION] + [s[1] for s in SECTIONS] + [c for s in SECTIONS for _, c in s[3]] + ["Context: Section: Summary:"] * 3
    return train_bpe_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, (_, _, _, images) in enumerate(SECTIONS):
        for j, (name, _) in enumerate(images):
            Image.new("RGB", (8, 8), (40 * i, 40 * j, 7)).save(folder / name)
    return str(folder)


def sa_te(tokenizer, image_processor, context="all", **kwargs):
    return MMGLProcessor(image_processor, tokenizer, context=context, neighbor_encoding="sa_te",
                         image_neighbor_num_tokens=K, neighbor_context_length=16, **kwargs)


def lm(tokenizer, text):
    """The ids of one text segment, as the processor tokenises every segment: ``" " + text``, no special tokens."""
    return tokenizer(" " + text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def placeholder_runs(ids, token_id):
    """``(start, length)`` of each run of consecutive placeholders."""
    runs = []
    for i, value in enumerate(ids):
        if value == token_id:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1][1] += 1
            else:
                runs.append([i, 1])
    return [tuple(run) for run in runs]


# ------------------------------------------------------------------------------------------- hand-made page


def test_groups_on_a_hand_made_page(tokenizer, image_processor):
    graph = PageGraph.from_dict(hand_page())
    assert section_ranking(graph, TARGET) == [1, 3, 0, 4, 5]
    selection = sa_te(tokenizer, image_processor, max_text_neighbors=5).select_neighbors(graph, TARGET)
    # Texts: the description, the target's two captions, section 1's text, then section 3's caption (its text is
    # blank), and the budget of 5 is spent. Images: the target's two, then sections 3, 0 and 4 (budget 5).
    assert selection.texts == [DESCRIPTION, "Purple geode", "Yellow point",
                               "The ridge formed from lava. Columns of basalt are common.", "Pickaxe"]
    assert [graph.nodes[n].image for n in selection.image_nodes] == ["m1.png", "m2.png", "x1.png", "o1.png", "t1.png"]
    assert sa_te_groups(graph, TARGET, selection) == [
        SectionGroup(section=2, texts=(1, 2), images=(0, 1)),  # the target: its captions, then its images
        SectionGroup(section=None, texts=(0,), images=()),  # the page description
        SectionGroup(section=1, texts=(3,), images=()),  # the parent: text, no image
        SectionGroup(section=3, texts=(4,), images=(2,)),  # blank text: its caption, then its image
        SectionGroup(section=0, texts=(), images=(3,)),  # text budget spent: images alone, in budget order
        SectionGroup(section=4, texts=(), images=(4,)),
    ]  # section 5: neither a text nor an image in the budgets, no group


def test_token_ids_on_a_hand_made_page(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_dict(hand_page())
    processor = sa_te(tokenizer, image_processor, max_text_neighbors=5)
    example = processor.build_example(graph, TARGET, image_dir=image_dir)
    assert example["image_neighbor_mask"].tolist() == [1, 1, 1, 1, 1]
    ids = lambda text: lm(tokenizer, text)  # noqa: E731
    ph = [processor.neighbor_token_id]
    source = (
        [tokenizer.bos_token_id] + ids("Section:") + ids("Minerals: Some geodes hold citrine too.")
        + ids("Purple geode") + ids("Yellow point") + ph * K + ph * K  # m1, m2
        + ids("Context:") + ids(DESCRIPTION)
        + ids("The ridge formed from lava. Columns of basalt are common.")
        + ids("Pickaxe") + ph * K  # x1, right after its section's caption
        + ph * K + ph * K  # o1 (section 0), t1 (section 4): their texts are beyond the text budget
        + ids("Summary:")
    )
    summary = ids("Amethyst fills many cavities.") + [tokenizer.eos_token_id]
    assert example["input_ids"].tolist() == source + summary
    assert example["labels"].tolist() == [-100] * len(source) + summary
    generation = processor.build_example(graph, TARGET, image_dir=image_dir, for_generation=True)
    assert generation["input_ids"].tolist() == source
    # Which image follows which text, read back from the ids: placeholder runs start right after the target's
    # last caption, and right after section 3's caption.
    runs = placeholder_runs(source, processor.neighbor_token_id)
    assert [length for _, length in runs] == [2 * K, 3 * K]
    assert runs[0][0] == len([tokenizer.bos_token_id] + ids("Section:") + ids("Minerals: Some geodes hold citrine too.")
                              + ids("Purple geode") + ids("Yellow point"))
    assert source[runs[1][0] - len(ids("Pickaxe")): runs[1][0]] == ids("Pickaxe")


def test_image_adjacency_on_a_hand_made_page(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_dict(hand_page())
    example = sa_te(tokenizer, image_processor, max_text_neighbors=5).build_example(graph, TARGET, image_dir=image_dir)
    # Slots m1, m2 (section 2, the target), x1 (3), o1 (0), t1 (4). Section edges: order 0-1, 1-2, 2-3, 3-4, 4-5;
    # parent-child 0-1, 1-2, 1-3, 4-5. Around the target: sections 1 and 3.
    assert example["neighbor_adjacency"].tolist() == [
        # m1   m2   x1   o1   t1
        [0.0, 1.0, 1.0, 0.0, 0.0],  # m1: m2 (same section), x1 (next section); section 0 is two steps away
        [1.0, 0.0, 1.0, 0.0, 0.0],  # m2
        [1.0, 1.0, 0.0, 0.0, 1.0],  # x1: the target's images (order 2-3), t1 (order 3-4)
        [0.0, 0.0, 0.0, 0.0, 0.0],  # o1: section 0 touches only section 1, which has no image slot
        [0.0, 0.0, 1.0, 0.0, 0.0],  # t1: x1 (order 3-4); section 5 (its child) has no slot
    ]
    # section_all: the target's two images, adjacent as images of one section.
    section_all = sa_te(tokenizer, image_processor, "section_all").build_example(graph, TARGET, image_dir=image_dir)
    assert section_all["neighbor_adjacency"].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_truncation_cuts_texts_never_placeholders(tokenizer, image_processor, image_dir):
    graph = PageGraph.from_dict(hand_page())
    ids = lambda text: lm(tokenizer, text)  # noqa: E731
    full = sa_te(tokenizer, image_processor, max_text_neighbors=5).build_example(graph, TARGET, image_dir=image_dir)
    prompts = 1 + len(ids("Section:")) + len(ids("Context:")) + len(ids("Summary:"))
    fixed = prompts + 5 * K
    target = ids("Minerals: Some geodes hold citrine too.")
    description = ids(DESCRIPTION)
    assert len(target) > 3 and len(description) > 3
    ph = [tokenizer.convert_tokens_to_ids("<neighbor>")]
    # Six text tokens: the target keeps half (3), the neighbour texts the other 3 in slot order, all from the page
    # description (the first text slot); the target's captions and the later texts are cut to nothing, and every
    # image keeps its placeholders in its group.
    processor = sa_te(tokenizer, image_processor, max_text_neighbors=5, max_source_length=fixed + 6)
    example = processor.build_example(graph, TARGET, image_dir=image_dir, for_generation=True)
    assert example["input_ids"].tolist() == (
        [tokenizer.bos_token_id] + ids("Section:") + target[:3] + ph * 2 * K
        + ids("Context:") + description[:3] + ph * 3 * K + ids("Summary:")
    )
    # No text token left at all: the prompts and every placeholder, still whole and in place.
    processor = sa_te(tokenizer, image_processor, max_text_neighbors=5, max_source_length=fixed)
    example = processor.build_example(graph, TARGET, image_dir=image_dir)
    start = int((example["labels"] != -100).nonzero()[0])
    assert example["input_ids"][:start].tolist() == (
        [tokenizer.bos_token_id] + ids("Section:") + ph * 2 * K + ids("Context:") + ph * 3 * K + ids("Summary:"))
    assert example["input_ids"][start:].tolist() == full["input_ids"][-(len(full["input_ids"]) - int(
        (full["labels"] != -100).nonzero()[0])):].tolist()  # the summary is untouched
    # One token less cannot hold the placeholders: refused, never a cut placeholder.
    with pytest.raises(ValueError, match=r"Basalt Hill.*section 2.*cannot hold the prompt and 15 neighbour placeholders"):
        sa_te(tokenizer, image_processor, max_text_neighbors=5, max_source_length=fixed - 1).build_example(
            graph, TARGET, image_dir=image_dir)


def test_masked_images_get_no_placeholders_and_no_context_prompt_alone(tokenizer, image_processor, tmp_path):
    graph = PageGraph.from_dict(hand_page())
    Image.new("RGB", (8, 8)).save(tmp_path / "m1.png")  # only the target's first image is on disk
    processor = sa_te(tokenizer, image_processor, max_text_neighbors=0)
    example = processor.build_example(graph, TARGET, image_dir=str(tmp_path), for_generation=True)
    assert example["image_neighbor_mask"].tolist() == [1, 0, 0, 0, 0]
    ids = lambda text: lm(tokenizer, text)  # noqa: E731
    # Nothing follows the target's group (no text, every other image masked): no " Context:".
    assert example["input_ids"].tolist() == (
        [tokenizer.bos_token_id] + ids("Section:") + ids("Minerals: Some geodes hold citrine too.")
        + [processor.neighbor_token_id] * K + ids("Summary:"))
    assert example["neighbor_adjacency"].sum() == 0  # one real slot: no edge


# ------------------------------------------------------------------------------------------------ real page


def _ray_charles(realwiki_dir):
    wikiweb2m = pytest.importorskip("processing.data.wikiweb2m")
    rows = wikiweb2m.iter_pages(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz"))
    row = next(row for row in rows if row["page_url"] == "https://en.wikipedia.org/wiki/Ray_Charles")
    return PageGraph.from_wikiweb2m(row)


def test_real_page_layout_and_adjacency_value_by_value(realwiki_dir, tokenizer, image_processor):
    """Ray Charles, target section 5 "Crossover success (1959–67)": several sections around it have images."""
    graph = _ray_charles(realwiki_dir)
    t = 5
    assert graph.section_title(t) == "Crossover success (1959–67)" and graph.section_parents[t] == 1
    assert section_ranking(graph, t)[:5] == [1, 4, 6, 3, 7]
    processor = sa_te(tokenizer, image_processor, max_source_length=100_000, max_target_length=512)
    selection = processor.select_neighbors(graph, t)
    sec, img = graph.section_nodes, graph.image_nodes
    assert [len(img[s]) for s in (1, 3, 4, 5, 6, 7)] == [0, 0, 0, 1, 2, 3]
    # Budgets 11 texts, 5 images; section 1 (the parent) has no usable text (a heading over its subsections).
    assert graph.usable_texts[sec[1]] is None
    text_nodes = [graph.page_node, img[5][0], sec[4], sec[6], *img[6], sec[3], sec[7], *img[7]]
    assert selection.text_nodes == text_nodes
    assert selection.texts == [graph.nodes[n].text for n in text_nodes]  # nothing to scrub on this page
    assert selection.image_nodes == [img[5][0], *img[6], *img[7][:2]]  # the third image of 7: beyond the budget
    example = processor.build_example(graph, t, image_dir=str(realwiki_dir / "images"))
    assert example["image_neighbor_mask"].tolist() == [1] * 5

    ids = lambda node: lm(tokenizer, graph.nodes[node].text)  # noqa: E731
    ph = [processor.neighbor_token_id] * K
    source = (
        [tokenizer.bos_token_id] + lm(tokenizer, "Section:") + lm(tokenizer, processor.target_text(graph, t))
        + ids(img[5][0]) + ph  # the target's caption and image
        + lm(tokenizer, "Context:") + ids(graph.page_node)
        + ids(sec[4])  # section 4: no image
        + ids(sec[6]) + ids(img[6][0]) + ids(img[6][1]) + ph + ph  # section 6 and its two images
        + ids(sec[3])  # section 3: no image
        + ids(sec[7]) + ids(img[7][0]) + ids(img[7][1]) + ids(img[7][2]) + ph + ph  # 7: three captions, two images
        + lm(tokenizer, "Summary:")
    )
    summary = lm(tokenizer, graph.summaries[t])[:511] + [tokenizer.eos_token_id]
    assert example["input_ids"].tolist() == source + summary
    # The image slots stand for sections 5, 6, 6, 7, 7. Section edges among them: order 4-5, 5-6, 6-7; parents
    # 1 -> 2..7. Around the target 5: sections 1, 4 and 6; section 7 is two steps away.
    assert example["neighbor_adjacency"].tolist() == [
        [0.0, 1.0, 1.0, 0.0, 0.0],  # 5's image: section 6's images (order 5-6)
        [1.0, 0.0, 1.0, 1.0, 1.0],  # 6's first image: 5 (order), 6 (same section), 7 (order 6-7)
        [1.0, 1.0, 0.0, 1.0, 1.0],
        [0.0, 1.0, 1.0, 0.0, 1.0],  # 7's first image: 6's images, 7's other image
        [0.0, 1.0, 1.0, 1.0, 0.0],
    ]

    # The paper's 1024 input tokens: texts are cut (these sections run to thousands of tokens), the placeholders
    # are not: every image keeps its K placeholders in its group, after the tokens kept of its group's texts.
    short = sa_te(tokenizer, image_processor, max_source_length=1024, max_target_length=128)
    cut = short.build_example(graph, t, image_dir=str(realwiki_dir / "images"))
    start = int((cut["labels"] != -100).nonzero()[0])
    assert start == 1024
    assert [length for _, length in placeholder_runs(source, processor.neighbor_token_id)] == [K, 2 * K, 2 * K]
    # The target keeps half of the text budget; the neighbour texts fill the rest in slot order: the description,
    # 5's caption, then section 4's text up to the budget; everything after it is cut to nothing.
    budget = 1024 - (1 + len(lm(tokenizer, "Section:")) + len(lm(tokenizer, "Context:")) + len(lm(tokenizer, "Summary:"))
                     + 5 * K)
    target = lm(tokenizer, processor.target_text(graph, t))[: budget // 2]
    left = budget - len(target) - len(ids(graph.page_node)) - len(ids(img[5][0]))
    assert 0 < left < len(ids(sec[4]))
    assert cut["input_ids"][:start].tolist() == (
        [tokenizer.bos_token_id] + lm(tokenizer, "Section:") + target + ids(img[5][0]) + ph
        + lm(tokenizer, "Context:") + ids(graph.page_node) + ids(sec[4])[:left] + ph + ph + ph + ph
        + lm(tokenizer, "Summary:")
    )
