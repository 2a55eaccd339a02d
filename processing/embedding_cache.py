"""Read access to an embedding cache: every neighbour text and image of a data set embedded once by a
frozen encoder ("precompute once, train many"). The builder is `processing.data.build_embedding_cache`.

Layout of a cache directory::

    <cache>/cache_config.json                   encoder identity, storage dtype, embed_dim (and
                                                text_embed_dim with a Hugging Face text encoder)
    <cache>/text/shard-r000-00000.safetensors   tensor "embeddings" (n, D); metadata "keys" (JSON
                                                list of n sha256 hex keys) and "sha256" (of the
                                                tensor bytes); r000 is the writing process's rank
    <cache>/image/shard-r001-00003.safetensors
    <cache>/<kind>/.shard-*.safetensors.*.tmp   a shard being written: never read; removed by the
                                                next build
    <cache>/<kind>/shard-*.safetensors.corrupt  a shard a build found damaged and set aside

Keys: a text's key is the sha256 of its UTF-8 bytes (`text_key`); an image's key is the sha256 of its
file bytes (`image_key`), the same hash the image fetcher names its files by and records in its manifest.

A shard gets its final name only through an atomic rename after it is fully written, and the index is
rebuilt from the shards on open, so a build killed at any point resumes where the last complete shard
ended. A damaged shard under a final name is never read silently: reading it raises `CorruptShardError`
naming the file, and the next build sets it aside and encodes its keys again.

Nothing outside this file depends on how entries are stored: callers use `get_text`, `get_image`,
`get_many`, `keys`, ``in`` and `embed_dim`.

This file is Hub-loadable: it imports installed packages only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

logger = logging.getLogger(__name__)

KINDS = ("text", "image")
CONFIG_NAME = "cache_config.json"
CACHE_FORMAT = "mmgl-embedding-cache/1"
SHARD_FORMAT = "mmgl-embedding-shard/1"
_SHARD_RE = re.compile(r"^shard-r(\d+)-(\d+)\.safetensors$")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# What must agree for two builds (or a cache and a model) to share embeddings. The model name and
# pretrained tag are recorded too, but only for people: the config and weight hashes identify the
# encoder exactly (a moved checkpoint file is the same encoder; two random inits are not).
# A Hugging Face text neighbour encoder adds its own hashes, pooling, max length and width (all `None` when
# open_clip's text tower encodes the texts, as in caches written before these fields existed).
ENCODER_IDENTITY_FIELDS = (
    "config_sha256", "weights_sha256", "embed_dim",
    "text_config_sha256", "text_weights_sha256", "text_pooling", "text_max_length", "text_embed_dim",
)


def encoder_description(identity: dict) -> str:
    """``'ViT-B-32' (pretrained='openai'), texts by its open_clip text tower`` (or by ``'<Hugging Face text
    encoder>'``): how messages name an encoder."""
    text = repr(identity["text_encoder"]) if identity.get("text_encoder") else "its open_clip text tower"
    return f"{identity.get('model_name')!r} (pretrained={identity.get('pretrained')!r}), texts by {text}"


class CorruptShardError(RuntimeError):
    """A shard file under its final name cannot be read or fails its checksum."""


class EncoderMismatchError(ValueError):
    """A build asked to add embeddings from a different encoder (or dtype) to an existing cache."""


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


# ---------------------------------------------------------------------------------------- shards
def _tensor_sha256(tensor: torch.Tensor) -> str:
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(raw).hexdigest()


def _shard_paths(kind_dir: Path) -> list:
    """Complete shards (final names only) in (rank, sequence) order."""
    if not kind_dir.is_dir():
        return []
    found = []
    for path in kind_dir.iterdir():
        match = _SHARD_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return [path for _, _, path in sorted(found)]


def _read_shard_header(path: Path) -> list:
    """Keys of a shard from its header alone; raise `CorruptShardError` naming `path`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shape = f.get_slice("embeddings").get_shape()
        keys = json.loads(metadata["keys"])
    except Exception as err:  # safetensors raises its own error type; KeyError/JSON errors too
        raise CorruptShardError(
            f"embedding shard {path} is damaged or incomplete ({type(err).__name__}: {err}); "
            "rerun the embedding-cache build to set it aside and recompute its keys"
        ) from err
    if metadata.get("format") != SHARD_FORMAT or len(shape) != 2 or shape[0] != len(keys):
        raise CorruptShardError(
            f"embedding shard {path}: expected format {SHARD_FORMAT!r} with one (n, D) 'embeddings' "
            f"row per key, found format {metadata.get('format')!r}, shape {shape}, {len(keys)} keys"
        )
    return keys


def _load_shard(path: Path) -> torch.Tensor:
    """The `embeddings` tensor of a shard, checked against the checksum stored with it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            embeddings = f.get_tensor("embeddings")
    except Exception as err:
        raise CorruptShardError(f"embedding shard {path} cannot be read ({type(err).__name__}: {err})") from err
    if _tensor_sha256(embeddings) != metadata.get("sha256"):
        raise CorruptShardError(
            f"embedding shard {path}: checksum of 'embeddings' does not match the one stored in the "
            "file; the file is damaged. Rerun the embedding-cache build to set it aside and recompute it"
        )
    return embeddings


# ---------------------------------------------------------------------------------------- reader
class EmbeddingCache:
    """Read access to a built embedding cache.

    The index (key -> shard, row) is rebuilt from the shard headers on open; a shard's data is
    loaded, checksum-verified, and kept in memory the first time one of its rows is asked for.

    Args:
        cache_dir (`str` or `Path`): a directory written by `build_embedding_cache`.

    Raises:
        `FileNotFoundError` if `cache_dir` has no ``cache_config.json``;
        `CorruptShardError` (naming the file) if a shard under a final name is damaged.
    """

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)
        config_path = self.cache_dir / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{config_path} not found: {self.cache_dir} is not an embedding cache; "
                "build one with python -m processing.data.build_embedding_cache"
            )
        self.config = json.loads(config_path.read_text(encoding="utf-8"))
        self.build_summary: dict | None = None  # set by build_embedding_cache
        self._shards: list = []
        self._loaded: dict = {}
        self._image_keys: dict = {}
        self._index = {kind: {} for kind in KINDS}
        for kind in KINDS:
            for path in _shard_paths(self.cache_dir / kind):
                shard_id = len(self._shards)
                self._shards.append(path)
                index = self._index[kind]
                for row, key in enumerate(_read_shard_header(path)):
                    index.setdefault(key, (shard_id, row))

    # ------------------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """Width D of every embedding in the cache."""
        return int(self.config["embed_dim"])

    @property
    def text_embed_dim(self) -> int:
        """Width of the text embeddings: the Hugging Face text encoder's, else `embed_dim`."""
        return int(self.config.get("text_embed_dim") or self.config["embed_dim"])

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the embeddings (what `get` returns)."""
        return _DTYPES[self.config["dtype"]]

    @property
    def shard_paths(self) -> list:
        """Paths of all complete shards, text first."""
        return list(self._shards)

    # -------------------------------------------------------------------------------- lookups
    def get(self, kind: str, key: str) -> torch.Tensor | None:
        """Embedding (D,) of `key` in `kind` ("text" or "image"), or None when not cached."""
        location = self._kind_index(kind).get(key)
        if location is None:
            return None
        shard_id, row = location
        # A copy: callers must not be able to edit the cache through the returned tensor.
        return self._shard(shard_id)[row].clone()

    def get_text(self, text: str) -> torch.Tensor | None:
        """Embedding of `text`, or None."""
        return self.get("text", text_key(text))

    def get_image(self, path_or_bytes, sha256: str | None = None) -> torch.Tensor | None:
        """Embedding of the image file (path or bytes), or None.

        ``sha256`` is the file's content hash when the caller already knows it (the image fetcher's
        manifest records it): then the file is not read at all. Otherwise a path's key is remembered per
        (path, size, mtime): a training loop asking for the same file every epoch pays one `stat`, not a
        read and a hash.
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
        return self.get("image", key)

    def get_many(self, kind: str, keys: Iterable[str]):
        """Embeddings of many keys at once.

        Returns:
            `tuple(torch.Tensor, torch.BoolTensor)`: embeddings (n, D) in the storage dtype, zero
            rows where a key is missing, and a mask (n,) that is True where the key was found.
        """
        keys = list(keys)
        index = self._kind_index(kind)
        out = torch.zeros(len(keys), self.text_embed_dim if kind == "text" else self.embed_dim, dtype=self.dtype)
        found = torch.zeros(len(keys), dtype=torch.bool)
        for i, key in enumerate(keys):
            location = index.get(key)
            if location is not None:
                out[i] = self._shard(location[0])[location[1]]
                found[i] = True
        return out, found

    def keys(self, kind: str):
        """All keys of `kind` (a view)."""
        return self._kind_index(kind).keys()

    def __contains__(self, item) -> bool:
        """``(kind, key) in cache``."""
        kind, key = item
        return key in self._kind_index(kind)

    def __len__(self) -> int:
        return sum(len(index) for index in self._index.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}={len(index)}" for kind, index in self._index.items())
        return (f"EmbeddingCache({str(self.cache_dir)!r}, {counts}, embed_dim={self.embed_dim}, "
                f"model={self.config.get('model_name')!r})")

    def verify(self) -> None:
        """Load every shard and check its checksum; raise `CorruptShardError` on the first bad one."""
        for shard_id in range(len(self._shards)):
            self._shard(shard_id)

    # ------------------------------------------------------------------------------ internals
    def _kind_index(self, kind: str) -> dict:
        try:
            return self._index[kind]
        except KeyError:
            raise ValueError(f"unknown embedding kind {kind!r}; expected one of {KINDS}") from None

    def _shard(self, shard_id: int) -> torch.Tensor:
        embeddings = self._loaded.get(shard_id)
        if embeddings is None:
            embeddings = self._loaded[shard_id] = _load_shard(self._shards[shard_id])
        return embeddings


    def check_encoder(self, identity: dict, owner: str = "this model") -> None:
        """Refuse embeddings of another encoder: raise `EncoderMismatchError` naming both when ``identity``
        (`MMGLNeighborEncoder.identity`) differs from the cache's in config, weights or width."""
        diffs = [f"{field}: cache {self.config.get(field)!r}, {owner} {identity.get(field)!r}"
                 for field in ENCODER_IDENTITY_FIELDS if self.config.get(field) != identity.get(field)]
        if diffs:
            raise EncoderMismatchError(
                f"embedding cache {self.cache_dir} holds embeddings of encoder {encoder_description(self.config)}, "
                f"{owner} encodes with {encoder_description(identity)}: " + "; ".join(diffs)
            )


__all__ = [
    "CONFIG_NAME",
    "ENCODER_IDENTITY_FIELDS",
    "CorruptShardError",
    "EmbeddingCache",
    "EncoderMismatchError",
    "encoder_description",
    "KINDS",
    "image_key",
    "text_key",
]
