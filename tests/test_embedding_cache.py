"""Embedding cache (reader `processing.embedding_cache`, builder `processing.data.build_embedding_cache`) with a
tiny random-init open_clip model (no hub, CPU)."""
import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
from processing.data.build_embedding_cache import build_embedding_cache
from processing.embedding_cache import (
    INDEX_NAME,
    CorruptIndexError,
    CorruptShardError,
    EmbeddingCache,
    EncoderMismatchError,
    image_key,
    text_key,
)
from processing.image_source import clip_image_processor, load_rgb_image, pixel_values
from processing.data.token_store import build_token_cache
from processing.data.neighbor_inputs import processor_neighbor_inputs

pytestmark = pytest.mark.timeout(120)

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXTS = [f"section text number {i} about Ray Charles" for i in range(10)]


def tiny_encoder(seed=0, config=TINY):
    """A random tiny CLIP. The wrapper seeds a weightless encoder with 0 itself; other seeds get other weights."""
    encoder = MMGLNeighborEncoder.from_settings("tiny", model_config=config)
    if seed:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in encoder.model.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * param.std().clamp(min=0.02))
    return encoder


def test_weightless_encoder_is_the_same_whatever_the_global_seed():
    torch.manual_seed(123)
    first = MMGLNeighborEncoder.from_settings("tiny", model_config=TINY)
    torch.manual_seed(456)
    state = torch.get_rng_state()
    second = MMGLNeighborEncoder.from_settings("tiny", model_config=TINY)
    assert first.identity()["weights_sha256"] == second.identity()["weights_sha256"]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


class Spy:
    """Wraps an encoder: records what gets encoded and can die on the n-th encoder call."""

    def __init__(self, encoder, die_on_call=None):
        self.encoder = encoder
        self.die_on_call = die_on_call
        self.calls = 0
        self.texts = []
        self.images = 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def _tick(self):
        self.calls += 1
        if self.die_on_call is not None and self.calls >= self.die_on_call:
            raise RuntimeError("simulated kill")

    def embed_texts(self, texts, tokenize=None):
        self._tick()
        self.texts.extend(texts)
        return self.encoder.embed_texts(texts, tokenize)

    def encode_image(self, pixels):
        self._tick()
        self.images += pixels.shape[0]
        return self.encoder.encode_image(pixels)


class FakeState:
    """Stands in for accelerate.PartialState of one rank of a multi-process run."""

    def __init__(self, rank, world):
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        pass


def build(cache_dir, encoder, **kwargs):
    kwargs.setdefault("progress", False)
    return build_embedding_cache(cache_dir, encoder=encoder, **kwargs)


def write_images(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (40 + i, 30), (60 * i, 100, 200 - 50 * i)).save(path)
        paths.append(path)
    Image.new("L", (20, 50), 128).save(folder / "gray.jpg")  # needs the RGB conversion
    Image.new("RGBA", (33, 33), (10, 200, 10, 100)).save(folder / "rgba.png")
    return paths + [folder / "gray.jpg", folder / "rgba.png"]


def shards(cache_dir, kind="text"):
    return sorted((Path(cache_dir) / kind).glob("shard-*.safetensors"))


def rewrite(path, data):
    """Overwrite a file as a later write would: its modification time moves on. (File systems with coarse clocks
    can give a write a few milliseconds after the build the build's own timestamp; a damaged file met in practice
    was written long after its build.)"""
    before = os.stat(path).st_mtime_ns
    Path(path).write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


# ----------------------------------------------------------------------------------------------


def test_keys():
    assert text_key("é") == hashlib.sha256("é".encode("utf-8")).hexdigest()
    assert image_key(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_dedup_and_values_equal_the_encoder(tmp_path, encoder):
    images = write_images(tmp_path / "img")
    twin = tmp_path / "img" / "copy-of-img0.png"
    shutil.copy(images[0], twin)
    texts = ["a cat", "a dog", "a cat", "ünïcode ✓", "a dog"]
    spy = Spy(encoder)
    cache = build(tmp_path / "cache", spy, texts=texts, image_paths=images + [twin, images[1]],
                  dtype="float32", batch_size=2)
    assert sorted(spy.texts) == ["a cat", "a dog", "ünïcode ✓"]  # each once
    assert spy.images == len(images)  # the twin file has the same bytes as img0
    assert len(cache.keys("text")) == 3 and len(cache.keys("image")) == len(images)
    assert cache.embed_dim == 32 and cache.dtype == torch.float32

    with torch.no_grad():
        unique = ["a cat", "a dog", "ünïcode ✓"]
        direct = encoder.model.encode_text(encoder.tokenizer(unique), normalize=True)
        # The processor's preprocessing, image by image: the cache holds exactly what the model would compute.
        processor = clip_image_processor("tiny", TINY)
        pixels = torch.cat([pixel_values(processor, [load_rgb_image(str(p))]) for p in images])
        direct_img = encoder.model.encode_image(pixels, normalize=True)
    for text, expected in zip(unique, direct):
        torch.testing.assert_close(cache.get_text(text), expected, atol=1e-5, rtol=1e-5)
    for path, expected in zip(images, direct_img):
        torch.testing.assert_close(cache.get_image(path), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.get_image(twin), cache.get_image(images[0]))
    torch.testing.assert_close(cache.get_image(twin.read_bytes()), cache.get_image(images[0]))
    shutil.copy(images[1], twin)  # the file changes under the same path: its key must too
    torch.testing.assert_close(cache.get_image(twin), cache.get_image(images[1]))
    assert cache.get_text("never seen") is None
    assert ("text", text_key("a cat")) in cache and ("image", text_key("a cat")) not in cache

    batch, found = cache.get_many("text", [text_key("a dog"), "0" * 64])
    assert found.tolist() == [True, False] and batch.shape == (2, 32)
    torch.testing.assert_close(batch[0], direct[1], atol=1e-5, rtol=1e-5)
    assert torch.all(batch[1] == 0)
    with pytest.raises(ValueError, match="unknown embedding kind 'audio'"):
        cache.get("audio", "x")


def test_float16_storage_is_close(tmp_path, encoder):
    cache = build(tmp_path / "c16", encoder, texts=TEXTS[:4])
    assert cache.dtype == torch.float16
    direct = encoder.embed_texts(TEXTS[:4])
    for text, expected in zip(TEXTS[:4], direct):
        got = cache.get_text(text)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), expected, atol=2e-3, rtol=0)


def test_resume_after_kill_encodes_only_the_rest(tmp_path, encoder):
    reference = build(tmp_path / "ref", encoder, texts=TEXTS, dtype="float32", batch_size=2, shard_size=2)

    cache_dir = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="simulated kill"):
        build(cache_dir, Spy(encoder, die_on_call=4), texts=TEXTS, dtype="float32", batch_size=2, shard_size=2)
    assert [p.name for p in shards(cache_dir)] == [f"shard-r000-0000{i}.safetensors" for i in range(3)]
    # As if the kill had struck while the next shard was being written.
    (cache_dir / "text" / ".shard-r000-00003.safetensors.tmp").write_bytes(b"half a shard")
    partial = EmbeddingCache(cache_dir)
    assert len(partial.keys("text")) == 6  # the temp file is never read

    spy = Spy(encoder)
    cache = build(cache_dir, spy, texts=TEXTS, dtype="float32", batch_size=2, shard_size=2)
    assert spy.texts == TEXTS[6:]
    assert cache.build_summary["text"]["cached"] == 6 and cache.build_summary["text"]["encoded"] == 4
    assert not list((cache_dir / "text").glob("*.tmp"))
    for text in TEXTS:
        torch.testing.assert_close(cache.get_text(text), reference.get_text(text), atol=1e-6, rtol=1e-5)

    again = Spy(encoder)
    build(cache_dir, again, texts=TEXTS, dtype="float32", batch_size=2, shard_size=2)
    assert again.calls == 0  # a complete cache encodes nothing


def test_truncated_shard_is_detected_and_recomputed(tmp_path, encoder, caplog):
    cache_dir = tmp_path / "cache"
    original = build(cache_dir, encoder, texts=TEXTS[:6], batch_size=2, shard_size=2)
    expected = {t: original.get_text(t) for t in TEXTS[:6]}
    damaged = shards(cache_dir)[1]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])

    with pytest.raises(CorruptShardError, match=str(damaged)):
        EmbeddingCache(cache_dir)

    spy = Spy(encoder)
    with caplog.at_level(logging.ERROR, logger="processing.data.build_embedding_cache"):
        cache = build(cache_dir, spy, texts=TEXTS[:6], batch_size=2, shard_size=2)
    assert str(damaged) in caplog.text
    assert sorted(spy.texts) == sorted(TEXTS[2:4])  # only the damaged shard's rows
    assert damaged.with_name(damaged.name + ".corrupt").exists()
    assert cache.build_summary["set_aside"] == [str(damaged)]
    for text, value in expected.items():
        torch.testing.assert_close(cache.get_text(text), value)


def test_flipped_bytes_fail_the_checksum(tmp_path, encoder):
    cache_dir = tmp_path / "cache"
    build(cache_dir, encoder, texts=TEXTS[:4], batch_size=2, shard_size=2)
    damaged = shards(cache_dir)[0]
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: the header stays valid
    rewrite(damaged, bytes(data))

    cache = EmbeddingCache(cache_dir)  # the header is fine...
    with pytest.raises(CorruptShardError, match=f"{damaged}.*checksum"):
        cache.get_text(TEXTS[0])  # ...but the data is never handed out

    spy = Spy(encoder)
    rebuilt = build(cache_dir, spy, texts=TEXTS[:4], batch_size=2, shard_size=2)
    assert sorted(spy.texts) == sorted(TEXTS[:2])
    rebuilt.verify()


def test_mixing_encoders_is_refused(tmp_path, encoder):
    cache_dir = tmp_path / "cache"
    build(cache_dir, encoder, texts=TEXTS[:2])
    before = sorted(p.name for p in (cache_dir / "text").iterdir())

    other_weights = tiny_encoder(seed=1)
    with pytest.raises(EncoderMismatchError, match=r"cache_config.json.*weights_sha256"):
        build(cache_dir, other_weights, texts=TEXTS)
    wider = dict(TINY, embed_dim=16)
    with pytest.raises(EncoderMismatchError, match=r"config_sha256.*embed_dim: cache has 32, this build has 16"):
        build(cache_dir, tiny_encoder(config=wider), texts=TEXTS)
    with pytest.raises(EncoderMismatchError, match="dtype: cache has 'float16', this build has 'float32'"):
        build(cache_dir, encoder, texts=TEXTS, dtype="float32")
    assert sorted(p.name for p in (cache_dir / "text").iterdir()) == before
    config = json.loads((cache_dir / "cache_config.json").read_text())
    assert config["model_name"] == "tiny" and config["pretrained"] is None


def test_split_across_processes(tmp_path, encoder):
    images = write_images(tmp_path / "img")
    single = build(tmp_path / "single", encoder, texts=TEXTS, image_paths=images, dtype="float32")

    cache_dir = tmp_path / "multi"
    spies = []
    for rank in (0, 1):  # the ranks run one after the other here; under accelerate, together
        spy = Spy(encoder)
        cache = build(cache_dir, spy, texts=TEXTS, image_paths=images, dtype="float32", state=FakeState(rank, 2))
        spies.append(spy)
    assert spies[0].texts == TEXTS[0::2] and spies[1].texts == TEXTS[1::2]
    assert {p.name for p in shards(cache_dir)} == {"shard-r000-00000.safetensors", "shard-r001-00000.safetensors"}
    assert spies[0].images + spies[1].images == len(images)
    assert len(cache.keys("text")) == len(TEXTS) and len(cache.keys("image")) == len(images)
    for text in TEXTS:
        torch.testing.assert_close(cache.get_text(text), single.get_text(text), atol=1e-6, rtol=1e-5)
    for path in images:
        torch.testing.assert_close(cache.get_image(path), single.get_image(path), atol=1e-6, rtol=1e-5)


def test_two_real_processes_with_torchrun(tmp_path, encoder):
    """Two processes under torchrun (gloo on CPU) split the keys and write rank-named shards."""
    script = tmp_path / "embed.py"
    script.write_text(
        "import sys, torch\n"
        "from processing.data.build_embedding_cache import build_embedding_cache\n"
        "torch.manual_seed(0)  # the same weights as the `encoder` fixture\n"
        f"build_embedding_cache(sys.argv[1], texts={TEXTS!r}, model_name='tiny', model_config={TINY!r},\n"
        "                      batch_size=2, shard_size=2, progress=False)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=100,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    names = {p.name for p in shards(tmp_path / "cache")}
    assert {n[:10] for n in names} == {"shard-r000", "shard-r001"}
    assert len(names) == 6  # 5 texts per rank, 2 per shard
    spy = Spy(encoder)
    cache = build(tmp_path / "cache", spy, texts=TEXTS)  # same encoder identity: accepted...
    assert spy.calls == 0  # ...and nothing is left to encode
    for text, expected in zip(TEXTS, encoder.embed_texts(TEXTS)):
        torch.testing.assert_close(cache.get_text(text).float(), expected, atol=2e-3, rtol=0)


def test_unreadable_images_are_skipped_and_counted(tmp_path, encoder, caplog):
    images = write_images(tmp_path / "img", n=1)
    bad = tmp_path / "img" / "not-an-image.jpg"
    bad.write_bytes(b"<html>nope</html>")
    with caplog.at_level(logging.WARNING, logger="processing.data.build_embedding_cache"):
        cache = build(tmp_path / "cache", encoder, image_paths=images + [bad, tmp_path / "missing.png"])
    summary = cache.build_summary["image"]
    assert summary["encoded"] == len(images) and summary["failed"] == 1 and summary["unreadable"] == 1
    assert str(bad) in caplog.text and "missing.png" in caplog.text
    assert cache.get_image(bad) is None


def test_open_without_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cache_config.json"):
        EmbeddingCache(tmp_path)


def test_real_wikipedia_images(tmp_path, encoder, realwiki_dir):
    images = sorted((realwiki_dir / "images").iterdir())
    cache = build(tmp_path / "cache", encoder, image_paths=images, batch_size=16, shard_size=16)
    assert cache.build_summary["image"]["failed"] == 0
    assert len(cache.keys("image")) == len({image_key(p) for p in images})
    for path in images:
        embedding = cache.get_image(path)
        assert embedding is not None and abs(float(embedding.float().norm()) - 1) < 1e-2


# ------------------------------------------------------------------ the memory-mapped key index (issue 9)


def reference_rows(cache_dir):
    """The previous reader's view of a cache, independent of the index: every shard loaded whole, each key
    (from the shard's metadata) mapped to its row; the first shard holding a key wins."""
    from safetensors import safe_open

    rows = {}
    for kind in ("text", "image"):
        for path in shards(cache_dir, kind):
            with safe_open(str(path), framework="pt") as f:
                keys, embeddings = json.loads(f.metadata()["keys"]), f.get_tensor("embeddings")
            for key, row in zip(keys, embeddings):
                rows.setdefault((kind, key), row)
    return rows


def is_mapped(array) -> bool:
    """Whether ``array`` is a view of a memory-mapped file."""
    import mmap

    while array is not None and not isinstance(array, mmap.mmap):
        array = getattr(array, "base", None)
    return array is not None


def test_index_round_trip(tmp_path, encoder):
    images = write_images(tmp_path / "img")
    build(tmp_path / "cache", encoder, texts=TEXTS, image_paths=images, shard_size=3, batch_size=2)
    assert (tmp_path / "cache" / INDEX_NAME).is_file()
    cache = EmbeddingCache(tmp_path / "cache")
    assert cache.index_fresh and cache.dtype == torch.float16
    assert all(is_mapped(table.keys) for table in cache._tables.values())  # mapped, not read
    expected = reference_rows(tmp_path / "cache")
    assert cache.count("text") == len(TEXTS) and cache.count("image") == len(images)
    assert sorted(cache.keys("text")) == sorted(key for kind, key in expected if kind == "text")
    for text in TEXTS:
        got = cache.get_text(text)
        assert got.dtype == torch.float16 and torch.equal(got, expected[("text", text_key(text))])
    for path in images:
        assert torch.equal(cache.get_image(path), expected[("image", image_key(path))])
    batch, found = cache.get_many("text", [text_key(TEXTS[3]), "0" * 64, "not hex"])
    assert found.tolist() == [True, False, False] and torch.equal(batch[0], expected[("text", text_key(TEXTS[3]))])
    assert ("text", text_key(TEXTS[0])) in cache and ("text", "f" * 64) not in cache
    # A spawned DataLoader worker receives the folder, not the vectors, and opens the same files.
    blob = pickle.dumps(cache)
    assert len(blob) < 1000
    assert torch.equal(pickle.loads(blob).get_text(TEXTS[5]), expected[("text", text_key(TEXTS[5]))])


def test_incremental_extension_leaves_old_rows_untouched(tmp_path, encoder):
    images = write_images(tmp_path / "img")
    cache_dir = tmp_path / "cache"
    first = build(cache_dir, encoder, texts=TEXTS[:5], image_paths=images[:2], shard_size=2)
    old = {p: (p.read_bytes(), p.stat().st_mtime_ns) for kind in ("text", "image") for p in shards(cache_dir, kind)}
    old_values = {t: first.get_text(t) for t in TEXTS[:5]}
    old_images = {p: first.get_image(p) for p in images[:2]}

    spy = Spy(encoder)
    cache = build(cache_dir, spy, texts=TEXTS[3:] + TEXTS[:2], image_paths=images, shard_size=2)
    assert spy.texts == TEXTS[5:] and spy.images == len(images) - 2  # only what is new
    for path, (data, mtime) in old.items():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    reopened = EmbeddingCache(cache_dir)
    assert reopened.index_fresh and reopened.count("text") == len(TEXTS) and reopened.count("image") == len(images)
    for text, value in old_values.items():
        assert torch.equal(reopened.get_text(text), value)
    for path, value in old_images.items():
        assert torch.equal(reopened.get_image(path), value)
    expected = reference_rows(cache_dir)
    for text in TEXTS[5:]:
        assert torch.equal(reopened.get_text(text), expected[("text", text_key(text))])
    assert cache.build_summary["shards_checked"] == 0  # the first build's shards are not read again


class OpenSpy:
    """Records every file opened through Python (`open`, `io.open`, numpy's maps), safetensors and PIL."""

    def __init__(self, monkeypatch):
        import builtins
        import io

        import PIL.Image

        import processing.data.build_embedding_cache as builder
        import processing.embedding_cache as reader

        self.paths = []
        for owner, name in ((builtins, "open"), (io, "open"), (PIL.Image, "open"), (reader, "safe_open"),
                            (builder, "safe_open")):
            if hasattr(owner, name):
                monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name)))

    def _wrap(self, original):
        def opened(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                self.paths.append(os.fspath(file))
            return original(file, *args, **kwargs)

        return opened

    def under(self, *folders):
        return [p for p in self.paths if any(os.path.abspath(p).startswith(os.path.abspath(f) + os.sep) for f in folders)]


def test_opening_a_complete_cache_reads_no_shard_and_no_image(tmp_path, encoder, monkeypatch):
    images = write_images(tmp_path / "img")
    sha256 = {os.fspath(p): image_key(p) for p in images}  # what the fetcher's manifest records
    cache_dir = tmp_path / "cache"
    built = build(cache_dir, encoder, texts=TEXTS, image_paths=images, shard_size=3)
    expected = {t: built.get_text(t) for t in TEXTS}
    shard_dirs = (cache_dir / "text", cache_dir / "image")

    spy = OpenSpy(monkeypatch)
    cache = EmbeddingCache(cache_dir)
    assert spy.under(*shard_dirs, tmp_path / "img") == []
    assert cache.count("text") == len(TEXTS)
    assert torch.equal(cache.get_text(TEXTS[4]), expected[TEXTS[4]])
    assert len(set(spy.under(*shard_dirs))) == 1  # a lookup maps the one shard that holds the row

    # A build over the complete cache (the startup of a training run that collected the same inputs) reads no
    # shard and, with the manifest's hashes, no image file; it encodes nothing and leaves the index as it is.
    spy.paths.clear()
    encoder_spy = Spy(encoder)
    index_mtime = (cache_dir / INDEX_NAME).stat().st_mtime_ns
    again = build(cache_dir, encoder_spy, texts=TEXTS, image_paths=images, image_sha256=sha256, shard_size=3)
    assert spy.under(*shard_dirs, tmp_path / "img") == [] and encoder_spy.calls == 0
    assert again.build_summary["shards_checked"] == 0
    assert (cache_dir / INDEX_NAME).stat().st_mtime_ns == index_mtime
    # --verify reads every shard again.
    verified = build(cache_dir, encoder, texts=TEXTS, image_paths=images, image_sha256=sha256, verify=True)
    assert verified.build_summary["shards_checked"] == len(shards(cache_dir, "text")) + len(shards(cache_dir, "image"))
    assert set(spy.under(*shard_dirs)) == {os.fspath(p) for d in ("text", "image") for p in shards(cache_dir, d)}


def test_damage_after_verification_is_found_by_verify(tmp_path, encoder):
    """A shard damaged in place with its size and time unchanged (bit rot) is trusted on open, by design (nothing
    is re-read at start); an explicit verify finds it and the build sets it aside."""
    cache_dir = tmp_path / "cache"
    build(cache_dir, encoder, texts=TEXTS[:4], batch_size=2, shard_size=2)
    damaged = shards(cache_dir)[1]
    stat = damaged.stat()
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CorruptShardError, match=f"{damaged}.*checksum"):
        EmbeddingCache(cache_dir).verify()
    spy = Spy(encoder)
    rebuilt = build(cache_dir, spy, texts=TEXTS[:4], batch_size=2, shard_size=2, verify=True)
    assert rebuilt.build_summary["set_aside"] == [str(damaged)] and sorted(spy.texts) == sorted(TEXTS[2:4])
    rebuilt.verify()


def test_corrupt_or_foreign_index_is_refused_with_its_name(tmp_path, encoder, caplog):
    from safetensors.numpy import save_file

    cache_dir = tmp_path / "cache"
    build(cache_dir, encoder, texts=TEXTS[:4], shard_size=2)
    index = cache_dir / INDEX_NAME
    good = index.read_bytes()
    expected = {t: EmbeddingCache(cache_dir).get_text(t) for t in TEXTS[:4]}

    index.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CorruptIndexError, match=f"{index}.*cannot be used"):
        EmbeddingCache(cache_dir)
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(index), metadata={"format": "something-else"})  # foreign
    with pytest.raises(CorruptIndexError, match=f"{index}.*not an embedding-cache index"):
        EmbeddingCache(cache_dir)
    other = tmp_path / "other"
    build(other, tiny_encoder(seed=1), texts=TEXTS[:4], shard_size=2)
    shutil.copy(other / INDEX_NAME, index)  # another cache's index
    with pytest.raises(CorruptIndexError, match=f"{index}.*belongs to a cache of encoder"):
        EmbeddingCache(cache_dir)

    # The next build sets it aside, re-checks the shards and writes a new index; nothing is encoded again.
    spy = Spy(encoder)
    with caplog.at_level(logging.ERROR, logger="processing.data.build_embedding_cache"):
        cache = build(cache_dir, spy, texts=TEXTS[:4], shard_size=2)
    assert str(index) in caplog.text and (cache_dir / (INDEX_NAME + ".corrupt")).is_file()
    assert spy.calls == 0 and cache.build_summary["shards_checked"] == len(shards(cache_dir)) > 0
    reopened = EmbeddingCache(cache_dir)
    assert reopened.index_fresh
    for text, value in expected.items():
        assert torch.equal(reopened.get_text(text), value)
    index.write_bytes(b"garbage")  # --verify also sets a damaged index aside
    assert build(cache_dir, spy, texts=TEXTS[:4], shard_size=2, verify=True).build_summary["set_aside"] == []
    assert EmbeddingCache(cache_dir).index_fresh and spy.calls == 0


def test_foreign_shard_is_refused_with_its_name(tmp_path, encoder):
    from safetensors.torch import save_file

    cache_dir = tmp_path / "cache"
    build(cache_dir, encoder, texts=TEXTS[:2])
    foreign = cache_dir / "text" / "shard-r000-00007.safetensors"
    save_file({"embeddings": torch.zeros(2, 32, dtype=torch.float16)}, str(foreign), metadata={"keys": "[]"})
    with pytest.raises(CorruptShardError, match=f"{foreign}.*expected format"):
        EmbeddingCache(cache_dir)
    wrong_width = cache_dir / "text" / "shard-r000-00008.safetensors"
    foreign.unlink()
    save_file({"embeddings": torch.zeros(1, 16, dtype=torch.float16)}, str(wrong_width),
              metadata={"format": "mmgl-embedding-shard/1", "keys": json.dumps(["a" * 64]), "sha256": ""})
    with pytest.raises(CorruptShardError, match=rf"{wrong_width}.*\(n, 32\)"):
        EmbeddingCache(cache_dir)


def test_shard_of_another_encoder_is_refused_and_never_recorded_verified(tmp_path, encoder):
    """A shard copied from a cache of another encoder (same config, keys and width: only the weights differ) is
    refused at open, set aside by a build (also by --verify) and its keys encoded again by this cache's encoder."""
    from processing.embedding_cache import ForeignShardError

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    build(ours, encoder, texts=TEXTS[:2], shard_size=2)
    build(theirs, tiny_encoder(seed=1), texts=TEXTS[2:4], shard_size=2)
    expected = {text: EmbeddingCache(ours).get_text(text) for text in TEXTS[:2]}
    copied = ours / "text" / "shard-r000-00050.safetensors"
    shutil.copy2(shards(theirs)[0], copied)
    with pytest.raises(ForeignShardError, match=rf"{copied} was written by encoder .*weights_sha256: shard "):
        EmbeddingCache(ours)
    index_before = (ours / INDEX_NAME).read_bytes()

    spy = Spy(encoder)
    cache = build(ours, spy, texts=TEXTS[:4], shard_size=2, verify=True)
    assert cache.build_summary["set_aside"] == [str(copied)] and copied.with_name(copied.name + ".corrupt").exists()
    assert spy.texts == TEXTS[2:4]  # encoded again, by this encoder
    for text in TEXTS[2:4]:
        assert torch.allclose(cache.get_text(text).float(), encoder.embed_texts([text])[0].float(), atol=1e-3)
    for text, value in expected.items():
        assert torch.equal(cache.get_text(text), value)
    from safetensors import safe_open

    with safe_open(str(ours / INDEX_NAME), framework="np") as f:
        recorded = [record[1] for record in json.loads(f.metadata()["shards"])]
    assert copied.name not in recorded and len(recorded) == 2 and (ours / INDEX_NAME).read_bytes() != index_before

    # A recorded shard overwritten by a foreign one of the same size is read from its header again: refused.
    victim = shards(ours)[0]
    rewrite(victim, shards(theirs)[0].read_bytes())
    with pytest.raises(ForeignShardError, match=str(victim)):
        EmbeddingCache(ours)


def test_a_killed_build_leaves_shards_the_next_open_reads_from_their_headers(tmp_path, encoder):
    """Shards written after the index (a build killed before updating it) are found from their headers and
    checksum-verified on first use; the next build records them."""
    cache_dir = tmp_path / "cache"
    build(cache_dir, encoder, texts=TEXTS[:4], shard_size=2)
    with pytest.raises(RuntimeError, match="simulated kill"):
        build(cache_dir, Spy(encoder, die_on_call=3), texts=TEXTS, batch_size=2, shard_size=2)
    cache = EmbeddingCache(cache_dir)
    assert not cache.index_fresh and cache.count("text") == 8  # 4 indexed + 2 shards of 2 written before the kill
    assert torch.equal(cache.get_text(TEXTS[5]), reference_rows(cache_dir)[("text", text_key(TEXTS[5]))])
    spy = Spy(encoder)
    done = build(cache_dir, spy, texts=TEXTS, batch_size=2, shard_size=2)
    assert spy.texts == TEXTS[8:] and done.build_summary["shards_checked"] == 2
    assert EmbeddingCache(cache_dir).index_fresh


def test_lookups_equal_the_shards_for_every_realwiki_input(tmp_path, encoder, realwiki_dir):
    """Every neighbour text and image the processor asks for on the real pages: the index finds each one, and its
    vector equals the shard's row as the previous reader loaded it, and the encoder's own output."""
    from processing.data.page_table import open_page_table
    from processing.data.build_embedding_cache import streamed_neighbor_inputs
    from processing.data.neighbor_inputs import collect_neighbor_inputs, iter_neighbor_inputs
    from processing.data.sample_index import PageGraphIndex

    pages = open_page_table(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz"))
    inputs = collect_neighbor_inputs(PageGraphIndex(pages), "all", "sa_e", 11, 5, realwiki_dir / "images")
    assert len(inputs.texts) > 100 and inputs.image_files
    # Built as `run_summarization` builds it: the texts streamed sample by sample, the images gathered meanwhile.
    counts = {}
    texts, images, digests = streamed_neighbor_inputs([iter_neighbor_inputs(
        PageGraphIndex(pages), "all", "sa_e", 11, 5, realwiki_dir / "images", counts)])
    assert not isinstance(texts, (list, tuple))  # a generator: the texts are not gathered first
    cache = build(tmp_path / "cache", encoder, texts=texts, image_paths=images, image_sha256=digests,
                  batch_size=16, shard_size=40)
    assert counts["missing_images"] == inputs.missing_images
    assert cache.build_summary["text"]["unique"] == len(inputs.texts)
    assert cache.build_summary["image"]["unique"] == len(set(map(image_key, inputs.image_files)))
    expected = reference_rows(tmp_path / "cache")
    reopened = EmbeddingCache(tmp_path / "cache")
    assert reopened.index_fresh and len(shards(tmp_path / "cache")) > 1
    for text in inputs.texts:
        assert torch.equal(reopened.get_text(text), expected[("text", text_key(text))]), text
    for path in inputs.image_files:
        assert torch.equal(reopened.get_image(path), expected[("image", image_key(path))]), path
    direct = encoder.embed_texts(inputs.texts[:50])
    got = torch.stack([reopened.get_text(t) for t in inputs.texts[:50]]).float()
    torch.testing.assert_close(got, direct, atol=2e-3, rtol=0)
    assert cache.count("text") == len(inputs.texts)


def test_texts_are_read_lazily_batch_by_batch(tmp_path, encoder):
    """A generator of texts is consumed as the encoder goes (never gathered first), repeated texts are encoded once,
    and the vectors equal a build from a list."""
    produced = []

    def texts():
        for text in TEXTS + TEXTS[:3]:
            produced.append(text)
            yield text

    spy = Spy(encoder)
    seen_at_call = []
    original = spy.embed_texts

    def embed_texts(batch, tokenize=None):
        seen_at_call.append(len(produced))
        return original(batch, tokenize)

    spy.embed_texts = embed_texts
    cache = build(tmp_path / "lazy", spy, texts=texts(), dtype="float32", batch_size=2, shard_size=4)
    assert seen_at_call[:3] == [2, 4, 6]  # each batch encoded as soon as its texts are read
    assert spy.texts == TEXTS and cache.build_summary["text"]["unique"] == len(TEXTS)
    listed = build(tmp_path / "listed", encoder, texts=TEXTS, dtype="float32", batch_size=2, shard_size=4)
    for text in TEXTS:
        assert torch.equal(cache.get_text(text), listed.get_text(text))


def test_dataloader_workers_share_the_mapped_stores(tmp_path, encoder):
    """Two DataLoader workers over the memory-mapped embedding cache and token store give the batches of
    num_workers=0."""
    from processing.data.bpe_tokenizer import train_bpe_tokenizer
    from processing.page_graph import PageGraph
    from tests.test_processor import known_row, make_processor

    rows = [known_row()]
    texts = rows[0]["section_text"] + [rows[0]["clean_page_description"]] * 3 + ["Context: Section: Summary:"] * 5
    processor = make_processor(train_bpe_tokenizer(texts, vocab_size=600), clip_image_processor("tiny", TINY), "all",
                               "sa_e")
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for i, name in enumerate(["Lead.png", "Hist1.png", "Early.png", "Modern.png"]):
        Image.new("RGB", (40, 30), (60 * i, 10, 200)).save(image_dir / name)
    graph = PageGraph.from_wikiweb2m(rows[0])
    samples = [(graph, s) for s in graph.sample_sections()]
    inputs = processor_neighbor_inputs(processor, samples, image_dir=image_dir)
    cache = build(tmp_path / "cache", encoder, texts=inputs.texts, image_paths=inputs.image_files)
    build_token_cache(processor, [graph], neighbor_input_ids=False, show_progress=False)
    processor.token_cache.save(tmp_path / "tokens.bin")
    processor.load_token_cache(tmp_path / "tokens.bin")
    cache = EmbeddingCache(tmp_path / "cache")

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples) * 3

        def __getitem__(self, i):
            graph, section = samples[i % len(samples)]
            return processor.build_example(graph, section, embedding_cache=cache, image_dir=image_dir)

    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(Examples(), batch_size=2, num_workers=workers,
                                             collate_fn=processor.data_collator())
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) > 1
    assert batches[0][0]["image_neighbor_mask"].sum() > 0  # the cache's image rows are in the batches
    for a, b in zip(batches[0], batches[2]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
