"""`PageGraph` beyond the adapters (tests/test_processor.py has those): the padded adjacency,
duck-typed `coerce` across two copies of page_graph.py, and in-memory images in page dicts."""
import importlib.util
import io
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from processing import page_graph
from processing.page_graph import PageGraph, is_page_graph
from processing.data.sample_index import PageGraphIndex
from processing.image_source import clip_image_processor
from processing.processing_mmgl import MMGLProcessor
from tests.modeling_helpers import TINY_CLIP
from processing.data.sample_data import make_page
from processing.data.bpe_tokenizer import train_bpe_tokenizer

PAGE_GRAPH_FILE = Path(page_graph.__file__)


def load_copy(name="hub_copy_page_graph"):
    """page_graph.py loaded a second time from its file, as transformers loads a Hub folder's copy: a module of a
    package of its own (`transformers_modules.<folder>`), whose relative imports load that folder's files again."""
    package = types.ModuleType(f"{name}_folder")
    package.__path__ = [str(PAGE_GRAPH_FILE.parent)]
    sys.modules[package.__name__] = package
    spec = importlib.util.spec_from_file_location(f"{package.__name__}.page_graph", PAGE_GRAPH_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def plain_page(images=None):
    return {
        "title": "T",
        "description": "D",
        "sections": [
            {"title": "A", "text": "One. Two three.", "images": images or []},
            {"title": "B", "text": "Four. Five.", "parent": 0},
            {"title": "C", "text": "Six. Seven.", "parent": 0},
        ],
    }


def test_coerce_accepts_a_graph_of_another_copy_of_the_file():
    copy = load_copy()
    try:
        assert copy.PageGraph is not PageGraph  # two distinct classes, as with a Hub folder
        row = make_page(5).row
        theirs = copy.PageGraph.from_wikiweb2m(row)
        assert not isinstance(theirs, PageGraph)
        assert PageGraph.coerce(theirs) is theirs  # taken as is, neither rejected nor rebuilt
        assert is_page_graph(theirs) and copy.is_page_graph(PageGraph.from_wikiweb2m(row))
        assert copy.PageGraph.coerce(PageGraph.from_wikiweb2m(row)).page_id == theirs.page_id
        assert not is_page_graph(row) and not is_page_graph(None)
        # An index of this copy serves graphs of the other.
        index = PageGraphIndex([theirs])
        assert index.graph(0) is theirs and len(index) == len(theirs.sample_sections())
    finally:
        del sys.modules["hub_copy_page_graph"]


def test_coerce_names_an_incompatible_graph_version():
    copy = load_copy("old_page_graph")
    try:
        copy.PageGraph.mmgl_page_graph_version = 0  # an older, incompatible layout
        old = copy.PageGraph.from_wikiweb2m(make_page(1).row)
        with pytest.raises(TypeError, match="layout version 0 .*reads version 2"):
            PageGraph.coerce(old)
        with pytest.raises(TypeError, match="expected a PageGraph"):
            PageGraph.coerce(["not", "a", "page"])
    finally:
        del sys.modules["old_page_graph"]


def test_processor_takes_a_graph_of_another_copy():
    copy = load_copy()
    try:
        row = make_page(2).row
        tokenizer = train_bpe_tokenizer(row["section_text"] * 3 + ["Context: Section: Summary:"] * 5, vocab_size=400)
        processor = MMGLProcessor(clip_image_processor("ViT-B-32", TINY_CLIP), tokenizer, context="all",
                                  neighbor_encoding="sa_te", neighbor_context_length=16)
        ours, theirs = PageGraph.from_wikiweb2m(row), copy.PageGraph.from_wikiweb2m(row)
        section = ours.sample_sections()[0]
        a, b = processor.build_example(ours, section), processor.build_example(theirs, section)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        batch = processor(theirs, [section, section])  # a single page of the other copy, two sections
        assert batch["input_ids"].shape[0] == 2
    finally:
        del sys.modules["hub_copy_page_graph"]


def test_from_dict_keeps_in_memory_images_and_rejects_other_objects():
    picture = Image.new("RGB", (8, 6), (10, 20, 30))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    graph = PageGraph.from_dict(plain_page([
        {"image": picture, "caption": "pil"},
        {"image": bytearray(buffer.getvalue()), "caption": "bytes"},
        {"path": "x.png", "caption": "path"},
        {"path": Path("y.png"), "caption": "pathlike"},
    ]))
    images = [graph.nodes[n].image for n in graph.image_nodes[0]]
    assert images[0] is picture
    assert images[1] == buffer.getvalue() and isinstance(images[1], bytes)
    assert images[2:] == ["x.png", "y.png"]
    with pytest.raises(TypeError, match=r"page 'T': section 0 image 1 field 'image' must be a path .* got int"):
        PageGraph.from_dict(plain_page([{"path": "ok.png"}, {"image": 42, "caption": "?"}]))
    with pytest.raises(TypeError, match=r"section 0 image 0 field 'url' .* got list"):
        PageGraph.from_dict(plain_page([{"url": ["a"]}]))
