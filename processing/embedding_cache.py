"""Read access to an embedding cache: every neighbour text and image of a data set embedded once by a
frozen encoder ("precompute once, train many"). The builder is `processing.data.build_embedding_cache`.

Layout of a cache directory::

    <cache>/cache_config.json                   encoder identity, storage dtype, embed_dim (and
                                                text_embed_dim with a Hugging Face text encoder)
    <cache>/index.safetensors                   the key index (below); written by the builder
    <cache>/text/shard-r000-00000.safetensors   tensor "embeddings" (n, D); metadata "keys" (JSON
                                                list of n sha256 hex keys), "sha256" (of the
                                                tensor bytes) and "encoder" (the identity of the
                                                encoder that wrote it, `encoder_identity`); r000
                                                is the writing process's rank
    <cache>/image/shard-r001-00003.safetensors
    <cache>/<kind>/.shard-*.safetensors.*.tmp   a shard being written: never read; removed by the
                                                next build
    <cache>/<kind>/shard-*.safetensors.corrupt  a shard a build found damaged and set aside

Keys: a text's key is the sha256 of its UTF-8 bytes (`text_key`); an image's key is the sha256 of its
file bytes (`image_key`), the same hash the image fetcher names its files by and records in its manifest.

The key index holds, per kind, three arrays sorted by key: `<kind>_keys` (n, 32) uint8 (the raw
sha256), `<kind>_shards` and `<kind>_rows` (n,) int32 (where the vector is). Its metadata lists the
shards it was built from, each with the size and modification time it had when a build verified it
(header read, checksum checked), and the coverage records (`covers`: the page tables and designs the cache
holds every input of). Opening a cache memory-maps the three arrays (a lookup is one `np.searchsorted`: no
Python object per key, and DataLoader workers share the pages) and `stat`s the shard files, reading none:
a shard whose size and modification time match the index is trusted as verified. Vectors are read one row
at a time from memory-mapped shards, in their storage dtype (float16 by default).

Shards the index does not record (a build killed before it updated the index, a file changed since) are
read from their headers at open and checksum-verified on their first lookup in each process: a shard
damaged after its build is never read silently: reading it raises `CorruptShardError` naming the file, and
the next build sets it aside and encodes its keys again. A shard whose recorded encoder is not the cache's (copied
from a cache of another encoder, even with the same keys and width) is refused the same way (`ForeignShardError`),
and never recorded as verified. Damage that keeps a file's size and modification
time (bit rot) is found only by an explicit check (`verify`, the build's `--verify`). A damaged or foreign index raises
`CorruptIndexError` naming it; the next build sets it aside and writes a new one. A shard gets its final
name only through an atomic rename after it is fully written, so a build killed at any point resumes
where the last complete shard ended.

Readers use `get_text`, `get_image`, `get_many`, `count`, `in`, `covers` and `embed_dim`. The format itself (the
names, the key and index layout, the shard header) is read and written through this file's public helpers
(`read_cache_config`, `read_shard_header`, `load_shard`, `shard_files`, `open_index`, `tensor_sha256`, `text_key`,
`image_key`, `encoder_identity`), which the builder uses too; the index is written by the builder
(`processing.data.build_embedding_cache.save_index`) from `key_tables` and `shard_records`.

This file is Hub-loadable: it imports installed packages and same-folder files only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from safetensors import safe_open

from .errors import MMGLInputError
from .loading import read_json, safetensors_layout
from .mapped_pages import ReleaseEvery, release_arrays
from .sorted_digests import find_one, find_sorted, unique_order

if TYPE_CHECKING:  # torch is imported where a tensor is made, so that a command reading a cache's files reports bad
    import torch  # input before the ~10 s import of the model stack

logger = logging.getLogger(__name__)

KINDS = ("text", "image")
CONFIG_NAME = "cache_config.json"
INDEX_NAME = "index.safetensors"
CACHE_FORMAT = "mmgl-embedding-cache/1"
SHARD_FORMAT = "mmgl-embedding-shard/1"
INDEX_FORMAT = "mmgl-embedding-index/1"
_SHARD_RE = re.compile(r"^shard-r(\d+)-(\d+)\.safetensors$")
DTYPES = ("float16", "bfloat16", "float32")  # storage dtypes, by name
# How each storage dtype is named in a safetensors header, and the numpy type its rows are mapped as
# (numpy has no bfloat16: its rows are mapped as uint16 and viewed as bfloat16 by torch).
_SAFETENSORS_DTYPES = {"float16": ("F16", np.float16), "bfloat16": ("BF16", np.uint16), "float32": ("F32", np.float32)}
# What must agree for two builds (or a cache and a model) to share embeddings. The model name and
# pretrained tag are recorded too, but only for people: the config and weight hashes identify the
# encoder exactly (a moved checkpoint file is the same encoder; two random inits are not).
# A Hugging Face text neighbour encoder adds its own hashes, pooling, max length and width (all `None` when
# open_clip's text tower encodes the texts, as in caches written before these fields existed).
IMAGE_IDENTITY_FIELDS = ("config_sha256", "weights_sha256", "embed_dim")  # the open_clip encoder's
ENCODER_IDENTITY_FIELDS = (
    *IMAGE_IDENTITY_FIELDS,
    "text_config_sha256", "text_weights_sha256", "text_pooling", "text_max_length", "text_embed_dim",
)

_OPEN_SHARDS = 64  # memory maps kept open per process (each holds a file descriptor)
_IMAGE_KEY_MEMO = 4096  # image files whose key (path, size, mtime -> sha256) a process remembers


def encoder_description(identity: dict) -> str:
    """`'ViT-B-32' (pretrained='openai'), texts by its open_clip text tower` (or by `'<Hugging Face text
    encoder>'`): how messages name an encoder."""
    text = repr(identity["text_encoder"]) if identity.get("text_encoder") else "its open_clip text tower"
    return f"{identity.get('model_name')!r} (pretrained={identity.get('pretrained')!r}), texts by {text}"


class CorruptShardError(MMGLInputError, RuntimeError):
    """A shard file under its final name cannot be read or fails its checksum."""


class CorruptIndexError(CorruptShardError):
    """The key index cannot be read, is not an embedding-cache index, or belongs to another cache."""


class ForeignShardError(CorruptShardError):
    """A shard written by another encoder (or storage dtype) than the one its cache records."""


class EncoderMismatchError(MMGLInputError, ValueError):
    """A build asked to add embeddings from a different encoder (or dtype) to an existing cache."""


def encoder_identity(config: dict) -> str:
    """What must agree for embeddings to be shared (`ENCODER_IDENTITY_FIELDS` and the storage dtype) as one JSON
    string: every shard and the index record it, and a reader compares it with the cache's config."""
    return json.dumps({field: config.get(field) for field in (*ENCODER_IDENTITY_FIELDS, "dtype")}, sort_keys=True)


# ------------------------------------------------------------------------------------------ keys
def text_key(text: str) -> str:
    """Cache key of a text: the sha256 hex digest of its UTF-8 bytes."""
    if not isinstance(text, str):
        raise TypeError(f"text_key expects a str, got {type(text).__name__}")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_key(path_or_bytes: str | os.PathLike | bytes) -> str:
    """Cache key of an image: the sha256 hex digest of its file bytes (a path or the bytes)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return hashlib.sha256(path_or_bytes).hexdigest()
    digest = hashlib.sha256()
    with open(path_or_bytes, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _raw_keys(keys: Iterable[str]) -> np.ndarray:
    """Hex keys as 32-byte void scalars (they sort and binary-search bytewise). A key that is not 64 hex
    digits becomes 32 zero bytes, which no sha256 digest of real content is: a lookup of it finds nothing."""
    blob = bytearray()
    for key in keys:
        try:
            raw = bytes.fromhex(key) if isinstance(key, str) else b""
        except ValueError:
            raw = b""
        blob += raw if len(raw) == 32 else bytes(32)
    return np.frombuffer(bytes(blob), dtype="V32")


def _raw_key(key: str) -> np.ndarray:
    """One key as `_raw_keys` gives it (the lookup path: one `bytes.fromhex`)."""
    try:
        raw = bytes.fromhex(key)
    except (ValueError, TypeError):
        raw = b""
    return np.frombuffer(raw if len(raw) == 32 else bytes(32), dtype="V32")


# -------------------------------------------------------------------------------- file headers
def read_cache_config(cache_dir: str | os.PathLike) -> dict:
    """The `cache_config.json` of a cache (`InputFileError` naming it when missing, not JSON or not an object)."""
    return read_json(Path(cache_dir) / CONFIG_NAME, dict, "an embedding cache's config (a JSON object), as "
                     "python -m processing.data.build_embedding_cache writes it")


class _ShardRecord(NamedTuple):
    """A complete shard as the index records it."""

    kind: str
    name: str
    size: int
    mtime_ns: int
    rows: int
    offset: int  # byte offset of its (rows, D) "embeddings"


def read_shard_header(path: Path, kind: str = "", dtype: str | None = None, embed_dim: int | None = None,
                       identity: str | None = None):
    """Keys and record of a shard from its header alone; raise `CorruptShardError` naming `path` (`ForeignShardError`
    when `identity`, an `encoder_identity`, is not the one the shard records)."""
    try:
        stat = os.stat(path)
        metadata, tensors = safetensors_layout(path)
        tensor_dtype, shape, offset = tensors["embeddings"]
        keys = json.loads(metadata["keys"])
    except Exception as err:  # OSError, KeyError, JSON and layout errors alike: the file is not usable
        raise CorruptShardError(
            f"embedding shard {path} is damaged or incomplete ({type(err).__name__}: {err}); "
            "rerun the embedding-cache build to set it aside and recompute its keys"
        ) from err
    expected_dtype = _SAFETENSORS_DTYPES[dtype][0] if dtype else tensor_dtype
    if (metadata.get("format") != SHARD_FORMAT or len(shape) != 2 or shape[0] != len(keys)
            or tensor_dtype != expected_dtype or (embed_dim is not None and shape[1] != embed_dim)):
        raise CorruptShardError(
            f"embedding shard {path}: expected format {SHARD_FORMAT!r} with one (n, {embed_dim or 'D'}) "
            f"{expected_dtype} 'embeddings' row per key, found format {metadata.get('format')!r}, "
            f"{tensor_dtype} shape {list(shape)}, {len(keys)} keys"
        )
    if identity is not None and metadata.get("encoder") != identity:
        wanted = json.loads(identity)
        try:
            found = json.loads(metadata["encoder"])
            diffs = "; ".join(f"{field}: shard {found.get(field)!r}, cache {value!r}"
                              for field, value in wanted.items() if found.get(field) != value)
            written_by = f"encoder {encoder_description(found)} ({diffs})"
        except (KeyError, ValueError, TypeError, AttributeError):  # written before shards recorded their encoder
            written_by = "an encoder it does not record"
        raise ForeignShardError(
            f"embedding shard {path} was written by {written_by}, not by this cache's encoder "
            f"{encoder_description(wanted)}; refusing it: rerun the embedding-cache build to set it aside and "
            "encode its keys with this cache's encoder"
        )
    return keys, _ShardRecord(kind, path.name, stat.st_size, stat.st_mtime_ns, shape[0], offset)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a storage dtype name (`DTYPES`)."""
    import torch

    return getattr(torch, name)


def tensor_sha256(tensor: torch.Tensor) -> str:
    import torch

    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(raw).hexdigest()


def load_shard(path: Path) -> torch.Tensor:
    """The `embeddings` tensor of a shard, checked against the checksum stored with it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            embeddings = f.get_tensor("embeddings")
    except Exception as err:
        raise CorruptShardError(f"embedding shard {path} cannot be read ({type(err).__name__}: {err})") from err
    if tensor_sha256(embeddings) != metadata.get("sha256"):
        raise CorruptShardError(
            f"embedding shard {path}: checksum of 'embeddings' does not match the one stored in the "
            "file; the file is damaged. Rerun the embedding-cache build to set it aside and recompute it"
        )
    return embeddings


def shard_files(kind_dir: Path) -> list:
    """Complete shards (final names only) in (rank, sequence) order."""
    if not kind_dir.is_dir():
        return []
    found = []
    for path in kind_dir.iterdir():
        match = _SHARD_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return [path for _, _, path in sorted(found)]


# ------------------------------------------------------------------------------------ key index
class _KeyTable:
    """Where the vectors of one kind are: key `keys[i]` (sorted) is row `rows[i]` of shard
    `shards[i]`. No Python object per key; the arrays may be memory-mapped."""

    def __init__(self, keys: np.ndarray, shards: np.ndarray, rows: np.ndarray):
        self.keys, self.shards, self.rows = keys, shards, rows

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def merge(cls, base: _KeyTable | None, parts: list) -> _KeyTable:
        """`base`'s entries plus each part `(shard_id, raw keys)`, sorted; a key met twice keeps its
        first place (`base`'s, then the earlier shard's), so extending a cache never moves a row."""
        keys = [np.asarray(base.keys)] if base is not None else []
        shards = [np.asarray(base.shards)] if base is not None else []
        rows = [np.asarray(base.rows)] if base is not None else []
        for shard_id, raw in parts:
            keys.append(raw)
            shards.append(np.full(len(raw), shard_id, dtype=np.int32))
            rows.append(np.arange(len(raw), dtype=np.int32))
        if not keys:
            return cls(np.zeros(0, dtype="V32"), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32))
        keys, shards, rows = np.concatenate(keys), np.concatenate(shards), np.concatenate(rows)
        order = unique_order(keys, keep="first")
        return cls(keys[order], shards[order], rows[order])

    def position(self, raw: np.ndarray) -> int:
        """Position of one raw key (a 1-element array), -1 where absent."""
        return find_one(self.keys, raw[0])

    def find(self, raw: np.ndarray) -> np.ndarray:
        """Position of each raw key, -1 where absent (a binary search: ~log2(n) pages of a mapped file)."""
        return find_sorted(self.keys, raw)


def _map(path: Path, dtype, offset: int, shape: tuple) -> np.ndarray:
    """A read-only memory map of `shape` at `offset` (an empty array for no elements), as a plain array
    view: indexing an `np.memmap` costs several times more per lookup."""
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape))


def open_index(path: Path, config: dict) -> tuple[list, dict, list]:
    """Shard records, memory-mapped key tables and coverage records of an index file; raise
    `CorruptIndexError` naming it when it is damaged, foreign or of another encoder."""
    try:
        metadata, tensors = safetensors_layout(path)
        if metadata.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, expected {INDEX_FORMAT!r}: not an embedding-cache index")
        identity = json.loads(metadata["identity"])
        wanted = {field: config.get(field) for field in (*ENCODER_IDENTITY_FIELDS, "dtype")}
        if identity != wanted:
            raise ValueError(f"it belongs to a cache of encoder {identity}, this cache's config says {wanted}")
        records = [_ShardRecord(*record) for record in json.loads(metadata["shards"])]
        covers = list(json.loads(metadata.get("covers", "[]")))
        tables = {}
        for kind in KINDS:
            specs = [tensors[f"{kind}_{part}"] for part in ("keys", "shards", "rows")]
            (key_dtype, key_shape, key_offset), (shard_dtype, shard_shape, shard_offset), (row_dtype, row_shape, row_offset) = specs
            n = key_shape[0]
            if (key_dtype, key_shape, shard_dtype, shard_shape, row_dtype, row_shape) != (
                    "U8", (n, 32), "I32", (n,), "I32", (n,)):
                raise ValueError(f"the {kind!r} arrays have inconsistent shapes or types")
            tables[kind] = _KeyTable(_map(path, "V32", key_offset, (n,)), _map(path, "<i4", shard_offset, (n,)),
                                     _map(path, "<i4", row_offset, (n,)))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CorruptIndexError(
            f"embedding-cache index {path} cannot be used ({type(err).__name__}: {err}); rerun the embedding-cache "
            "build to set it aside and rebuild it from the shards"
        ) from err
    return records, tables, covers


def _list_shards(cache_dir: Path) -> list:
    """`(kind, path, size, mtime_ns)` of every complete shard, text first: one `stat` each, no read."""
    found = []
    for kind in KINDS:
        for path in shard_files(cache_dir / kind):
            stat = path.stat()
            found.append((kind, path, stat.st_size, stat.st_mtime_ns))
    return found


# ---------------------------------------------------------------------------------------- reader
class EmbeddingCache:
    """Read access to a built embedding cache (see the module docstring for the layout).

    Opening reads `cache_config.json` and the index's header, memory-maps the index, and `stat`s the
    shards; it reads no shard when the index is up to date. A lookup binary-searches the mapped keys and
    copies one row out of a memory-mapped shard.

    Args:
        cache_dir (`str` or `Path`): a directory written by `build_embedding_cache`.

    Raises:
        `FileNotFoundError` if `cache_dir` has no `cache_config.json`;
        `CorruptIndexError` (naming the file) if the index is damaged, foreign or of another encoder;
        `CorruptShardError` (naming the file) if a shard the index does not record is damaged.
    """

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)
        config_path = self.cache_dir / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{config_path} not found: {self.cache_dir} is not an embedding cache; "
                "build one with python -m processing.data.build_embedding_cache"
            )
        self.config = read_cache_config(self.cache_dir)
        self.build_summary: dict | None = None  # set by build_embedding_cache
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._files: OrderedDict[int, object] = OrderedDict()  # open shards, evicted with their maps
        # A lookup maps a folio of the key index and of a shard (tens of KiB); give them back every 512 lookups.
        self._release = ReleaseEvery(512)
        self._verified: set[int] = set()  # shards checksum-verified in this process (those the index lacks)
        self._image_keys: OrderedDict[tuple, str] = OrderedDict()
        self._open()

    def _open(self) -> None:
        on_disk = _list_shards(self.cache_dir)
        index_path = self.cache_dir / INDEX_NAME
        records, tables, covers = open_index(index_path, self.config) if index_path.is_file() else ([], None, [])
        stats = {(kind, path.name): (size, mtime) for kind, path, size, mtime in on_disk}
        changed = [r.name for r in records if stats.get((r.kind, r.name)) != (r.size, r.mtime_ns)]
        if changed:
            # A recorded shard was removed or changed since: neither the index's rows nor what it covered hold.
            logger.warning("%s: recorded shard(s) %s changed or removed since; indexing from the shard headers "
                           "(rerun the embedding-cache build to verify them and rewrite the index)",
                           index_path, ", ".join(changed[:5]))
            records, tables, covers = [], None, []
        recorded = {(r.kind, r.name) for r in records}
        # Shards the index does not record are read from their headers (O(their keys), at every open until a
        # build records them).
        self._records = list(records)
        parts = {kind: [] for kind in KINDS}
        for kind, path, _, _ in on_disk:
            if (kind, path.name) not in recorded:
                keys, record = read_shard_header(path, kind, self.config.get("dtype"), self.width(kind),
                                                  encoder_identity(self.config))
                parts[kind].append((len(self._records), _raw_keys(keys)))
                self._records.append(record)
        self._tables = {
            kind: tables[kind] if tables is not None and not parts[kind]
            else _KeyTable.merge(None if tables is None else tables[kind], parts[kind])
            for kind in KINDS
        }
        self._covers = covers
        self._trusted = len(records)  # shards 0.._trusted-1 were verified by the build that recorded them
        # Whether the index file describes exactly the shards on disk (the builder rewrites it when not).
        self.index_fresh = tables is not None and len(self._records) == len(records)

    # ------------------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """Width D of every embedding in the cache."""
        return int(self.config["embed_dim"])

    @property
    def text_embed_dim(self) -> int:
        """Width of the text embeddings: the Hugging Face text encoder's, else `embed_dim`."""
        return int(self.config.get("text_embed_dim") or self.config["embed_dim"])

    def width(self, kind: str) -> int:
        """Width of the embeddings of `kind` (`"text"` or `"image"`)."""
        return self.text_embed_dim if kind == "text" else self.embed_dim

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the embeddings (what `get` returns)."""
        return torch_dtype(self.config["dtype"])

    @property
    def shard_paths(self) -> list:
        """Paths of all complete shards, text first."""
        return [self.cache_dir / r.kind / r.name for r in self._records]

    @property
    def key_tables(self) -> dict:
        """Per kind, where each key's vector is: `keys` (sorted raw keys), `shards`, `rows` (what the index file
        stores; `processing.data.build_embedding_cache.save_index` writes it)."""
        return dict(self._tables)

    @property
    def shard_records(self) -> list:
        """The shards this cache was opened on, as the index records them (kind, name, size, mtime, ...)."""
        return list(self._records)

    @property
    def coverage(self) -> list[str]:
        """The coverage records of the index (see `covers`)."""
        return list(self._covers)

    def covers(self, record: str | None) -> bool:
        """Whether a build recorded that this cache holds every input described by `record` (e.g. a page
        table's fingerprint with the design that selects its neighbours); dropped when a shard it counted on
        was removed or changed."""
        return record is not None and record in self._covers

    # -------------------------------------------------------------------------------- lookups
    def get(self, kind: str, key: str) -> torch.Tensor | None:
        """Embedding (D,) of `key` in `kind` ("text" or "image"), or None when not cached."""
        table = self._table(kind)
        position = table.position(_raw_key(key))
        if position < 0:
            return None
        return self._row(int(table.shards[position]), int(table.rows[position]))

    def get_text(self, text: str) -> torch.Tensor | None:
        """Embedding of `text`, or None."""
        return self.get("text", text_key(text))

    def get_image(self, path_or_bytes, sha256: str | None = None) -> torch.Tensor | None:
        """Embedding of the image file (path or bytes), or None.

        `sha256` is the file's content hash when the caller already knows it (the image fetcher's
        manifest records it): then the file is not read at all. Otherwise a path's key is remembered per
        (path, size, mtime) for the last few thousand files (a bounded memo): a training loop meeting
        the same file again pays one `stat`, not a read and a hash.
        """
        if sha256 is not None:
            return self.get("image", sha256)
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            return self.get("image", image_key(path_or_bytes))
        stat = os.stat(path_or_bytes)
        memo = (os.fspath(path_or_bytes), stat.st_size, stat.st_mtime_ns)
        key = self._image_keys.get(memo)
        if key is None:
            key = self._image_keys[memo] = image_key(path_or_bytes)
            if len(self._image_keys) > _IMAGE_KEY_MEMO:
                self._image_keys.popitem(last=False)
        return self.get("image", key)

    def get_many(self, kind: str, keys: Iterable[str]):
        """Embeddings of many keys at once.

        Returns:
            `tuple(torch.Tensor, torch.BoolTensor)`: embeddings (n, D) in the storage dtype, zero
            rows where a key is missing, and a mask (n,) that is True where the key was found.
        """
        import torch

        table = self._table(kind)
        positions = table.find(_raw_keys(list(keys)))
        out = torch.zeros(len(positions), self.width(kind), dtype=self.dtype)
        for i, position in enumerate(positions.tolist()):
            if position >= 0:
                out[i] = self._row(int(table.shards[position]), int(table.rows[position]))
        return out, torch.from_numpy(positions >= 0)

    def count(self, kind: str) -> int:
        """Number of keys of `kind`."""
        return len(self._table(kind))

    def keys(self, kind: str) -> list[str]:
        """All keys of `kind`, as hex strings (O(keys): for reports and tests, not lookups)."""
        return [bytes(key).hex() for key in np.asarray(self._table(kind).keys)]

    def __contains__(self, item) -> bool:
        """`(kind, key) in cache`."""
        kind, key = item
        if self._release.due():
            self._release_maps()
        return self._table(kind).position(_raw_key(key)) >= 0

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}={len(table)}" for kind, table in self._tables.items())
        return (f"EmbeddingCache({str(self.cache_dir)!r}, {counts}, embed_dim={self.embed_dim}, "
                f"model={self.config.get('model_name')!r})")

    def __reduce__(self):
        # A DataLoader worker started by pickling (spawn) opens the same files instead of receiving a copy.
        return (type(self), (self.cache_dir,))

    def verify(self) -> None:
        """Load every shard and check its checksum; raise `CorruptShardError` on the first bad one."""
        for shard_id, record in enumerate(self._records):
            load_shard(self.cache_dir / record.kind / record.name)
            self._verified.add(shard_id)

    # ------------------------------------------------------------------------------ internals
    def _table(self, kind: str) -> _KeyTable:
        try:
            return self._tables[kind]
        except KeyError:
            raise ValueError(f"unknown embedding kind {kind!r}; expected one of {KINDS}") from None

    def _row(self, shard_id: int, row: int) -> torch.Tensor:
        """A copy of one row (callers must not be able to edit the cache through it)."""
        if not 0 <= shard_id < len(self._records) or not 0 <= row < self._records[shard_id].rows:
            raise CorruptIndexError(
                f"embedding-cache index {self.cache_dir / INDEX_NAME}: row {row} of shard {shard_id} does not exist "
                "(a damaged index); rerun the embedding-cache build to rebuild it"
            )
        import torch

        if self._release.due():
            self._release_maps()
        mapped = self._mapped(shard_id)
        # Read with `os.pread`, not through the map: a mapped read makes the kernel map the page cache's whole folio
        # around the row (tens of KiB and more), resident in this process until given back.
        size = mapped.shape[1] * mapped.dtype.itemsize
        data = os.pread(self._files[shard_id].fileno(), size, self._records[shard_id].offset + row * size)
        value = torch.from_numpy(np.frombuffer(data, dtype=mapped.dtype).copy())
        return value.view(torch.bfloat16) if self.config["dtype"] == "bfloat16" else value

    def _release_maps(self) -> None:
        tables = [array for table in self._tables.values() for array in (table.keys, table.shards, table.rows)]
        release_arrays([*self._maps.values(), *tables])

    def _mapped(self, shard_id: int) -> np.ndarray:
        """The (rows, D) memory map of a shard; one not verified by a build yet is checksummed first (once)."""
        mapped = self._maps.get(shard_id)
        if mapped is not None:
            self._maps.move_to_end(shard_id)
            self._files.move_to_end(shard_id)
            return mapped
        record = self._records[shard_id]
        path = self.cache_dir / record.kind / record.name
        if shard_id >= self._trusted and shard_id not in self._verified:
            load_shard(path)  # raises CorruptShardError before any row of a damaged shard is handed out
            self._verified.add(shard_id)
        mapped = self._maps[shard_id] = _map(path, _SAFETENSORS_DTYPES[self.config["dtype"]][1], record.offset,
                                             (record.rows, self.width(record.kind)))
        self._files[shard_id] = open(path, "rb")  # the same file as the map (`_row` reads rows from it)
        if len(self._maps) > _OPEN_SHARDS:
            self._maps.popitem(last=False)
            self._files.pop(next(iter(self._files))).close()
        return mapped

    def check_encoder(self, identity: dict, owner: str = "this model", texts: bool = True) -> None:
        """Refuse embeddings of another encoder: raise `EncoderMismatchError` naming both when `identity`
        (`MMGLNeighborEncoder.identity`) differs from the cache's in config, weights or width. `texts=False`: the
        reader uses only image embeddings (a design without text neighbours), so only the open_clip encoder's
        fields must agree, not those of a Hugging Face text encoder."""
        fields = ENCODER_IDENTITY_FIELDS if texts else IMAGE_IDENTITY_FIELDS
        diffs = [f"{field}: cache {self.config.get(field)!r}, {owner} {identity.get(field)!r}"
                 for field in fields if self.config.get(field) != identity.get(field)]
        if diffs:
            raise EncoderMismatchError(
                f"embedding cache {self.cache_dir} holds embeddings of encoder {encoder_description(self.config)}, "
                f"{owner} encodes with {encoder_description(identity)}: " + "; ".join(diffs)
            )


__all__ = [
    "CACHE_FORMAT",
    "CONFIG_NAME",
    "DTYPES",
    "ENCODER_IDENTITY_FIELDS",
    "IMAGE_IDENTITY_FIELDS",
    "INDEX_FORMAT",
    "INDEX_NAME",
    "KINDS",
    "SHARD_FORMAT",
    "CorruptIndexError",
    "CorruptShardError",
    "EmbeddingCache",
    "EncoderMismatchError",
    "ForeignShardError",
    "encoder_description",
    "encoder_identity",
    "image_key",
    "load_shard",
    "open_index",
    "read_cache_config",
    "read_shard_header",
    "shard_files",
    "tensor_sha256",
    "text_key",
    "torch_dtype",
]
