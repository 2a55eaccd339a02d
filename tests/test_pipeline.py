"""The `mmgl-summarization` pipeline: in process, and from a saved Hub folder in a fresh offline process
that cannot import this project's packages. Its output must equal decoding `model.generate` on the
processor's output."""
import ast
import importlib.util
import io
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
from processing.data.bpe_tokenizer import train_bpe_tokenizer
from processing.page_graph import PageGraph
from processing.pipeline_mmgl import MMGLSummarizationPipeline, register_pipeline
from processing.training.export import check_flat_folder, save_for_hub
from processing.image_source import clip_image_processor
from processing.processing_mmgl import MMGLProcessor
from tests.modeling_helpers import TINY_CLIP, tiny_model
from processing.data.neighbor_inputs import processor_neighbor_inputs

pytestmark = pytest.mark.timeout(120)

MAX_NEW_TOKENS = 6
CORPUS = [
    "The cat sat on the mat. It likes the warm park.",
    "A dog runs in the park. Dogs are loyal animals.",
    "Cats are small carnivorous mammals. Birds fly south in winter.",
    "Context: Section: Summary: History Habits Diet",
]


def make_tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=320)


def make_processor(**overrides):
    kwargs = dict(
        image_processor=clip_image_processor("ViT-B-32", TINY_CLIP),
        tokenizer=make_tokenizer(),
        context="all",
        neighbor_encoding="sa_e",
        neighbor_encoder_name="ViT-B-32",  # its open_clip tokenizer ships with open_clip (offline)
        neighbor_context_length=TINY_CLIP["text_cfg"]["context_length"],
        text_neighbor_num_tokens=2,
        image_neighbor_num_tokens=3,
        max_text_neighbors=4,
        max_image_neighbors=3,
        max_source_length=96,
        max_target_length=16,
    )
    kwargs.update(overrides)
    return MMGLProcessor(**kwargs)


def make_model(processor, with_encoder=True):
    tokenizer = processor.tokenizer
    extra = {"neighbor_encoder_config": TINY_CLIP} if with_encoder else {}
    return tiny_model(
        "self_attention",
        "sequence",
        vocab_size=len(tokenizer),
        neighbor_token_id=processor.neighbor_token_id,
        text_neighbor_embed_dim=TINY_CLIP["embed_dim"],
        image_neighbor_embed_dim=TINY_CLIP["embed_dim"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        init_std=0.2,  # a random model with 0.02 repeats one token whatever the input
        **extra, open_gates=True,
    )


def expected_summaries(model, processor, pages, sections, **kwargs):
    """Decode `model.generate` on the processor's (left-padded) batch: what the pipeline must return."""
    inputs = processor(pages, sections, for_generation=True, **kwargs)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=processor.pad_token_id)
    new = output[:, inputs["input_ids"].shape[1] :]
    return [processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]


def write_image(path, seed, size=(40, 48)):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def plain_page(image_ref):
    """Section 0 has one image (``image_ref`` goes under "image"), section 1 none."""
    return {
        "title": "Cats",
        "description": "Cats are small carnivorous mammals.",
        "sections": [
            {
                "title": "Habits",
                "text": "The cat sat on the mat. It likes the warm park.",
                "images": [{"image": image_ref, "caption": "a cat on a mat"}],
            },
            {"title": "Diet", "text": "Cats are carnivores. Birds fly south in winter."},
        ],
    }


def second_page(image_path):
    return {
        "title": "Dogs",
        "description": "A dog runs in the park.",
        "sections": [
            {"title": "History", "text": "Dogs are loyal animals. A dog runs in the park."},
            {
                "title": "Habits",
                "text": "The dog sat on the mat.",
                "images": [{"path": image_path, "caption": "a dog"}, {"path": "/no/such/file.png", "caption": "lost"}],
            },
        ],
    }


def wikiweb2m_row():
    return {
        "page_title": "Birds",
        "page_url": "https://en.wikipedia.org/wiki/Birds",
        "clean_page_description": "Birds fly south in winter.",
        "section_title": ["Flight", "Diet"],
        "section_text": ["Birds fly south in winter. They fly far.", "Birds eat seeds. The seeds are small."],
        "section_clean_1st_sentence": ["Birds fly south in winter.", "Birds eat seeds."],
        "section_rest_sentence": ["They fly far.", "The seeds are small."],
        "section_parent_index": [-1, -1],
        "section_image_url": [["https://upload.wikimedia.org/a/b/Bird_1.png"], []],
        "section_image_captions": [["a bird"], []],
    }


def with_target_summary_unknown(page, section):
    """The plain-dict semantics of the pipeline, spelt out for the processor: the target's text is its full
    text (empty summary)."""
    page = json.loads(json.dumps(page))
    page["sections"][section]["summary"] = ""
    for sec in page["sections"]:
        for image in sec.get("images", []):
            if "image" in image:
                image["path"] = image.pop("image")
    return page


def build_hub(root, neighbor_encoding="sa_e"):
    processor = make_processor(neighbor_encoding=neighbor_encoding)
    model = make_model(processor)
    images = root / "images"
    images.mkdir()
    cat = write_image(images / "cat.png", seed=1)
    dog = write_image(images / "dog.png", seed=2)
    write_image(images / "Bird_1.png", seed=3)
    folder = root / "hub"
    files = save_for_hub(model, processor, folder)
    return {"root": root, "folder": folder, "files": files, "model": model, "processor": processor,
            "cat": cat, "dog": dog, "images": images}


@pytest.fixture(scope="module")
def hubs(tmp_path_factory):
    built = {}

    def get(neighbor_encoding="sa_e"):
        if neighbor_encoding not in built:
            built[neighbor_encoding] = build_hub(tmp_path_factory.mktemp(f"mmgl_pipeline_{neighbor_encoding}"), neighbor_encoding)
        return built[neighbor_encoding]

    return get


@pytest.fixture(scope="module")
def hub(hubs):
    return hubs("sa_e")


def clip_text_mask_survives_reload(folder):
    """Whether open_clip's causal text mask (a non-persistent buffer) is rebuilt when the model is loaded.
    Without it the frozen text encoder reads uninitialised memory (NaN logits) after `from_pretrained`."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    mask = loaded.neighbor_encoder.model.attn_mask
    expected = torch.full(mask.shape, float("-inf")).triu_(1)
    return torch.equal(mask, expected)


CHILD = textwrap.dedent(
    """
    import json, sys
    # Only the files in the saved folder may be used.
    sys.modules["modeling_mmgl"] = None
    sys.modules["processing"] = None
    from PIL import Image
    from transformers import pipeline
    folder, cases_file = sys.argv[1], sys.argv[2]
    cases = json.loads(open(cases_file).read())
    pipe = pipeline("mmgl-summarization", model=folder, trust_remote_code=True)
    assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
    assert type(pipe.processor).__module__.startswith("transformers_modules"), type(pipe.processor).__module__
    assert type(pipe.model).__module__.startswith("transformers_modules"), type(pipe.model).__module__
    pil_page = cases["pil_page"]
    pil_page["sections"][0]["images"][0]["image"] = Image.open(cases["cat"]).convert("RGB")
    n = cases["max_new_tokens"]
    out = {}
    out["pil_0"] = pipe({"page": pil_page, "section": 0}, max_new_tokens=n)
    out["pil_1"] = pipe(pil_page, section=1, max_new_tokens=n)
    batch = [{"page": cases["page_a"], "section": 0}, {"page": cases["page_b"], "section": 1}]
    out["batch2"] = pipe(batch, batch_size=2, max_new_tokens=n)
    out["batch1"] = pipe(batch, max_new_tokens=n)
    out["row_images"] = pipe(cases["row"], section=0, image_dir=cases["image_dir"], max_new_tokens=n)
    out["row_no_images"] = pipe(cases["row"], section=0, max_new_tokens=n)
    try:
        pipe(pil_page, section=2)
        out["bad_section"] = None
    except IndexError as err:
        out["bad_section"] = str(err)
    print("RESULT" + json.dumps(out))
    """
)


REPO = Path(__file__).resolve().parents[1]
# What a Hub folder runs: the classes its config.json / processor_config.json `auto_map` and `custom_pipelines` name.
ENTRY_POINTS = ("modeling_mmgl/configuration_mmgl.py", "modeling_mmgl/modeling_mmgl.py",
                "processing/processing_mmgl.py", "processing/pipeline_mmgl.py")


def shipped_files(entry_points=ENTRY_POINTS) -> set[str]:
    """The files the entry points import, following every relative import (lazy ones in functions too) through
    the repository's sources: what an export must hold, derived from the import graph, not from a list."""
    seen, todo = set(), [REPO / path for path in entry_points]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(path.parent / f"{node.module}.py")
    return {path.name for path in seen}


def test_processing_top_level_is_exactly_what_ships():
    """Every file at the top of `processing/` is run by an export, and nothing build-time is (those live in
    `processing/data/` and `processing/training/`)."""
    shipped = shipped_files()
    top_level = {path.name for path in (REPO / "processing").glob("*.py")} - {"__init__.py"}
    assert top_level == {name for name in shipped if (REPO / "processing" / name).is_file()}
    assert not shipped & {"token_store.py", "sample_index.py", "neighbor_inputs.py", "export.py", "wikiweb2m.py"}


def test_hub_folder_is_flat_and_complete(hub):
    folder = hub["folder"]
    # Exactly the files inference imports (the import graph of the entry points); no data tool is shipped.
    code = shipped_files()
    assert {"processing_mmgl.py", "page_graph.py", "errors.py", "wikiweb2m_schema.py", "virtual_tokens.py",
            "neighbor_bridge.py"} <= code
    assert {name for name in hub["files"] if name.endswith(".py")} == code
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json"} <= set(
        hub["files"]
    )
    assert not any(Path(folder, name).is_dir() for name in hub["files"])
    check_flat_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "mmgl-summarization": {"impl": "pipeline_mmgl.MMGLSummarizationPipeline", "pt": ["AutoModelForCausalLM"]}
    }
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mmgl.MMGLForConditionalGeneration"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_mmgl.MMGLProcessor"}
    assert processor_config["neighbor_context_length"] == TINY_CLIP["text_cfg"]["context_length"]
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"] == {"AutoProcessor": "processing_mmgl.MMGLProcessor"}


def test_check_flat_folder_rejects_package_imports(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("x = 1\n")
    check_flat_folder(tmp_path)
    (tmp_path / "c.py").write_text(
        "from processing.page_graph import PageGraph\n\ndef f():\n    from .missing import y\n    from ..up import z\n"
    )
    with pytest.raises(RuntimeError) as err:
        check_flat_folder(tmp_path)
    message = str(err.value)
    assert "c.py: imports the package 'processing.page_graph'" in message
    assert "c.py: 'from .missing import' is not a file of the folder" in message
    assert "c.py: 'from ..up import' leaves the folder" in message
    assert "a.py" not in message


@pytest.mark.parametrize("neighbor_encoding", ["sa_e", "sa_te"])
def test_fresh_process_pipeline_equals_generate(hubs, neighbor_encoding):
    """SA-E sends text neighbours through the model's frozen CLIP text tower, SA-TE only images."""
    hub = hubs(neighbor_encoding)
    model, processor, root = hub["model"], hub["processor"], hub["root"]
    # Regression: open_clip's text mask is a non-persistent buffer that from_pretrained must rebuild.
    assert clip_text_mask_survives_reload(hub["folder"])
    pil_page = plain_page(image_ref=None)  # the child puts the PIL image in
    page_a = plain_page(image_ref=hub["cat"])
    page_b = second_page(hub["dog"])
    row = wikiweb2m_row()
    cases = {
        "pil_page": pil_page, "page_a": page_a, "page_b": page_b, "row": row, "cat": hub["cat"],
        "image_dir": str(hub["images"]), "max_new_tokens": MAX_NEW_TOKENS,
    }
    cases_file = root / "cases.json"
    cases_file.write_text(json.dumps(cases))
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(hub["folder"]), str(cases_file)],
        capture_output=True, text=True, timeout=120, cwd="/",
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(root / "hf_home")},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT"):])

    # Expected: the same pages as the processor takes them, in the parent process, with the original objects.
    pil_as_path = plain_page(image_ref=hub["cat"])
    a0, a1 = (with_target_summary_unknown(pil_as_path, s) for s in (0, 1))
    b1 = with_target_summary_unknown(page_b, 1)
    assert out["pil_0"] == {"summary_text": expected_summaries(model, processor, [a0], [0])[0]}
    assert out["pil_1"] == {"summary_text": expected_summaries(model, processor, [a1], [1])[0]}
    batched = expected_summaries(model, processor, [a0, b1], [0, 1])  # one left-padded batch of two
    assert out["batch2"] == [{"summary_text": text} for text in batched]
    one_by_one = [expected_summaries(model, processor, [p], [s])[0] for p, s in ((a0, 0), (b1, 1))]
    assert out["batch1"] == [{"summary_text": text} for text in one_by_one]
    with_images = expected_summaries(model, processor, [row], [0], image_dir=str(hub["images"]))[0]
    without_images = expected_summaries(model, processor, [row], [0])[0]
    assert out["row_images"] == {"summary_text": with_images}
    assert out["row_no_images"] == {"summary_text": without_images}
    # Not vacuous: the summaries are non-empty and depend on the input.
    texts = [out["pil_0"]["summary_text"], out["pil_1"]["summary_text"], out["row_images"]["summary_text"]]
    assert all(texts) and len(set(texts)) > 1, texts
    assert "section index 2 out of range (2 sections)" in out["bad_section"]


OFF_PATH_CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys
    # The repository off the path: the editable install's finder removed, no path entry inside the repository.
    repo = sys.argv[3]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in str(getattr(f, "__module__", "")) + type(f).__module__]
    sys.path[:] = [p for p in sys.path if "site-packages" in p or not p.startswith(repo)]  # the venv may live in it
    assert importlib.util.find_spec("processing") is None and importlib.util.find_spec("modeling_mmgl") is None
    from transformers import pipeline
    folder, page = sys.argv[1], json.loads(sys.argv[2])
    pipe = pipeline("mmgl-summarization", model=folder, trust_remote_code=True)
    print("RESULT" + json.dumps(pipe({"page": page, "section": 1}, max_new_tokens=%d)))
    """ % MAX_NEW_TOKENS
)


def test_export_loads_in_a_fresh_process_with_the_repository_off_the_path(hub):
    model, processor, root = hub["model"], hub["processor"], hub["root"]
    page = plain_page(image_ref=hub["cat"])
    result = subprocess.run(
        [sys.executable, "-c", OFF_PATH_CHILD, str(hub["folder"]), json.dumps(page), str(REPO)],
        capture_output=True, text=True, timeout=120, cwd="/",
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(root / "hf_home_off_path")},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    expected = expected_summaries(model, processor, [with_target_summary_unknown(page, 1)], [1])[0]
    assert json.loads(lines[-1][len("RESULT"):]) == {"summary_text": expected} and expected


@pytest.fixture(scope="module")
def local_pipe(hub):
    register_pipeline()
    return pipeline("mmgl-summarization", model=hub["model"], processor=hub["processor"], max_new_tokens=MAX_NEW_TOKENS)


def test_in_process_pipeline_and_missing_images(hub, local_pipe):
    model, processor = hub["model"], hub["processor"]
    assert isinstance(local_pipe, MMGLSummarizationPipeline)
    # An image that is not on disk is masked: no placeholders for it, same result as generate.
    page = second_page("/no/such/dog.png")
    inputs = local_pipe.preprocess({"page": page, "section": 1})
    assert inputs["image_neighbor_mask"].tolist() == [[0, 0]]
    expected = expected_summaries(model, processor, [with_target_summary_unknown(page, 1)], [1])[0]
    assert local_pipe({"page": page, "section": 1}) == {"summary_text": expected}
    # A page without any image at all.
    bare = {"title": "T", "sections": [{"title": "A", "text": "The cat sat on the mat."}, {"title": "B", "text": "Dogs."}]}
    expected = expected_summaries(model, processor, [with_target_summary_unknown(bare, 0)], [0])[0]
    assert local_pipe(bare, section=0) == {"summary_text": expected}


def test_pipeline_image_folder_errors_and_masked_image_warning(local_pipe, tmp_path, caplog):
    # A folder that is not there (or a file) is an error naming it, even for a page without images; images that have
    # no file (or a NUL in their path) are masked with a warning counting them, not silently.
    bare = {"title": "T", "sections": [{"title": "A", "text": "The cat sat on the mat."}, {"title": "B", "text": "Dogs."}]}
    with pytest.raises(FileNotFoundError, match=rf"image folder {tmp_path / 'missing'}: no such folder"):
        local_pipe(bare, section=0, image_dir=tmp_path / "missing")
    page = second_page("absent.png")
    page["sections"][1]["images"][1]["path"] = "nul\x00.png"
    with caplog.at_level("WARNING"):
        inputs = local_pipe.preprocess({"page": page, "section": 1}, image_dir=tmp_path)
    assert inputs["image_neighbor_mask"].tolist() == [[0, 0]]
    assert "page 'Dogs', section 1: 2 of 2 image neighbour(s) masked: no file (image_dir" in caplog.text
    assert "section 1, image 1: 'nul\\x00.png'" in caplog.text


def test_plain_dict_target_text_is_full_text(hub, local_pipe):
    tokenizer = hub["processor"].tokenizer
    page = plain_page(image_ref=hub["cat"])
    prompt = tokenizer.decode(local_pipe.preprocess(page, section=0)["input_ids"][0])
    assert "The cat sat on the mat. It likes the warm park." in prompt
    # A WikiWeb2M row has a summary: it stays out of the input, as in training.
    prompt = tokenizer.decode(local_pipe.preprocess(wikiweb2m_row(), section=0)["input_ids"][0])
    assert "They fly far." in prompt and "Birds fly south in winter." not in prompt


def test_generation_parameters(hub, local_pipe):
    model, processor = hub["model"], hub["processor"]
    page = plain_page(image_ref=hub["cat"])
    inputs = processor(with_target_summary_unknown(page, 0), 0, for_generation=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2)
    expected = [
        {"summary_text": processor.tokenizer.decode(ids, skip_special_tokens=True).strip()}
        for ids in output[:, inputs["input_ids"].shape[1] :]
    ]
    got = local_pipe(page, section=0, max_new_tokens=3, num_beams=2, generate_kwargs={"num_return_sequences": 2})
    assert got == expected
    # Default length: the processor's max_target_length.
    generated = local_pipe.forward(local_pipe.preprocess(page, section=0))["generated_ids"]
    assert generated.shape[-1] <= processor.max_target_length


def test_embedding_cache_path_without_encoder(hub, tmp_path):
    from processing.data.build_embedding_cache import build_embedding_cache
    from processing.embedding_cache import EmbeddingCache

    processor = hub["processor"]
    model = make_model(processor, with_encoder=False)
    page = second_page(hub["dog"])
    inputs = processor_neighbor_inputs(processor, [(with_target_summary_unknown(page, 1), 1)])
    texts, image_paths = inputs.texts, inputs.image_files
    cache_dir = tmp_path / "cache"
    build_embedding_cache(
        cache_dir, texts=texts, image_paths=image_paths, model_name="tiny", model_config=TINY_CLIP,
        dtype="float32", progress=False,
    )
    pipe = MMGLSummarizationPipeline(model=model, processor=processor, max_new_tokens=MAX_NEW_TOKENS)
    with pytest.raises(ValueError, match="no neighbor_encoder.*embedding_cache"):
        pipe(page, section=1)
    expected = expected_summaries(
        model, processor, [with_target_summary_unknown(page, 1)], [1], embedding_cache=EmbeddingCache(cache_dir)
    )[0]
    assert pipe(page, section=1, embedding_cache=str(cache_dir)) == {"summary_text": expected}


def test_in_memory_image_equals_its_file(hub, local_pipe, tmp_path):
    """A PIL image (or the file's bytes) under "image" gives what the file's path gives: the same pixels, the
    same generated ids, and with an embedding cache built from the file the same embedding, found by bytes."""
    from processing.data.build_embedding_cache import build_embedding_cache
    from processing.embedding_cache import EmbeddingCache

    processor, cat = hub["processor"], hub["cat"]
    pil = Image.open(cat).convert("RGB")
    png = io.BytesIO()
    pil.save(png, format="PNG")
    # A cache keys a file by its bytes and a PIL image by its PNG encoding: the same key here (the file was
    # written by PIL with default options), which the cache lookups below rely on.
    assert png.getvalue() == Path(cat).read_bytes()
    by_path = plain_page(image_ref=cat)
    in_memory = {"pil": plain_page(image_ref=pil), "bytes": plain_page(image_ref=Path(cat).read_bytes())}

    inputs = processor_neighbor_inputs(processor, [(with_target_summary_unknown(by_path, s), s) for s in (0, 1)])
    texts, image_paths = inputs.texts, inputs.image_files
    assert image_paths == [cat]
    cache_dir = tmp_path / "cache"
    build_embedding_cache(
        cache_dir, texts=texts, image_paths=image_paths, model_name="tiny", model_config=TINY_CLIP,
        dtype="float32", progress=False,
    )
    cached_pipe = MMGLSummarizationPipeline(
        model=make_model(processor, with_encoder=False), processor=processor, max_new_tokens=MAX_NEW_TOKENS
    )
    # Section 0 holds the image, section 1 sees it as a neighbour's. preprocess takes an opened cache, a
    # call its path.
    for pipe, kwargs, call_kwargs, image_key in (
        (local_pipe, {}, {}, "image_neighbor_pixel_values"),
        (cached_pipe, {"embedding_cache": EmbeddingCache(cache_dir)}, {"embedding_cache": str(cache_dir)},
         "image_neighbor_embeds"),
    ):
        for section in (0, 1):
            expected = pipe.preprocess(by_path, section=section, **kwargs)
            assert expected["image_neighbor_mask"][0, 0] == 1  # the image is used, not masked
            assert expected[image_key][0, 0].abs().sum() > 0
            expected_ids = pipe.forward(expected)["generated_ids"]
            for name, page in in_memory.items():
                got = pipe.preprocess(page, section=section, **kwargs)
                assert got.keys() == expected.keys(), name
                for key in expected:
                    assert torch.equal(got[key], expected[key]), (name, section, key)
                assert torch.equal(pipe.forward(got)["generated_ids"], expected_ids), (name, section)
                assert pipe(page, section=section, **call_kwargs) == pipe(by_path, section=section, **call_kwargs), name


def test_graph_from_another_copy_of_page_graph(hub, local_pipe, monkeypatch):
    """A graph built by another copy of page_graph.py (a Hub folder's, next to the installed package) is
    taken as it is, bare or under "page"."""
    # As transformers loads it: a module of a package of the folder's own, whose relative imports load its files.
    package = types.ModuleType("hub_copy_folder")
    package.__path__ = [str(hub["folder"])]
    monkeypatch.setitem(sys.modules, package.__name__, package)
    spec = importlib.util.spec_from_file_location("hub_copy_folder.page_graph", hub["folder"] / "page_graph.py")
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, copy)  # dataclasses look their module up while decorating
    spec.loader.exec_module(copy)
    page = second_page(hub["dog"])
    graph = copy.PageGraph.from_dict(page)
    assert not isinstance(graph, PageGraph)
    expected = {"summary_text": expected_summaries(hub["model"], hub["processor"], [PageGraph.from_dict(page)], [1])[0]}
    assert local_pipe(graph, section=1) == expected
    assert local_pipe({"page": graph, "section": 1}) == expected
    with pytest.raises(IndexError, match=r"section index 2 out of range \(2 sections\)"):
        local_pipe(graph, section=2)


def test_clear_errors(hub, local_pipe):
    page = plain_page(image_ref=hub["cat"])
    with pytest.raises(IndexError, match=r"section index 5 out of range \(2 sections\)"):
        local_pipe(page, section=5)
    with pytest.raises(IndexError, match="section index -1 out of range"):
        local_pipe({"page": page, "section": -1})
    with pytest.raises(ValueError, match="no target section"):
        local_pipe(page)
    with pytest.raises(TypeError, match="section must be an int"):
        local_pipe(page, section="1")
    with pytest.raises(TypeError, match=r"expected \{'page'"):
        local_pipe("The cat sat on the mat.", section=0)
    with pytest.raises(TypeError, match="unexpected parameter"):
        local_pipe(page, section=0, temprature=0.5)
    with pytest.raises(TypeError, match="merge peft adapters"):
        save_for_hub(type("Peft", (), {"merge_and_unload": None})(), hub["processor"], hub["root"] / "x")


def test_pipeline_without_processor_loads_it_from_the_model_folder(hub):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="needs its MMGLProcessor"):
        MMGLSummarizationPipeline(model=make_model(hub["processor"]))
    model = AutoModelForCausalLM.from_pretrained(hub["folder"], trust_remote_code=True)
    pipe = MMGLSummarizationPipeline(model=model)
    assert type(pipe.processor).__name__ == "MMGLProcessor"
    names = ["context", "neighbor_encoding", "text_neighbor_num_tokens", "image_neighbor_num_tokens", "max_text_neighbors",
             "max_image_neighbors", "max_source_length", "max_target_length", "neighbor_context_length", "neighbor_token_id"]
    assert {n: getattr(pipe.processor, n) for n in names} == {n: getattr(hub["processor"], n) for n in names}
    assert pipe.tokenizer.get_vocab() == hub["processor"].tokenizer.get_vocab()


def test_cache_of_another_encoder_is_refused(hub, tmp_path):
    """An embedding cache filled by another encoder of the same width would be read silently (cosine ~0 to the
    model's own embeddings): the pipeline refuses it, naming both encoders."""
    from processing.data.build_embedding_cache import build_embedding_cache
    from processing.embedding_cache import EncoderMismatchError

    processor = hub["processor"]
    model = make_model(processor)  # its in-model encoder: the seeded random init of TINY_CLIP
    other = MMGLNeighborEncoder.from_settings("tiny", model_config=TINY_CLIP)
    with torch.no_grad():
        for param in other.model.parameters():
            param.mul_(-1.0)  # same shapes and width, other weights
    build_embedding_cache(tmp_path / "other", texts=["a dog"], encoder=other, progress=False)
    pipe = MMGLSummarizationPipeline(model=model, processor=processor, max_new_tokens=MAX_NEW_TOKENS)
    page = second_page(hub["dog"])
    with pytest.raises(EncoderMismatchError, match=r"weights_sha256: cache .* the model's neighbor_encoder"):
        pipe(page, section=1, embedding_cache=str(tmp_path / "other"))
    build_embedding_cache(tmp_path / "own", texts=["a dog"], encoder=model.neighbor_encoder, progress=False)
    pipe._open_embedding_cache(str(tmp_path / "own"))  # the model's own encoder: accepted
