"""The one image resolver and the one preprocessing (`processing.image_source`): every way of naming an image file,
traversal refused in every encoding, decoding failures (decompression bombs included) masked on the raw-pixel path."""
import hashlib
import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from processing.image_source import (
    ImageDecodeError,
    ImageFolder,
    ImageManifest,
    ManifestIndex,
    clip_image_processor,
    load_rgb_image,
    pixel_values,
)

BASE = "https://upload.wikimedia.org/wikipedia/commons/7/74/"


def png(color=(10, 200, 30), size=(12, 9)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def layout(tmp_path):
    """A plain image folder inside tmp_path, with a secret file beside it that nothing may reach."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "A%26B.jpg").write_bytes(png())
    (images / "C&D.jpg").write_bytes(png())
    (images / "sub" / "x.png").write_bytes(png())
    (tmp_path / "secret.jpg").write_bytes(png((255, 0, 0)))
    return tmp_path, images


def test_plain_folder_by_url_basename_decoded_or_not(layout):
    _, images = layout
    folder = ImageFolder(images)
    assert folder.resolve(BASE + "A%26B.jpg") == str(images / "A%26B.jpg")  # as stored
    assert folder.resolve(BASE + "C%26D.jpg") == str(images / "C&D.jpg")  # percent-decoded
    assert folder.resolve(BASE + "C%26D.jpg?download=1") == str(images / "C&D.jpg")  # query ignored
    assert folder.resolve(BASE + "Absent.jpg") is None
    assert folder.resolve("sub/x.png") == str(images / "sub" / "x.png")  # a relative path
    assert folder.resolve(str(images / "sub" / "x.png")) == str(images / "sub" / "x.png")  # absolute, inside
    assert folder.resolve(None) is None and folder.resolve("") is None and folder.resolve(42) is None


@pytest.mark.parametrize(
    "ref",
    [
        BASE + "..%2Fsecret.jpg",  # encoded slash
        BASE + "%2e%2e%2fsecret.jpg",  # encoded dots and slash
        BASE + "%2E%2E%2Fsecret.jpg",  # upper-case escapes
        BASE + "%252e%252e%252fsecret.jpg",  # double-encoded: decodes once to a literal name, never a path
        BASE + "..%5Csecret.jpg",  # backslash
        BASE + "..",
        "https://x.org/" + "%2e%2e",
        "../secret.jpg",  # a relative path that leaves the folder
        "sub/../../secret.jpg",
        "%2e%2e/secret.jpg",  # a relative path is not decoded: a literal, absent, name
        "SECRET",  # replaced below by the absolute path of the secret file
        "LINK",  # replaced below by a symbolic link inside the folder pointing outside
    ],
)
def test_nothing_outside_the_folder_is_ever_returned(layout, ref):
    root, images = layout
    if ref == "SECRET":
        ref = str(root / "secret.jpg")
    if ref == "LINK":
        os.symlink(root / "secret.jpg", images / "link.jpg")
        ref = "link.jpg"
    assert ImageFolder(images).resolve(ref) is None


def test_fetcher_folder_through_its_manifest(tmp_path):
    fetched = tmp_path / "fetched"
    data = png()
    sha = hashlib.sha256(data).hexdigest()
    (fetched / sha[:2]).mkdir(parents=True)
    (fetched / sha[:2] / f"{sha}.png").write_bytes(data)
    (tmp_path / "outside.png").write_bytes(data)
    manifest = ImageManifest(fetched / "manifest.jsonl")
    manifest.append({"url": "https://x.org/a/Photo.jpg", "status": "ok", "sha256": sha, "path": f"{sha[:2]}/{sha}.png"})
    manifest.append({"url": "https://x.org/b/Gone.jpg", "status": "error", "reason": "http_404"})
    manifest.append({"url": "https://x.org/c/Evil.jpg", "status": "ok", "sha256": sha, "path": "../outside.png"})
    folder = ImageFolder(fetched)
    assert folder.resolve("https://x.org/a/Photo.jpg") == str(fetched / sha[:2] / f"{sha}.png")
    assert folder.sha256("https://x.org/a/Photo.jpg") == sha  # known without reading the file
    assert folder.resolve("https://x.org/b/Gone.jpg") is None and folder.sha256("https://x.org/b/Gone.jpg") is None
    assert folder.resolve("https://x.org/c/Evil.jpg") is None  # a manifest path may not leave the folder either
    assert "manifest" in repr(folder)


def test_without_a_folder_urls_resolve_to_nothing_and_paths_are_the_callers(layout):
    root, _ = layout
    folder = ImageFolder(None)
    assert folder.resolve(BASE + "A%26B.jpg") is None
    assert folder.resolve(str(root / "secret.jpg")) == str(root / "secret.jpg")
    assert folder.resolve(str(root / "absent.jpg")) is None


def test_decoding_failures_name_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"<html>nope</html>")
    with pytest.raises(ImageDecodeError, match="not-an-image.jpg"):
        load_rgb_image(str(bad))
    bomb = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 90,000 pixels > 2 x the limit: PIL raises
    with pytest.raises(ImageDecodeError, match=r"bomb.png.*DecompressionBomb"):
        load_rgb_image(str(bomb))
    with pytest.raises(ImageDecodeError, match="in-memory bytes image"):
        load_rgb_image(b"garbage")


def test_one_preprocessing_for_files_bytes_and_pil_images(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png((90, 20, 200), (40, 30)))
    processor = clip_image_processor("ViT-B-32", {"embed_dim": 8, "vision_cfg": {"image_size": 16}, "text_cfg": {}})
    from_file = pixel_values(processor, [load_rgb_image(str(path))])
    from_bytes = pixel_values(processor, [load_rgb_image(path.read_bytes())])
    from_pil = pixel_values(processor, [load_rgb_image(Image.open(path))])
    assert from_file.shape == (1, 3, 16, 16)
    assert torch.equal(from_file, from_bytes) and torch.equal(from_file, from_pil)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the named-model path reads the bundled config only
        assert clip_image_processor("ViT-B-32").crop_size == {"height": 224, "width": 224}


def test_processor_masks_undecodable_images_and_never_reads_outside_the_folder(layout, monkeypatch):
    """The raw-pixel path (pipeline, training without a cache): a decompression bomb and a traversal URL are masked,
    the bomb with one warning naming its file; the good image keeps its pixels."""
    from processing.data.bpe_tokenizer import train_bpe_tokenizer
    from processing.processing_mmgl import MMGLProcessor
    from tests.modeling_helpers import TINY_CLIP

    root, images = layout
    Image.new("L", (300, 300)).save(images / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # only the 300 x 300 image is a "bomb"
    tokenizer = train_bpe_tokenizer(["Cats purr. Context: Section: Summary:"] * 10, vocab_size=200)
    processor = MMGLProcessor(clip_image_processor("ViT-B-32", TINY_CLIP), tokenizer, context="section_all",
                              neighbor_encoding="sa_e", neighbor_context_length=16)
    page = {"title": "T", "sections": [{"title": "S", "text": "Cats purr. They sleep.", "images": [
        {"url": BASE + "bomb.png", "caption": "bomb"},
        {"url": BASE + "..%2Fsecret.jpg", "caption": "escape"},
        {"url": BASE + "C%26D.jpg", "caption": "fine"},
    ]}]}
    with pytest.warns(UserWarning, match=r"bomb.png.*masking it") as caught:
        example = processor.build_example(page, 0, image_dir=images)
    assert len([w for w in caught if "masking" in str(w.message)]) == 1
    assert example["image_neighbor_mask"].tolist() == [0, 0, 1]
    assert example["image_neighbor_pixel_values"][2].abs().sum() > 0


def test_manifest_index_reads_what_the_manifest_reads(tmp_path, caplog):
    """The resolver's compact view (`ManifestIndex`: sorted URL digests + line offsets, the file mapped) gives every
    URL the record `ImageManifest` gives: the last line of a URL wins, an unreadable line is skipped naming its
    line, a cut last line and unicode URLs are read alike; it holds no record objects and survives pickling."""
    import pickle

    path = tmp_path / "manifest.jsonl"
    manifest = ImageManifest(path)
    urls = [f"https://upload.example.org/{i}/Bild_{i}_é.jpg" for i in range(50)]
    for i, url in enumerate(urls):
        manifest.append({"url": url, "status": "error", "reason": "timeout"})
        if i % 3:
            manifest.append({"url": url, "status": "ok", "sha256": f"{i:064x}", "path": f"{i:02d}/{i}.jpg"})
    with open(path, "a", encoding="utf-8") as f:
        f.write("not json\n\n")
        f.write('{"url": "https://upload.example.org/cut.jpg", "status": "ok", "sha256": "%s", "path": "c/cut.jpg"}'
                % ("c" * 64))  # no newline
    with caplog.at_level("WARNING"):
        index = ManifestIndex(path)
    assert any(f"{path}:" in r.getMessage() and "unreadable manifest line" in r.getMessage() for r in caplog.records)
    reference = ImageManifest(path)
    for url in urls + ["https://upload.example.org/cut.jpg", "https://upload.example.org/absent.jpg", None]:
        assert index.get(url) == reference.get(url), url
    assert len(index) == len(reference) == len(urls) + 1
    assert not hasattr(index, "_records") and index._keys.dtype == np.dtype("V16")
    again = pickle.loads(pickle.dumps(index))
    assert again.get(urls[1]) == reference.get(urls[1]) and again.get(urls[1])["status"] == "ok"
    (tmp_path / "empty.jsonl").touch()
    assert ManifestIndex(tmp_path / "empty.jsonl").get(urls[0]) is None and len(ManifestIndex(tmp_path / "empty.jsonl")) == 0


def test_control_characters_in_image_references_are_masked_never_handed_to_the_os(tmp_path, caplog):
    from processing.page_graph import PageGraph

    (tmp_path / "a.png").write_bytes(b"x")
    folder = ImageFolder(tmp_path)
    for ref in ("a\x00.png", "http://h/a%00.png", "http://h/a\x00.png", "a\n.png", "\x7f"):
        assert folder.resolve(ref) is None, ref  # no "embedded null byte" from the OS
    assert folder.resolve("http://h/a.png") == str(tmp_path / "a.png")
    page = {"title": "T", "sections": [{"title": "A", "text": "One. Two.", "images": [
        {"path": "a.png", "caption": "ok"}, {"path": "b\x00.png", "caption": "nul"}, {"url": "http://h/c%00.png"}]}]}
    with caplog.at_level("WARNING", logger="processing.page_graph"):
        graph = PageGraph.from_dict(page)
    assert [graph.nodes[n].image for n in graph.image_nodes[0]] == ["a.png", None, None]
    assert ("page 'T': 2 image reference(s) hold a NUL or another control character and are masked (expected a URL "
            "or a file path): section 0, image 1: 'b\\x00.png'; section 0, image 2: 'http://h/c%00.png'") in caplog.text


def test_a_missing_or_file_image_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"image folder {tmp_path / 'missing'}: no such folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"image folder {tmp_path / 'file'}: not a folder"):
        ImageFolder(tmp_path / "file")
