"""Embed every neighbour text and image of a data set once, with a frozen open_clip encoder.

"Precompute once, train many": training reads these embeddings instead of running the encoders
at every step. Inputs are deduplicated by content hash, so a caption shared by a thousand pages
or an image shown on many pages is encoded once.

Layout of a cache directory::

    <cache>/cache_config.json                   encoder identity, storage dtype, embed_dim
    <cache>/text/shard-r000-00000.safetensors   tensor "embeddings" (n, D); metadata "keys" (JSON
                                                list of n sha256 hex keys) and "sha256" (of the
                                                tensor bytes); r000 is the writing process's rank
    <cache>/image/shard-r001-00003.safetensors
    <cache>/<kind>/.shard-*.safetensors.tmp     a shard being written: never read; removed by the
                                                next build
    <cache>/<kind>/shard-*.safetensors.corrupt  a shard a build found damaged and set aside

Keys: a text's key is the sha256 of its UTF-8 bytes (`text_key`); an image's key is the sha256
of its file bytes (`image_key`), the same hash the image fetcher names its files by.

A shard gets its final name only through `os.replace` after it is fully written, and the index
is rebuilt from the shards on open, so a build killed at any point resumes where the last
complete shard ended. A damaged shard under a final name is never read silently: opening the
cache raises `CorruptShardError` naming the file, and the next build sets it aside and encodes
its keys again.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Union
from urllib.parse import unquote, urlsplit

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

logger = logging.getLogger(__name__)

KINDS = ("text", "image")
CONFIG_NAME = "cache_config.json"
CACHE_FORMAT = "mmgl-embedding-cache/1"
SHARD_FORMAT = "mmgl-embedding-shard/1"
_SHARD_RE = re.compile(r"^shard-r(\d+)-(\d+)\.safetensors$")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# What must agree for two builds to share a cache. The model name and pretrained tag are
# recorded too, but only for people: the config and weight hashes identify the encoder exactly
# (a moved checkpoint file is the same encoder; two random inits are not).
_IDENTITY_FIELDS = ("config_sha256", "weights_sha256", "embed_dim", "dtype")


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


def image_key(path_or_bytes: Union[str, os.PathLike, bytes]) -> str:
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
            "rerun build_embedding_cache to set it aside and recompute its keys"
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
            "file; the file is damaged. Rerun build_embedding_cache to set it aside and recompute it"
        )
    return embeddings


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a hidden temp file beside `path`, fsync, then `os.replace` it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class _ShardWriter:
    """Buffers (key, embedding) rows of one kind and writes them as shards of ~`shard_size` rows."""

    def __init__(self, kind_dir: Path, rank: int, dtype: torch.dtype, shard_size: int):
        self.kind_dir = kind_dir
        self.rank = rank
        self.dtype = dtype
        self.shard_size = shard_size
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
        embeddings = torch.cat(self.rows).contiguous()
        path = self.kind_dir / f"shard-r{self.rank:03d}-{self.next_seq:05d}.safetensors"
        metadata = {"format": SHARD_FORMAT, "keys": json.dumps(self.keys), "sha256": _tensor_sha256(embeddings)}
        _atomic_write_bytes(path, safetensors_save({"embeddings": embeddings}, metadata=metadata))
        self.written.append(path)
        self.next_seq += 1
        self.keys, self.rows = [], []


def _set_aside_damaged_files(cache_dir: Path) -> list:
    """Remove temp files of killed builds and rename damaged shards to ``*.corrupt``.

    Every shard is read in full and checked against its checksum: a build must not extend a
    cache it cannot trust. Returns the paths set aside.
    """
    damaged = []
    for kind in KINDS:
        kind_dir = cache_dir / kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        for tmp in kind_dir.glob(".*.tmp"):
            logger.info("removing %s left by an interrupted build", tmp)
            tmp.unlink(missing_ok=True)
        for path in _shard_paths(kind_dir):
            try:
                _read_shard_header(path)
                _load_shard(path)
            except CorruptShardError as err:
                logger.error("%s; setting it aside as %s.corrupt and recomputing its keys", err, path.name)
                os.replace(path, path.with_name(path.name + ".corrupt"))
                damaged.append(path)
    return damaged


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
                "build one with build_embedding_cache(...) or python -m processing.embedding_cache"
            )
        self.config = json.loads(config_path.read_text(encoding="utf-8"))
        self.build_summary: Optional[dict] = None  # set by build_embedding_cache
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
    def dtype(self) -> torch.dtype:
        """Storage dtype of the embeddings (what `get` returns)."""
        return _DTYPES[self.config["dtype"]]

    @property
    def shard_paths(self) -> list:
        """Paths of all complete shards, text first."""
        return list(self._shards)

    # -------------------------------------------------------------------------------- lookups
    def get(self, kind: str, key: str) -> Optional[torch.Tensor]:
        """Embedding (D,) of `key` in `kind` ("text" or "image"), or None when not cached."""
        location = self._kind_index(kind).get(key)
        if location is None:
            return None
        shard_id, row = location
        # A copy: callers must not be able to edit the cache through the returned tensor.
        return self._shard(shard_id)[row].clone()

    def get_text(self, text: str) -> Optional[torch.Tensor]:
        """Embedding of `text`, or None."""
        return self.get("text", text_key(text))

    def get_image(self, path_or_bytes) -> Optional[torch.Tensor]:
        """Embedding of the image file (path or bytes), or None.

        A path's key is remembered per (path, size, mtime): a training loop asking for the same
        file every epoch pays one `stat`, not a read and a hash.
        """
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
        out = torch.zeros(len(keys), self.embed_dim, dtype=self.dtype)
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


# --------------------------------------------------------------------------------------- encoder
def _json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _state_dict_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _register_model_config(model_config: dict) -> str:
    """Register a custom open_clip config under a name derived from its hash; return the name."""
    import tempfile

    import open_clip

    name = f"mmgl-custom-{_json_sha256(model_config)[:16]}"
    if open_clip.get_model_config(name) is None:
        # open_clip only registers configs from files; the registry keeps the entry afterwards.
        with tempfile.TemporaryDirectory(prefix="mmgl-open-clip-") as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(model_config), encoding="utf-8")
            open_clip.add_model_config(path)
    return name


class ClipEncoder:
    """A frozen open_clip model with its tokenizer and eval-time image transform.

    Args:
        model_name (`str`, *optional*, defaults to ``"ViT-B-32"``): an open_clip model name; with
            `model_config` only a label recorded in the cache config.
        pretrained (`str`, *optional*): an open_clip pretrained tag (``"openai"``) or a local
            checkpoint path; None keeps a random initialisation, seeded with 0 (tests, offline demo).
        model_config (`dict`, *optional*): an open_clip model config (``embed_dim``,
            ``vision_cfg``, ``text_cfg``) for a custom or tiny model.
        device (`str` or `torch.device`, *optional*, defaults to ``"cpu"``).
    """

    def __init__(self, model_name: str = "ViT-B-32", pretrained: Optional[str] = None,
                 model_config: Optional[dict] = None, device="cpu"):
        import open_clip

        if model_config is not None:
            missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_config]
            if missing:
                raise ValueError(f"model_config is missing {missing}; expected an open_clip model config")
            arch, config = _register_model_config(model_config), dict(model_config)
        else:
            arch, config = model_name, open_clip.get_model_config(model_name)
            if config is None:
                raise ValueError(
                    f"unknown open_clip model {model_name!r}: expected a name from open_clip.list_models() "
                    "or model_config=... for a custom model"
                )
        self.device = torch.device(device)
        # Without weights, a fixed seed: the same random encoder in every run and process, whatever the caller's
        # seed, so a cache built by one run is reusable by the next.
        with torch.random.fork_rng(devices=[]):
            if pretrained is None:
                torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=self.device)
        # Frozen: eval mode (no dropout) and no gradients anywhere.
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.embed_dim = int(config["embed_dim"])
        self.identity = {
            "model_name": model_name,
            "pretrained": None if pretrained is None else str(pretrained),
            "config_sha256": _json_sha256(config),
            "weights_sha256": _state_dict_sha256(self.model),
            "embed_dim": self.embed_dim,
        }

    @torch.no_grad()
    def encode_text(self, texts: list) -> torch.Tensor:
        """L2-normalised embeddings (n, D) float32 on CPU of `texts`."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float().cpu()

    def load_image(self, source) -> torch.Tensor:
        """Pixels (3, H, W) of an image path or file object, RGB-converted and preprocessed."""
        with Image.open(source) as image:
            return self.preprocess(image.convert("RGB"))

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (n, D) float32 on CPU of preprocessed pixels (n, 3, H, W)."""
        return self.model.encode_image(pixel_values.to(self.device), normalize=True).float().cpu()


# --------------------------------------------------------------------------------------- builder
def _dtype_name(dtype) -> str:
    for name, value in _DTYPES.items():
        if dtype in (name, value):
            return name
    raise ValueError(f"unsupported storage dtype {dtype!r}; expected one of {list(_DTYPES)}")


def _check_config(cache_dir: Path, encoder: ClipEncoder, dtype_name: str, write: bool) -> None:
    """Refuse to mix encoders or dtypes in one cache; write the config on a first build."""
    path = cache_dir / CONFIG_NAME
    wanted = {"format": CACHE_FORMAT, **encoder.identity, "dtype": dtype_name}
    if not path.exists():
        if not write:
            raise FileNotFoundError(f"{path} not found; the main process writes it before the others read it")
        _atomic_write_bytes(path, (json.dumps(wanted, indent=2) + "\n").encode("utf-8"))
        return
    existing = json.loads(path.read_text(encoding="utf-8"))
    diffs = [f"{field}: cache has {existing.get(field)!r}, this build has {wanted[field]!r}"
             for field in _IDENTITY_FIELDS if existing.get(field) != wanted[field]]
    if diffs:
        raise EncoderMismatchError(
            f"{path}: this cache holds embeddings of encoder {existing.get('model_name')!r} "
            f"(pretrained={existing.get('pretrained')!r}); refusing to add embeddings of "
            f"{wanted['model_name']!r} (pretrained={wanted['pretrained']!r}) to it: "
            + "; ".join(diffs) + ". Use another cache directory for another encoder."
        )


def _process_state():
    """This process's `accelerate.PartialState`, refusing a launch it failed to recognise."""
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


def _unique_by_key(items: Iterable, key_fn: Callable, what: str):
    """First-seen order dict key -> item; items whose key cannot be computed are counted."""
    unique, unreadable = {}, 0
    for item in items:
        try:
            key = key_fn(item)
        except OSError as err:
            logger.warning("cannot read %s %s (%s); skipped", what, item, err)
            unreadable += 1
            continue
        unique.setdefault(key, item)
    return unique, unreadable


def _image_batch(encoder: ClipEncoder, batch: list):
    """Decode and preprocess a batch of (key, path); skip unreadable files with a warning."""
    keys, pixels = [], []
    for key, path in batch:
        try:
            data = Path(path).read_bytes()
            # Embed exactly the bytes the key names, even if the file changed since it was hashed.
            if image_key(data) != key:
                logger.warning("%s changed after it was hashed; skipped", path)
                continue
            pixels.append(encoder.load_image(io.BytesIO(data)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            logger.warning("cannot decode image %s (%s: %s); skipped", path, type(err).__name__, err)
            continue
        keys.append(key)
    if not keys:
        return keys, None
    return keys, encoder.encode_image(torch.stack(pixels))


def _embed_kind(cache: EmbeddingCache, kind: str, items: dict, encode_batch: Callable, *, rank: int,
                world: int, batch_size: int, shard_size: int, dtype: torch.dtype, progress: bool) -> dict:
    """Encode this process's share of `items` (key -> source) that the cache lacks."""
    from tqdm.auto import tqdm

    # Split the full unique key list, not the to-do list: every process derives the same split
    # even if they saw the shards at slightly different moments.
    mine = [(key, source) for i, (key, source) in enumerate(items.items()) if i % world == rank]
    todo = [(key, source) for key, source in mine if (kind, key) not in cache]
    writer = _ShardWriter(cache.cache_dir / kind, rank, dtype, shard_size)
    encoded = 0
    desc = f"embed {kind}s" + (f" [rank {rank}/{world}]" if world > 1 else "")
    with tqdm(total=len(todo), desc=desc, unit=kind, disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            keys, embeddings = encode_batch(batch)
            writer.add(keys, embeddings)
            encoded += len(keys)
            bar.update(len(batch))
    writer.flush()
    return {"unique": len(items), "assigned": len(mine), "cached": len(mine) - len(todo),
            "encoded": encoded, "failed": len(todo) - encoded, "shards_written": len(writer.written)}


def build_embedding_cache(
    cache_dir,
    texts: Iterable[str] = (),
    image_paths: Iterable = (),
    model_name: str = "ViT-B-32",
    pretrained: Optional[str] = None,
    model_config: Optional[dict] = None,
    batch_size: int = 64,
    device=None,
    *,
    shard_size: int = 4096,
    dtype="float16",
    encoder: Optional[ClipEncoder] = None,
    state=None,
    progress: bool = True,
) -> EmbeddingCache:
    """Encode every text and image not yet in the cache at `cache_dir`; return the cache.

    Resumable and idempotent: keys already in complete shards are skipped, so a rerun after a
    kill encodes only the rest. Under ``accelerate launch`` / ``torchrun`` each process takes the
    unique keys with ``i % num_processes == process_index`` and writes shards named with its rank.

    Args:
        cache_dir (`str` or `Path`): the cache directory (created if missing).
        texts (`Iterable[str]`): neighbour texts; duplicates are encoded once.
        image_paths (`Iterable[str or Path]`): image files; identical files are encoded once.
            Unreadable or undecodable files are skipped with a warning and counted as failed.
        model_name (`str`, *optional*, defaults to ``"ViT-B-32"``): the open_clip model.
        pretrained (`str`, *optional*): open_clip pretrained tag or checkpoint path.
        model_config (`dict`, *optional*): custom open_clip config (e.g. a tiny test model).
        batch_size (`int`, *optional*, defaults to 64): inputs per encoder call.
        device (`str` or `torch.device`, *optional*): defaults to this process's accelerate device.
        shard_size (`int`, *optional*, defaults to 4096): rows per shard; a kill loses at most the
            rows encoded since the last shard.
        dtype (`str` or `torch.dtype`, *optional*, defaults to ``"float16"``): storage dtype.
        encoder (`ClipEncoder`, *optional*): an already loaded encoder, used instead of building
            one from `model_name` / `pretrained` / `model_config`.
        state (*optional*): an `accelerate.PartialState` (default: a new one).
        progress (`bool`, *optional*, defaults to True): show tqdm progress bars.

    Returns:
        `EmbeddingCache` over all shards of all processes, with ``build_summary`` set to this
        process's counts per kind (unique, assigned, cached, encoded, failed, shards_written;
        ``unreadable`` image paths; ``set_aside`` damaged shards).

    Raises:
        `EncoderMismatchError` if the cache was built with another encoder or storage dtype.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    storage = _dtype_name(dtype)
    state = state if state is not None else _process_state()
    cache_dir = Path(cache_dir)
    if encoder is None:
        encoder = ClipEncoder(model_name, pretrained=pretrained, model_config=model_config,
                              device=device if device is not None else state.device)

    set_aside = []
    if state.is_main_process:
        # One process checks the identity and tidies the directory before anyone reads it.
        cache_dir.mkdir(parents=True, exist_ok=True)
        _check_config(cache_dir, encoder, storage, write=True)
        set_aside = _set_aside_damaged_files(cache_dir)
    state.wait_for_everyone()
    if not state.is_main_process:
        _check_config(cache_dir, encoder, storage, write=False)
    cache = EmbeddingCache(cache_dir)

    common = dict(rank=state.process_index, world=state.num_processes, batch_size=batch_size,
                  shard_size=shard_size, dtype=_DTYPES[storage], progress=progress)
    text_items, _ = _unique_by_key(texts, text_key, "text")
    summary = {"text": _embed_kind(
        cache, "text", text_items,
        lambda batch: ([key for key, _ in batch], encoder.encode_text([text for _, text in batch])),
        **common)}
    image_items, unreadable = _unique_by_key(image_paths, image_key, "image file")
    summary["image"] = _embed_kind(cache, "image", image_items, lambda batch: _image_batch(encoder, batch), **common)
    summary["image"]["unreadable"] = unreadable
    summary["set_aside"] = [str(p) for p in set_aside]

    state.wait_for_everyone()
    cache = EmbeddingCache(cache_dir)  # re-read: the index now holds every process's shards
    cache.build_summary = summary
    return cache


# ------------------------------------------------------------------------------- data set inputs
# Neighbour texts of a WikiWeb2M page row. `section_rest_sentence` is a section's text without
# its first sentence (the summarization label): what a leakage-free processor embeds for the
# target section itself. Fields a data set lacks are ignored.
NEIGHBOR_TEXT_FIELDS = (
    "clean_page_description",
    "section_text",
    "section_rest_sentence",
    "section_image_clean_ref_desc",
    "section_image_captions",
)
IMAGE_URL_FIELD = "section_image_url"


def _strings(value):
    """Non-empty strings of a str or an arbitrarily nested list of them."""
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def resolve_image_path(url: str, image_dir, manifest=None) -> Optional[Path]:
    """Local file of an image URL: through an image-fetcher `manifest` if given, else the file in
    `image_dir` named like the URL's last path component (as is, then percent-decoded)."""
    if manifest is not None:
        record = manifest.get(url)
        if record is None or record.get("status") != "ok":
            return None
        path = Path(image_dir) / record["path"]
        return path if path.is_file() else None
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    for candidate in dict.fromkeys((name, unquote(name))):
        # A decoded name may hold "/" or be ".."; only a plain file name inside image_dir counts.
        if candidate in ("", ".", "..") or "/" in candidate or "\\" in candidate:
            continue
        path = Path(image_dir) / candidate
        if path.is_file():
            return path
    return None


def collect_neighbor_inputs(dataset, image_dir, text_fields=NEIGHBOR_TEXT_FIELDS, url_field=IMAGE_URL_FIELD):
    """Unique neighbour texts and image files of a WikiWeb2M page table.

    Args:
        dataset: a `datasets.Dataset` or `DatasetDict` with one row per page.
        image_dir: folder of images named by URL basename, or an image-fetcher cache (a folder
            with ``manifest.jsonl``).

    Returns:
        `tuple(list[str], list[Path], list[str])`: texts and image paths in first-seen order,
        and the image URLs with no local file.
    """
    from processing.data.image_fetcher import MANIFEST_NAME, ImageManifest

    manifest_path = Path(image_dir) / MANIFEST_NAME
    manifest = ImageManifest(manifest_path) if manifest_path.is_file() else None
    splits = dataset.values() if hasattr(dataset, "values") else [dataset]
    texts, paths, missing = {}, {}, {}
    for split in splits:
        fields = [f for f in text_fields if f in split.column_names]
        has_urls = url_field in split.column_names
        columns = fields + ([url_field] if has_urls else [])
        for batch in split.select_columns(columns).iter(batch_size=256):
            for field in fields:
                texts.update(dict.fromkeys(_strings(batch[field])))
            for url in _strings(batch[url_field]) if has_urls else ():
                path = resolve_image_path(url, image_dir, manifest)
                if path is None:
                    missing[url] = None
                else:
                    paths[path] = None
    return list(texts), list(paths), list(missing)


# -------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    """``python -m processing.embedding_cache DATASET_DIR IMAGE_DIR CACHE_DIR --model ViT-B-32
    --pretrained openai``; run it under ``accelerate launch`` to split the work."""
    parser = argparse.ArgumentParser(
        prog="python -m processing.embedding_cache",
        description="Embed every unique neighbour text and image of a WikiWeb2M data set once.",
    )
    parser.add_argument("dataset_dir", help="Arrow data set (datasets.save_to_disk) with one row per page")
    parser.add_argument("image_dir", help="images named by URL basename, or an image-fetcher cache")
    parser.add_argument("cache_dir", help="embedding cache directory")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path")
    parser.add_argument("--model_config", default=None, help="JSON file of a custom open_clip model config")
    parser.add_argument("--batch_size", type=int, default=64, help="inputs per encoder call (default: %(default)s)")
    parser.add_argument("--shard_size", type=int, default=4096,
                        help="embeddings per shard file, the unit of resumption (default: %(default)s)")
    parser.add_argument("--dtype", default="float16", choices=sorted(_DTYPES),
                        help="storage dtype of the embeddings (default: %(default)s)")
    parser.add_argument("--device", default=None, help="default: this process's accelerate device")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    import datasets

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model_config = None
    if args.model_config:
        model_config = json.loads(Path(args.model_config).read_text(encoding="utf-8"))
    texts, image_paths, missing = collect_neighbor_inputs(datasets.load_from_disk(args.dataset_dir), args.image_dir)
    if missing:
        logger.warning("%d image URLs have no file under %s (first: %s)", len(missing), args.image_dir, missing[0])
    cache = build_embedding_cache(
        args.cache_dir, texts=texts, image_paths=image_paths, model_name=args.model,
        pretrained=args.pretrained, model_config=model_config, batch_size=args.batch_size,
        device=args.device, shard_size=args.shard_size, dtype=args.dtype, progress=not args.no_progress,
    )
    if _process_state().is_main_process:  # one report, not one per process
        summary = {**cache.build_summary, "missing_image_files": len(missing),
                   "cache": {kind: len(cache.keys(kind)) for kind in KINDS}}
        print(json.dumps(summary, indent=2))
    return 0


__all__ = [
    "CONFIG_NAME",
    "ClipEncoder",
    "CorruptShardError",
    "EmbeddingCache",
    "EncoderMismatchError",
    "IMAGE_URL_FIELD",
    "KINDS",
    "NEIGHBOR_TEXT_FIELDS",
    "build_embedding_cache",
    "collect_neighbor_inputs",
    "image_key",
    "main",
    "resolve_image_path",
    "text_key",
]


if __name__ == "__main__":
    sys.exit(main())
