"""Build an embedding cache: embed every neighbour text and image of a data set once with the frozen
encoder (`MMGLNeighborEncoder`, the model's own wrapper), so training reads embeddings instead of running
the encoders at every step. Inputs are deduplicated by content hash: a caption shared by a thousand
pages, or an image shown on many pages, is encoded once. The cache layout and the reader are in
`processing.embedding_cache`.

What gets embedded is decided by the ONE neighbour collector (`processing.neighbor_selection`) under the
same design flags as `run_summarization.py` (context, encoding, budgets), and images are found by the
ONE resolver and preprocessed by the ONE preprocessing (`processing.image_source`): a cache built by this
command holds exactly what the processor asks for, and a cached embedding equals the in-model one.

    python -m processing.data.build_embedding_cache data/wikiweb2m cache/clip --image_dir images \
        --context all --neighbor_encoding sa_e --neighbor_encoder_name ViT-B-32 --neighbor_encoder_pretrained openai

Add `--text_neighbor_encoder NAME_OR_PATH` (and `--text_neighbor_pooling` / `--text_neighbor_max_length`) to
embed the texts with a Hugging Face text model instead of open_clip's text tower, as `run_summarization.py` does.

Run it under `accelerate launch` to split the work across processes (each takes every n-th unique input).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from processing.atomic_write import atomic_write_bytes
from processing.loading import read_json
from processing.data.cli import add_debug_argument, run_command
from processing.design_space import CONTEXTS, NEIGHBOR_ENCODINGS, check_text_neighbor_encoder
from processing.embedding_cache import (
    CACHE_FORMAT,
    CONFIG_NAME,
    ENCODER_IDENTITY_FIELDS,
    INDEX_FORMAT,
    INDEX_NAME,
    KINDS,
    SHARD_FORMAT,
    DTYPES,
    CorruptIndexError,
    CorruptShardError,
    EmbeddingCache,
    EncoderMismatchError,
    load_shard,
    open_index,
    read_shard_header,
    shard_files,
    tensor_sha256,
    encoder_description,
    encoder_identity,
    image_key,
    read_cache_config,
    text_key,
    torch_dtype,
)
from processing.image_source import (
    ImageDecodeError,
    ImageFolder,
    check_image_coverage,
    clip_image_processor,
    load_rgb_image,
    pixel_values,
)
from processing.data.neighbor_inputs import iter_neighbor_inputs

if TYPE_CHECKING:  # the model stack (torch, transformers, open_clip: ~10-20 s to import) is imported where it is used,
    import torch  # so that bad input is reported before it

    from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder

logger = logging.getLogger(__name__)


class _ShardWriter:
    """Buffers (key, embedding) rows of one kind and writes them as shards of ~`shard_size` rows, each recording
    `identity` (`encoder_identity` of the cache's config: the encoder that wrote it)."""

    def __init__(self, kind_dir: Path, rank: int, dtype: torch.dtype, shard_size: int, identity: str):
        self.kind_dir = kind_dir
        self.rank = rank
        self.dtype = dtype
        self.shard_size = shard_size
        self.identity = identity
        self.keys: list = []
        self.rows: list = []
        self.written: list = []
        # Continue after every shard this rank ever wrote, set-aside corrupt ones included, so a
        # new shard never reuses a name.
        pattern = re.compile(rf"^shard-r{rank:03d}-(\d+)\.safetensors(\.corrupt)?$")
        seqs = [int(m.group(1)) for p in kind_dir.iterdir() if (m := pattern.match(p.name))]
        self.next_seq = max(seqs, default=-1) + 1

    def add(self, keys: list, embeddings: torch.Tensor) -> None:
        if keys:
            self.keys.extend(keys)
            self.rows.append(embeddings.to(self.dtype))
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        import torch
        from safetensors.torch import save as safetensors_save

        embeddings = torch.cat(self.rows).contiguous()
        path = self.kind_dir / f"shard-r{self.rank:03d}-{self.next_seq:05d}.safetensors"
        metadata = {"format": SHARD_FORMAT, "keys": json.dumps(self.keys), "sha256": tensor_sha256(embeddings),
                    "encoder": self.identity}
        atomic_write_bytes(path, safetensors_save({"embeddings": embeddings}, metadata=metadata))
        self.written.append(path)
        self.next_seq += 1
        self.keys, self.rows = [], []


def _recorded_shards(cache_dir: Path) -> dict:
    """`(kind, name) -> (size, mtime_ns)` of the shards the index records as verified; a damaged or foreign
    index is set aside (`*.corrupt`) and records nothing, so every shard is checked and the index rebuilt."""
    path = cache_dir / INDEX_NAME
    if not path.is_file():
        return {}
    config = read_cache_config(cache_dir)
    try:
        records, _, _ = open_index(path, config)
    except CorruptIndexError as err:
        logger.error("%s; setting it aside as %s.corrupt", err, path.name)
        os.replace(path, path.with_name(path.name + ".corrupt"))
        return {}
    return {(r.kind, r.name): (r.size, r.mtime_ns) for r in records}


def _set_aside_damaged_files(cache_dir: Path, verify: bool = False) -> tuple[list, int]:
    """Remove temp files of killed builds and rename damaged shards to `*.corrupt`.

    A build must not extend a cache it cannot trust: every shard the index does not record with its current
    size and modification time (or, with `verify`, every shard) is read in full and checked against its
    checksum. Shards an earlier build verified are not read again. Returns the paths set aside and the number
    of shards checked.
    """
    recorded = _recorded_shards(cache_dir)  # sets a damaged index aside, also under `verify`
    if verify:
        recorded = {}
    identity = encoder_identity(read_cache_config(cache_dir))
    damaged, checked = [], 0
    for kind in KINDS:
        kind_dir = cache_dir / kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        for tmp in kind_dir.glob(".*.tmp"):
            logger.info("removing %s left by an interrupted build", tmp)
            tmp.unlink(missing_ok=True)
        for path in shard_files(kind_dir):
            stat = path.stat()
            if recorded.get((kind, path.name)) == (stat.st_size, stat.st_mtime_ns):
                continue
            checked += 1
            try:
                read_shard_header(path, identity=identity)
                load_shard(path)
            except CorruptShardError as err:
                logger.error("%s; setting it aside as %s.corrupt and recomputing its keys", err, path.name)
                os.replace(path, path.with_name(path.name + ".corrupt"))
                damaged.append(path)
    return damaged, checked


def _dtype_name(dtype) -> str:
    for name in DTYPES:
        if dtype == name or (not isinstance(dtype, str) and dtype == torch_dtype(name)):
            return name
    raise ValueError(f"unsupported storage dtype {dtype!r}; expected one of {list(DTYPES)}")


def _check_config(cache_dir: Path, identity: dict, dtype_name: str, write: bool) -> None:
    """Refuse to mix encoders or dtypes in one cache; write the config on a first build."""
    path = cache_dir / CONFIG_NAME
    wanted = {"format": CACHE_FORMAT, **identity, "dtype": dtype_name}
    if not path.exists():
        if not write:
            raise FileNotFoundError(f"{path} not found; the main process writes it before the others read it")
        atomic_write_bytes(path, (json.dumps(wanted, indent=2) + "\n").encode("utf-8"))
        return
    existing = read_cache_config(cache_dir)
    diffs = [f"{field}: cache has {existing.get(field)!r}, this build has {wanted[field]!r}"
             for field in (*ENCODER_IDENTITY_FIELDS, "dtype") if existing.get(field) != wanted[field]]
    if diffs:
        raise EncoderMismatchError(
            f"{path}: this cache holds embeddings of encoder {encoder_description(existing)}; refusing to add "
            f"embeddings of {encoder_description(wanted)} to it: "
            + "; ".join(diffs) + ". Use another cache directory for another encoder."
        )


def _process_state():
    """This process's `accelerate.PartialState`, refusing a launch it failed to recognise."""
    import torch
    from accelerate import PartialState

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Without a GPU, PartialState() ignores torchrun / `accelerate launch` and reports a single
    # process; every process would then encode everything and fight over the same shard names.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or (
        world > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=use_cpu)
    if state.num_processes != world:
        raise RuntimeError(
            f"WORLD_SIZE={world} but accelerate's PartialState sees {state.num_processes} process(es) "
            f"({state.distributed_type}); was a PartialState created earlier with other settings? "
            "Pass state=... explicitly."
        )
    return state


def _keyed(items: Iterable, key_fn: Callable, what: str, unreadable: list) -> Iterator[tuple]:
    """`(key, item)` for each item, lazily; items whose key cannot be computed are skipped with a warning and
    counted in `unreadable[0]`."""
    for item in items:
        try:
            key = key_fn(item)
        except OSError as err:
            logger.warning("cannot read %s %s (%s); skipped", what, item, err)
            unreadable[0] += 1
            continue
        yield key, item


def _image_batch(encoder: MMGLNeighborEncoder, image_processor, batch: list):
    """Decode and preprocess a batch of (key, path) exactly as the processor does (`image_source`); skip
    unreadable files with a warning."""
    keys, images = [], []
    for key, path in batch:
        try:
            data = Path(path).read_bytes()
            # Embed exactly the bytes the key names, even if the file changed since it was hashed.
            if image_key(data) != key:
                logger.warning("%s changed after it was hashed (or its manifest record is stale); skipped", path)
                continue
            images.append(load_rgb_image(data))
        except (OSError, ImageDecodeError) as err:
            logger.warning("cannot decode image %s (%s); skipped", path, err)
            continue
        keys.append(key)
    if not keys:
        return keys, None
    return keys, encoder.encode_image(pixel_values(image_processor, images)).float().cpu()


def _text_batch_encoder(encoder: MMGLNeighborEncoder, tokenizer=None) -> Callable:
    """Embeds a batch of (key, text) exactly as the model does: open_clip's tokenizer and text tower, or the
    Hugging Face text encoder on `text_neighbor_ids` (its tokenizer loaded at the first batch unless given)."""
    from processing.text_neighbor_tokens import clip_text_ids, load_text_neighbor_tokenizer, text_neighbor_ids

    if encoder.text_model is None:
        def tokenize(texts):  # as the processor does: the same ids as open_clip's call, less CPU
            return clip_text_ids(encoder.tokenizer, texts)

        return lambda batch: ([key for key, _ in batch], encoder.embed_texts([text for _, text in batch], tokenize))
    loaded = [tokenizer]

    def encode(batch):
        if loaded[0] is None:
            loaded[0] = load_text_neighbor_tokenizer(encoder.text_model.name)
        if loaded[0].pad_token_id != encoder.text_model.pad_token_id:  # padding would be read as text
            raise ValueError(
                f"the tokenizer of text neighbour encoder {encoder.text_model.name!r} pads with id "
                f"{loaded[0].pad_token_id}, its model masks id {encoder.text_model.pad_token_id} (config pad_token_id)"
            )
        ids = text_neighbor_ids(loaded[0], [text for _, text in batch], encoder.text_model.max_length)
        return [key for key, _ in batch], encoder.encode_text(ids).float().cpu()

    return encode


class _DigestSet:
    """The keys a build has met, as 16-byte BLAKE2b digests in a sorted numpy array plus a small set of recent ones
    (merged in when it reaches an eighth of the array, or 65,536): ~16 bytes per key instead of the ~120 of a Python
    set of `bytes`, for the millions of texts of a full data set."""

    def __init__(self, min_pending: int = 1 << 16):
        self._sorted = np.zeros(0, dtype="V16")
        self._pending: set[bytes] = set()
        self._min_pending = min_pending

    @staticmethod
    def _digest(key: bytes) -> bytes:
        return hashlib.blake2b(key, digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._pending)

    def __contains__(self, key: bytes) -> bool:
        digest = self._digest(key)
        if digest in self._pending:
            return True
        i = int(np.searchsorted(self._sorted, np.frombuffer(digest, dtype="V16")[0]))
        return i < len(self._sorted) and self._sorted[i].tobytes() == digest

    def add(self, key: bytes) -> None:
        if key in self:
            return
        self._pending.add(self._digest(key))
        if len(self._pending) >= max(self._min_pending, len(self._sorted) // 8):
            fresh = np.frombuffer(b"".join(self._pending), dtype="V16")
            self._sorted = np.sort(np.concatenate([self._sorted, fresh]))
            self._pending = set()


def _embed_kind(cache: EmbeddingCache, kind: str, items: Iterable[tuple], encode_batch: Callable, *, rank: int,
                world: int, batch_size: int, shard_size: int, dtype: torch.dtype, progress: bool) -> dict:
    """Encode this process's share of `items` (`(key, source)`, read lazily: a data set's texts are never all
    in memory, only the keys already met, as 16-byte digests: `_DigestSet`) that the cache lacks."""
    from tqdm.auto import tqdm

    writer = _ShardWriter(cache.cache_dir / kind, rank, dtype, shard_size, encoder_identity(cache.config))
    seen = _DigestSet()
    unique = assigned = cached = encoded = failed = 0
    batch: list = []
    desc = f"embed {kind}s" + (f" [rank {rank}/{world}]" if world > 1 else "")

    def encode(bar) -> None:
        nonlocal encoded, failed
        keys, embeddings = encode_batch(batch)
        writer.add(keys, embeddings)
        encoded, failed = encoded + len(keys), failed + len(batch) - len(keys)
        bar.update(len(batch))
        batch.clear()

    with tqdm(desc=desc, unit=kind, disable=not progress) as bar:
        for key, source in items:
            try:  # sha256 hex keys (a manifest may hold other strings)
                digest = bytes.fromhex(key)
            except ValueError:
                digest = key.encode("utf-8")
            if digest in seen:
                continue
            seen.add(digest)
            unique += 1
            # Split the unique keys in first-seen order, not the to-do list: every process derives the same
            # split even if they saw the shards at slightly different moments.
            if (unique - 1) % world != rank:
                continue
            assigned += 1
            if (kind, key) in cache:
                cached += 1
                continue
            batch.append((key, source))
            if len(batch) == batch_size:
                encode(bar)
        if batch:
            encode(bar)
    writer.flush()
    return {"unique": unique, "assigned": assigned, "cached": cached, "encoded": encoded, "failed": failed,
            "shards_written": len(writer.written)}


def save_index(cache: EmbeddingCache, covers: Iterable[str] = ()) -> EmbeddingCache:
    """Write the index of the shards `cache` was opened on (`EmbeddingCache.key_tables`, `shard_records`), with its
    coverage records plus `covers`, atomically (the build calls this once every shard it lists is verified), and
    return the cache reopened on it."""
    from safetensors.numpy import save

    tensors = {}
    for kind, table in cache.key_tables.items():
        tensors[f"{kind}_keys"] = np.ascontiguousarray(table.keys).view(np.uint8).reshape(len(table), 32)
        tensors[f"{kind}_shards"] = np.ascontiguousarray(table.shards, dtype=np.int32)
        tensors[f"{kind}_rows"] = np.ascontiguousarray(table.rows, dtype=np.int32)
    metadata = {
        "format": INDEX_FORMAT,
        "identity": encoder_identity(cache.config),
        "shards": json.dumps([list(record) for record in cache.shard_records]),
        "covers": json.dumps(list(dict.fromkeys([*cache.coverage, *covers]))),
    }
    atomic_write_bytes(cache.cache_dir / INDEX_NAME, save(tensors, metadata=metadata))
    return EmbeddingCache(cache.cache_dir)


def streamed_neighbor_inputs(per_sample: Iterable[Iterable[tuple[list, list]]]):
    """`(texts, image_paths, image_sha256)` for `build_embedding_cache` from `iter_neighbor_inputs` streams
    (one per split), in one pass: `texts` is a generator (the data set's texts are never all in memory) that
    fills the image paths (unique, first-seen order) and their known hashes as it runs; `build_embedding_cache`
    reads every text before the first image."""
    images: dict[str, None] = {}
    digests: dict[str, str] = {}

    def texts():
        for inputs in per_sample:
            for sample_texts, files in inputs:
                yield from sample_texts
                for path, sha in files:
                    images[path] = None
                    if sha is not None:
                        digests[path] = sha

    def image_paths():  # iterated only once `texts` is exhausted and `images` complete
        yield from images

    return texts(), image_paths(), digests


def build_embedding_cache(
    cache_dir,
    texts: Iterable[str] = (),
    image_paths: Iterable = (),
    encoder: MMGLNeighborEncoder | None = None,
    *,
    model_name: str = "ViT-B-32",
    pretrained: str | None = None,
    model_config: dict | None = None,
    text_encoder: str | None = None,
    text_pooling: str = "mean",
    text_max_length: int = 512,
    text_tokenizer=None,
    image_sha256: dict | None = None,
    batch_size: int = 64,
    device=None,
    shard_size: int = 4096,
    dtype="float16",
    state=None,
    progress: bool = True,
    covers: Iterable[str] = (),
    verify: bool = False,
) -> EmbeddingCache:
    """Encode every text and image not yet in the cache at `cache_dir`; return the cache.

    Resumable and idempotent: keys already in complete shards are skipped, so a rerun after a
    kill encodes only the rest. Under `accelerate launch` / `torchrun` each process takes the
    unique keys with `i % num_processes == process_index` and writes shards named with its rank.

    Args:
        cache_dir (`str` or `Path`): the cache directory (created if missing).
        texts (`Iterable[str]`): neighbour texts, read lazily (a generator keeps a data set's texts out of
            memory); duplicates are encoded once.
        image_paths (`Iterable[str or Path]`): image files, read after every text; identical files are encoded
            once.
            Unreadable or undecodable files are skipped with a warning and counted as failed.
        encoder (`MMGLNeighborEncoder`, *optional*): the frozen encoder (the model's, or one built with
            `MMGLNeighborEncoder.from_settings`); by default built from the three settings below.
        model_name (`str`, *optional*, defaults to `"ViT-B-32"`): the open_clip model.
        pretrained (`str`, *optional*): open_clip pretrained tag or checkpoint path; `None` is the seeded
            random initialisation.
        model_config (`dict`, *optional*): custom open_clip config (e.g. a tiny test model).
        text_encoder, text_pooling, text_max_length (*optional*): a Hugging Face text model that encodes the texts
            instead of open_clip (`MMGLConfig.text_neighbor_*`), when `encoder` is not given.
        text_tokenizer (*optional*): the tokenizer of the encoder's Hugging Face text model (default: loaded from
            its name, as the processor does).
        image_sha256 (`dict[str, str]`, *optional*): content hash of image files already known (the image
            fetcher's manifest records them), so those files are not read to be hashed.
        batch_size (`int`, *optional*, defaults to 64): inputs per encoder call.
        device (`str` or `torch.device`, *optional*): defaults to this process's accelerate device.
        shard_size (`int`, *optional*, defaults to 4096): rows per shard; a kill loses at most the
            rows encoded since the last shard.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"float16"`): storage dtype.
        state (*optional*): an `accelerate.PartialState` (default: a new one).
        progress (`bool`, *optional*, defaults to True): show tqdm progress bars.
        covers (`Iterable[str]`, *optional*): coverage records to write into the index once every input is
            in (`coverage_key`: the page table and design these inputs were collected from), so that a later
            start finds the cache complete without collecting them again (`open_covered_cache`).
        verify (`bool`, *optional*, defaults to `False`): check the checksum of every shard, also those an
            earlier build verified (by default only shards the index does not record with their current size
            and modification time are read).

    Returns:
        `EmbeddingCache` over all shards of all processes, with `build_summary` set to this
        process's counts per kind (unique, assigned, cached, encoded, failed, shards_written;
        `unreadable` image paths; `set_aside` damaged shards; `shards_checked` at start).

    Raises:
        `EncoderMismatchError` if the cache was built with another encoder or storage dtype.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    storage = _dtype_name(dtype)
    state = state if state is not None else _process_state()
    cache_dir = Path(cache_dir)
    if encoder is None:
        from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder

        encoder = MMGLNeighborEncoder.from_settings(
            model_name, pretrained, model_config, text_encoder=text_encoder, text_pooling=text_pooling,
            text_max_length=text_max_length,
        )
    encoder.to(device if device is not None else state.device)  # in place (a wrapper around it stays in use)
    identity = encoder.identity(getattr(encoder, "pretrained", pretrained))
    image_processor = clip_image_processor(encoder.name, encoder.model_config)

    set_aside, checked = [], 0
    if state.is_main_process:
        # One process checks the identity and tidies the directory before anyone reads it.
        cache_dir.mkdir(parents=True, exist_ok=True)
        _check_config(cache_dir, identity, storage, write=True)
        set_aside, checked = _set_aside_damaged_files(cache_dir, verify=verify)
    state.wait_for_everyone()
    if not state.is_main_process:
        _check_config(cache_dir, identity, storage, write=False)
    cache = EmbeddingCache(cache_dir)

    common = dict(rank=state.process_index, world=state.num_processes, batch_size=batch_size,
                  shard_size=shard_size, dtype=torch_dtype(storage), progress=progress)
    text_items = _keyed(texts, text_key, "text", [0])
    summary = {"text": _embed_kind(cache, "text", text_items, _text_batch_encoder(encoder, text_tokenizer), **common)}
    known = image_sha256 or {}
    unreadable = [0]
    image_items = _keyed(image_paths, lambda path: known.get(os.fspath(path)) or image_key(path), "image file",
                         unreadable)
    summary["image"] = _embed_kind(
        cache, "image", image_items, lambda batch: _image_batch(encoder, image_processor, batch), **common)
    summary["image"]["unreadable"] = unreadable[0]
    summary["set_aside"] = [str(p) for p in set_aside]
    summary["shards_checked"] = checked

    state.wait_for_everyone()
    covers = [record for record in covers if record]
    if state.is_main_process:
        # Every shard is now verified: those recorded before, those checked above, and those this build wrote
        # (their checksums were computed from the tensors written). One process records them in the index.
        cache = EmbeddingCache(cache_dir)
        if not cache.index_fresh or any(not cache.covers(record) for record in covers):
            cache = save_index(cache, covers)
    state.wait_for_everyone()
    if not state.is_main_process:
        cache = EmbeddingCache(cache_dir)  # the index the main process wrote: every process's shards
    cache.build_summary = summary
    return cache


def coverage_key(table_fingerprint: str | None, samples: str, context: str, neighbor_encoding: str,
                 max_text_neighbors: int, max_image_neighbors: int, image_dir=None) -> str | None:
    """What a set of collected neighbour inputs depends on, as one string: the page table (its fingerprint,
    `processing.data.token_store.table_fingerprint`), which samples of it (e.g. `"all"`), the design that selects
    the neighbours, and the image folder's state (its path, its modification time and that of its manifest:
    files added or fetched change which references resolve). `None` when the table has no fingerprint (then
    nothing is skipped). An image file replaced in place under the same name in a plain folder is not seen."""
    if table_fingerprint is None:
        return None
    folder = "none"
    if image_dir is not None:
        root = os.path.realpath(image_dir)
        manifest = os.path.join(root, "manifest.jsonl")
        stats = [os.stat(p) for p in (root, manifest) if os.path.exists(p)]
        folder = root + "@" + ",".join(f"{st.st_size}:{st.st_mtime_ns}" for st in stats)
    return "|".join([table_fingerprint, f"samples={samples}", f"context={context}", f"encoding={neighbor_encoding}",
                     f"text={max_text_neighbors}", f"image={max_image_neighbors}", f"images={folder}"])


def open_covered_cache(cache_dir, records: Iterable[str | None], encoder: MMGLNeighborEncoder,
                       dtype="float16") -> EmbeddingCache | None:
    """The cache at `cache_dir` when its index records one of `records` (`coverage_key`), else `None`:
    the startup of a training run skips collecting the neighbour inputs (a page graph per sample) when the
    cache already holds them. Raises `EncoderMismatchError`, as a build would, when the cache holds another
    encoder's embeddings."""
    cache_dir = Path(cache_dir)
    records = [record for record in records if record]
    if not records or not (cache_dir / CONFIG_NAME).is_file() or not (cache_dir / INDEX_NAME).is_file():
        return None
    _check_config(cache_dir, encoder.identity(getattr(encoder, "pretrained", None)), _dtype_name(dtype), write=False)
    cache = EmbeddingCache(cache_dir)
    return cache if any(cache.covers(record) for record in records) else None


# -------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    """`python -m processing.data.build_embedding_cache DATA CACHE_DIR --image_dir DIR [design flags]`."""
    parser = argparse.ArgumentParser(
        prog="python -m processing.data.build_embedding_cache",
        description="Embed, once, every neighbour text and image that the processor will ask for under the given "
        "design (the same flags as run_summarization.py), over every summarization sample of every split.",
    )
    parser.add_argument("data", help="the Arrow data set written by `python -m processing.data.wikiweb2m` (a folder), "
                        "or WikiWeb2M TFRecord file(s) / glob")
    parser.add_argument("cache_dir", help="embedding cache folder (created, or extended when it exists)")
    parser.add_argument("--data_cache_dir", default=None,
                        help="with TFRecord DATA: keep their Arrow table in this folder (default: read into memory, "
                        "nothing written elsewhere)")
    parser.add_argument("--image_dir", default=None, help="the image folder: files named by URL basename, or the "
                        "image fetcher's folder (with manifest.jsonl)")
    parser.add_argument("--allow_missing_images", action="store_true",
                        help="the images are absent on purpose: a --image_dir that resolves none of the image references "
                        "is accepted (their slots are masked) instead of an error")
    parser.add_argument("--context", default="all", choices=CONTEXTS, help="context level, as run_summarization.py")
    parser.add_argument("--neighbor_encoding", default="sa_e", choices=NEIGHBOR_ENCODINGS,
                        help="neighbour encoding, as run_summarization.py (sa_te embeds images only)")
    parser.add_argument("--max_text_neighbors", type=int, default=11, help="text neighbour budget, as run_summarization.py")
    parser.add_argument("--max_image_neighbors", type=int, default=5, help="image neighbour budget, as run_summarization.py")
    parser.add_argument("--neighbor_encoder_name", default="ViT-B-32", help="open_clip model name")
    parser.add_argument("--neighbor_encoder_pretrained", default="openai",
                        help="open_clip pretrained tag or local checkpoint; 'none' for the seeded random init")
    parser.add_argument("--neighbor_encoder_config", default=None,
                        help="JSON file of a full open_clip model config (custom / tiny encoders)")
    parser.add_argument("--text_neighbor_encoder", default=None,
                        help="Hugging Face text model (hub id or folder) that encodes the texts instead of open_clip's "
                        "text tower, as run_summarization.py (ignored with a warning where no text neighbour is an embedding)")
    parser.add_argument("--text_neighbor_pooling", default=None,
                        help="with --text_neighbor_encoder: first token (cls), mean of real tokens, or the model's "
                        "pooler; default: a sentence-transformers model's own pooling, else mean")
    parser.add_argument("--text_neighbor_max_length", type=int, default=None,
                        help="with --text_neighbor_encoder: tokens read per text (longer texts are truncated); default: "
                        "a sentence-transformers model's max_seq_length, else 512")
    parser.add_argument("--batch_size", type=int, default=64, help="inputs per encoder call")
    parser.add_argument("--shard_size", type=int, default=4096, help="rows per shard (a kill loses at most one shard)")
    parser.add_argument("--dtype", default="float16", choices=DTYPES, help="storage dtype of the vectors")
    parser.add_argument("--device", default=None, help="torch device; default: this process's accelerate device")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--verify", action="store_true", help="check the checksum of every shard, also of those an "
                        "earlier build verified (by default only new or changed shards are read)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    for name, low in (("max_text_neighbors", 0), ("max_image_neighbors", 0), ("text_neighbor_max_length", 1),
                      ("batch_size", 1), ("shard_size", 1)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise ValueError(f"--{name} must be >= {low}, got {getattr(args, name)}")

    # Bad input first, before the model stack is imported: the image folder, the encoder config, a cache folder of
    # another kind, the data.
    image_folder = ImageFolder(args.image_dir)
    model_config = None
    if args.neighbor_encoder_config:
        model_config = read_json(args.neighbor_encoder_config, dict, "a full open_clip model config (a JSON object)")
    if os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        raise NotADirectoryError(f"{args.cache_dir}: not a folder; expected an embedding cache folder (new or built "
                                 "by this command)")
    if os.path.isfile(os.path.join(args.cache_dir, CONFIG_NAME)):
        read_cache_config(args.cache_dir)
    from processing.data.page_table import open_page_table

    pages = open_page_table(args.data, cache_dir=args.data_cache_dir)

    from modeling_mmgl.configuration_mmgl import TEXT_NEIGHBOR_POOLINGS
    from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
    from modeling_mmgl.text_neighbor_encoder import resolve_text_encoder_settings
    from processing.data.sample_index import PageGraphIndex
    from processing.data.token_store import table_fingerprint

    if args.text_neighbor_pooling not in (None, *TEXT_NEIGHBOR_POOLINGS):
        raise ValueError(f"--text_neighbor_pooling must be one of {TEXT_NEIGHBOR_POOLINGS}, got "
                         f"{args.text_neighbor_pooling!r}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_text_neighbor_encoder(args.neighbor_encoding, args.context, args.text_neighbor_encoder)
    except ValueError as err:  # as run_summarization.py: one flag for every design of a study
        # Nothing is encoded with it, but the cache records it, so designs that read text neighbours share the cache.
        logger.warning("--text_neighbor_encoder encodes nothing here: %s; the cache records it", err)
    pretrained = None if args.neighbor_encoder_pretrained in (None, "", "none") else args.neighbor_encoder_pretrained
    counts: dict = {}
    texts, images, digests = streamed_neighbor_inputs([iter_neighbor_inputs(
        PageGraphIndex(pages), args.context, args.neighbor_encoding, args.max_text_neighbors,
        args.max_image_neighbors, image_folder, counts,
    )])

    def checked_images():  # iterated once every text (and so every image reference) was collected
        check_image_coverage(counts["resolved_images"], counts["missing_images"], args.image_dir,
                             args.allow_missing_images)
        yield from images

    text_pooling, text_max_length, notes = resolve_text_encoder_settings(
        args.text_neighbor_encoder, args.text_neighbor_pooling, args.text_neighbor_max_length)
    for note in notes:
        logger.warning(note)
    encoder = MMGLNeighborEncoder.from_settings(
        args.neighbor_encoder_name, pretrained, model_config, text_encoder=args.text_neighbor_encoder,
        text_pooling=text_pooling, text_max_length=text_max_length,
    )
    cache = build_embedding_cache(
        args.cache_dir, texts=texts, image_paths=checked_images(), encoder=encoder,
        image_sha256=digests, batch_size=args.batch_size, device=args.device,
        shard_size=args.shard_size, dtype=args.dtype, progress=not args.no_progress, verify=args.verify,
        covers=[coverage_key(table_fingerprint(pages), "all", args.context, args.neighbor_encoding,
                             args.max_text_neighbors, args.max_image_neighbors, args.image_dir)],
    )
    if _process_state().is_main_process:  # one report, not one per process
        summary = {**cache.build_summary, "missing_image_files": counts["missing_images"],
                   "cache": {kind: cache.count(kind) for kind in KINDS}}
        print(json.dumps(summary, indent=2))
    return 0


__all__ = ["build_embedding_cache", "coverage_key", "main", "open_covered_cache", "save_index", "streamed_neighbor_inputs"]


if __name__ == "__main__":
    from processing.data.build_embedding_cache import main as _main  # the module's classes, not __main__'s copies

    sys.exit(run_command(_main))
