"""Token ids of every unique text of a data set, tokenised once, and their pickle-free file format.

`MMGLTokenCache` holds the ids; `tokenizer_fingerprint` says which tokenizer made them. Nothing outside
this file depends on how entries are stored: callers use `lookup`, `missing`, `add` / `remember`, `spill_to`,
`save`, `load` and `covers` / `mark_covered`.

This file is Hub-loadable: it imports installed packages and same-folder files only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .atomic_write import atomic_file
from .mapped_pages import ReleaseEvery, release_arrays
from .sorted_digests import find_sorted, unique_order


def tokenizer_fingerprint(tokenizer) -> str:
    """`sha256:<hex>` of what decides a fast tokenizer's ids: its JSON (model, vocab, merges, normaliser,
    pre-tokeniser and added tokens). Its truncation and padding settings are left out: each call
    switches them, and the token cache tokenises without either. A slow tokenizer is fingerprinted by
    its class and full vocabulary (added tokens included)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items())}
    return "sha256:" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def _text_digests(texts: Sequence[str]) -> np.ndarray:
    """128-bit BLAKE2b digest of each text's UTF-8 bytes, as 16-byte void scalars (they sort and
    binary-search bytewise): the on-disk key of a text, so the file holds no text at all."""
    blob = b"".join(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest() for text in texts)
    return np.frombuffer(blob, dtype="V16")


class _IdTable:
    """The ids of many texts in three flat arrays: text `i` has digest `keys[i]` (sorted) and ids
    `ids[offsets[i] : offsets[i + 1]]`. No Python object per text; the arrays may be memory-mapped."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, ids: np.ndarray, handle=None):
        self.keys, self.offsets, self.ids = keys, offsets, ids
        # The stored file, open: a row's ids are read with `os.pread`, not through the map (a mapped read makes the
        # kernel map the page cache's whole folio around it, tens of KiB and more, resident until given back).
        self.handle = handle

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> _IdTable:
        return cls(np.zeros(0, dtype="V16"), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent (a binary search: touches ~log2(n) pages of a mapped file)."""
        return find_sorted(self.keys, keys)

    def row(self, i: int) -> np.ndarray | None:
        """Ids of row `i` as int64, `None` when its offsets are out of range (a damaged file: offsets
        are checked when read, so that opening a file does not read them all)."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if not 0 <= start <= end <= len(self.ids):
            return None
        if self.handle is not None and end > start:
            size = self.ids.dtype.itemsize
            data = os.pread(self.handle.fileno(), (end - start) * size, self.ids.offset + start * size)
            return np.frombuffer(data, dtype=self.ids.dtype).astype(np.int64)
        return np.asarray(self.ids[start:end], dtype=np.int64)


_MAGIC = b"MMGLTOK2"
_ALIGN = 64


class _Chunked:
    """An array written piece by piece (`_write_store`): `dtype`, `length` and a callable giving its chunks in
    order, so that merging a store never holds all its ids in memory."""

    def __init__(self, dtype, length: int, chunks):
        self.dtype, self.shape, self.chunks = np.dtype(dtype), (int(length),), chunks
        self.nbytes = self.dtype.itemsize * int(length)


def _write_store(handle, header: dict, arrays: Mapping[str, "np.ndarray | _Chunked"]) -> None:
    """One uncompressed file: magic, header length (little-endian uint64), JSON header (with each
    array's byte offset, dtype and shape) and the raw arrays, each aligned to 64 bytes."""
    layout, position = {}, 0
    for name, array in arrays.items():
        layout[name] = {"offset": position, "dtype": array.dtype.str, "shape": list(array.shape)}
        position += -(-array.nbytes // _ALIGN) * _ALIGN
    header = dict(header, arrays=layout, data_bytes=position)
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    start = -(-(len(_MAGIC) + 8 + len(blob)) // _ALIGN) * _ALIGN
    handle.write(_MAGIC + len(blob).to_bytes(8, "little") + blob + b"\0" * (start - len(_MAGIC) - 8 - len(blob)))
    for name, array in arrays.items():
        written = 0
        for chunk in array.chunks() if isinstance(array, _Chunked) else [array]:
            data = np.ascontiguousarray(chunk, dtype=array.dtype).tobytes()
            handle.write(data)
            written += len(data)
        if written != array.nbytes:
            raise RuntimeError(f"token store array {name!r}: wrote {written} bytes, expected {array.nbytes}")
        handle.write(b"\0" * (-(-written // _ALIGN) * _ALIGN - written))


def _narrowest(low: int, high: int) -> np.dtype:
    # uint16 for vocabularies under 65,536 (OPT's 50,272 and open_clip's 49,408): half the file and the pages a
    # lookup touches.
    if low >= 0 and high < 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32) if low >= -(2**31) and high < 2**31 else np.dtype(np.int64)


class _Spill:
    """Ids of texts added since the last `save`, appended to a hidden temporary file beside the store (only their
    digests and lengths stay in memory, 24 bytes per text), so building a store for millions of pages holds no
    ids in memory; `save` merges it with the stored table and removes it."""

    def __init__(self, directory: str, dtype):
        os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix=".token-store-spill.", suffix=".tmp", dir=directory)
        self.handle = os.fdopen(fd, "wb")
        self._removal = weakref.finalize(self, _remove_file, self.handle, self.path)  # also at exit
        self.dtype = np.dtype(dtype)
        self.keys: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys)

    def append(self, keys: np.ndarray, arrays: Sequence[np.ndarray]) -> None:
        if not len(keys):
            return
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays])
        info = np.iinfo(self.dtype)
        if flat.size and (flat.min() < info.min or flat.max() > info.max):
            raise ValueError(
                f"token ids {flat.min()}..{flat.max()} do not fit the spill's {self.dtype} (id bound too low)")
        self.handle.write(flat.astype(self.dtype).tobytes())
        self.keys.append(np.array(keys, dtype="V16"))
        self.lengths.append(lengths)

    def finish(self) -> _IdTable:
        """The spilled entries (in insertion order, unsorted) with their ids memory-mapped (more may be appended)."""
        self.handle.flush()
        keys = np.concatenate(self.keys) if self.keys else np.zeros(0, dtype="V16")
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.memmap(self.path, dtype=self.dtype, mode="r") if offsets[-1] else np.zeros(0, self.dtype)
        return _IdTable(keys, offsets, ids)

    def remove(self) -> None:
        self._removal()


def _remove_file(handle, path: str) -> None:
    with contextlib.suppress(OSError):
        handle.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _merge(base: _IdTable, new: _IdTable, chunk_tokens: int = 1 << 20) -> dict[str, "np.ndarray | _Chunked"]:
    """`base` (sorted) and `new` (unsorted, may repeat keys) as one sorted table without repeated keys (the
    first entry of a key wins: base, then insertion order); the ids are gathered chunk by chunk while written, so
    memory is O(entries), not O(ids)."""
    keys = np.concatenate([np.asarray(base.keys), new.keys])
    starts = np.concatenate([np.asarray(base.offsets[:-1]), new.offsets[:-1]])
    lengths = np.concatenate([np.diff(np.asarray(base.offsets)), np.diff(new.offsets)])
    from_new = np.concatenate([np.zeros(len(base), dtype=bool), np.ones(len(new), dtype=bool)])
    order = unique_order(keys, keep="first")
    keys, starts, lengths, from_new = keys[order], starts[order], lengths[order], from_new[order]
    del order
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # The narrowest type for every id: the stored table's type bounds its ids; the new ids are read once, in chunks.
    low, high = (int(np.iinfo(base.ids.dtype).min), int(np.iinfo(base.ids.dtype).max)) if len(base.ids) else (0, 0)
    for i in range(0, len(new.ids), chunk_tokens):
        piece = new.ids[i : i + chunk_tokens]
        low, high = min(low, int(piece.min())), max(high, int(piece.max()))
        release_arrays([new.ids])  # the spill's pages just read
    dtype = _narrowest(low, high)

    def chunks():
        a = 0
        while a < len(keys):
            b = max(int(np.searchsorted(offsets, offsets[a] + chunk_tokens, side="right")) - 1, a + 1)
            b = min(b, len(keys))
            out = np.empty(int(offsets[b] - offsets[a]), dtype=dtype)
            for source, pick in ((base.ids, ~from_new[a:b]), (new.ids, from_new[a:b])):
                runs = lengths[a:b][pick]
                if not runs.sum():
                    continue
                within = np.arange(int(runs.sum())) - np.repeat(np.cumsum(runs) - runs, runs)
                out[np.repeat(offsets[a:b][pick] - offsets[a], runs) + within] = source[
                    np.repeat(starts[a:b][pick], runs) + within]
            yield out
            release_arrays([base.ids, new.ids])  # the ids this chunk gathered, scattered over both files
            a = b

    return {"keys": keys, "offsets": offsets, "ids": _Chunked(dtype, int(offsets[-1]), chunks)}


def _open_store(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and memory-mapped arrays of a file written by `_write_store` (reads the header only)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(len(_MAGIC) + 8)
        if len(head) < len(_MAGIC) + 8 or head[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a token store (bad magic bytes)")
        length = int.from_bytes(head[len(_MAGIC) :], "little")
        if length > size:
            raise ValueError("header longer than the file")
        header = json.loads(handle.read(length).decode("utf-8"))
    start = -(-(len(_MAGIC) + 8 + length) // _ALIGN) * _ALIGN
    if size != start + int(header["data_bytes"]):
        raise ValueError(f"{size} bytes, the header describes {start + int(header['data_bytes'])}")
    arrays = {}
    for name, spec in header["arrays"].items():
        dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
        count = int(np.prod(shape)) if shape else 1
        if count == 0:
            arrays[name] = np.zeros(shape, dtype=dtype)
        else:
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + int(spec["offset"]), shape=shape)
    return header, arrays


class MMGLTokenCache:
    """Token ids of every unique text of a data set, tokenised once, kept in a memory-mapped file.

    Per kind (`"lm"`: OPT ids of `" " + text`; `"neighbor_text"`: the text neighbour encoder's ids of a neighbour
    text, open_clip's or a Hugging Face text model's; stores written before the rename call it `"clip"`, which is
    still read and accepted as a name) the ids
    of all texts are one flat int32 array with offsets, addressed by the sorted 128-bit BLAKE2b digests of
    the texts: a lookup hashes the text and binary-searches the digests (`np.searchsorted`), so the store
    holds no Python object per text and opening it costs O(1) memory; DataLoader workers share its pages
    through the OS page cache. Texts added in this process (`add`) sit in a small dict keyed by digest, or
    after `spill_to` (a build of a whole data set) in temporary files beside the store, until the next `save`
    merges them into the file, streaming: neither building nor saving holds all ids in memory. `identity` records the tokenizers the ids came
    from (`tokenizer_fingerprint`); a processor refuses a store made by other tokenizers. `covers`
    records which page tables (by fingerprint) the store holds every text of, so that a restart skips
    collecting them again (`build_token_cache`).

    On disk (`save` / `load`) a store is one uncompressed file without pickled objects (magic bytes, a
    JSON header with the format, version, identity, counts and array layout, then the raw arrays). `save`
    writes a temporary file beside the target, fsyncs it and renames it over the target, so a crash
    leaves the old file or the new one; `load` refuses a truncated or foreign file, and a file of other
    tokenizers, naming the file.
    """

    FORMAT = "mmgl-token-cache"
    VERSION = 2
    KINDS = ("lm", "neighbor_text")

    def __init__(self, identity: Mapping[str, str], path: str | None = None, max_pending: int = 200_000):
        self.identity = dict(identity)
        self.path = path  # the file it was loaded from or last saved to, for error messages
        self.max_pending = max_pending  # `remember` stops adding beyond this (training-time misses)
        self.covers: list[str] = []
        self._stored: dict[str, _IdTable] = {kind: _IdTable.empty() for kind in self.KINDS}
        self._pending: dict[str, dict[bytes, np.ndarray]] = {kind: {} for kind in self.KINDS}
        self._spills: dict[str, _Spill] = {}  # bulk additions on disk until `save` (`spill_to`)
        # A lookup maps a folio of each of keys, offsets and ids (tens of KiB); give them back every 512 texts.
        self._release = ReleaseEvery(512)

    def __len__(self) -> int:
        return sum(self.count(kind) for kind in self.KINDS)

    def __reduce_ex__(self, protocol):
        # A DataLoader worker started by pickling (spawn) maps the same file instead of receiving a copy of
        # every id; texts added since the last `save` travel with it.
        if self.path is None:
            return super().__reduce_ex__(protocol)
        return (_reopen, (self.path, self.identity, self.max_pending, self._pending, self.covers))

    def _release_maps(self) -> None:
        release_arrays(array for table in self._stored.values() for array in (table.keys, table.offsets, table.ids))

    def count(self, kind: str) -> int:
        kind = _kind(kind)
        spill = self._spills.get(kind)
        return len(self._stored[kind]) + len(self._pending[kind]) + (len(spill) if spill is not None else 0)

    def spill_to(self, directory: str | os.PathLike, id_bounds: Mapping[str, int] | None = None) -> None:
        """From now until `save`, `add` writes ids to hidden temporary files in `directory` (the store's folder)
        instead of memory: building a store then holds 24 bytes per text, not its ids. Spilled texts are found
        by `lookup` / `missing` only after `save` (a text added twice is kept once). `id_bounds` (kind ->
        vocabulary size) picks the files' id type (uint16 under 65,536; int32 otherwise)."""
        for kind in self.KINDS:
            if kind not in self._spills:
                bound = (id_bounds or {}).get(kind)
                dtype = _narrowest(0, bound - 1) if bound else np.dtype(np.int32)
                self._spills[kind] = _Spill(os.fspath(directory), dtype if dtype != np.int64 else np.int32)

    def discard_spills(self) -> None:
        """Remove the temporary files of `spill_to` without saving (what they held is lost)."""
        for spill in self._spills.values():
            spill.remove()
        self._spills = {}

    def lookup(self, kind: str, texts: Sequence[str]) -> list:
        """Ids of each text (`"lm"`: int64 array; `"neighbor_text"`: long tensor), `None` where absent."""
        kind = _kind(kind)
        if not len(texts):
            return []
        keys = _text_digests(texts)
        pending, stored = self._pending[kind], self._stored[kind]
        if self._release.due(len(texts)):
            self._release_maps()
        rows = stored.find(keys).tolist()
        out = []
        for key, row in zip(keys, rows):
            ids = stored.row(row) if row >= 0 else pending.get(key.tobytes())
            if row >= 0 and ids is None:
                raise ValueError(f"token cache {self.path!r}: the {kind!r} offsets are out of range (a damaged file)")
            out.append(ids)
        if kind == "neighbor_text":
            out = [None if ids is None else torch.from_numpy(np.asarray(ids, dtype=np.int64)) for ids in out]
        return out

    def get(self, kind: str, text: str):
        """Ids of one text, `None` when absent."""
        return self.lookup(kind, [text])[0]

    def missing(self, kind: str, texts: Iterable[str]) -> list[str]:
        """The texts (unique, in order) with no ids yet."""
        kind = _kind(kind)
        unique = list(dict.fromkeys(texts))
        if not unique:
            return []
        keys = _text_digests(unique)
        if self._release.due(len(unique)):
            self._release_maps()
        rows = self._stored[kind].find(keys).tolist()
        pending = self._pending[kind]
        return [t for t, k, r in zip(unique, keys, rows) if r < 0 and k.tobytes() not in pending]

    def add(self, kind: str, texts: Sequence[str], ids: Sequence[Any]) -> None:
        """Remember freshly tokenised `texts` (saved by the next `save`); texts already present are kept."""
        kind = _kind(kind)
        pending = self._pending[kind]
        keys = _text_digests(texts)
        new = self._stored[kind].find(keys) < 0
        spill = self._spills.get(kind)
        if spill is not None:
            spill.append(keys[new], [np.asarray(value) for value, keep in zip(ids, new) if keep])
            return
        for key, keep, value in zip(keys, new.tolist(), ids):
            if keep:
                pending.setdefault(key.tobytes(), np.asarray(value, dtype=np.int64).reshape(-1))

    def remember(self, kind: str, texts: Sequence[str], ids: Sequence[Any]) -> None:
        """`add`, while fewer than `max_pending` texts wait for a `save` (texts met only while training,
        e.g. summary-scrubbed ones, would otherwise grow the process without bound)."""
        if sum(len(p) for p in self._pending.values()) < self.max_pending:
            self.add(kind, texts, ids)

    @property
    def dirty(self) -> bool:
        """Whether `save` has something to write (added texts or newly covered tables)."""
        return any(self._pending.values()) or any(len(s) for s in self._spills.values()) or self._covers_dirty

    _covers_dirty = False

    def mark_covered(self, fingerprint: str) -> None:
        """Record that every text of the table `fingerprint` (see `build_token_cache`) is stored."""
        if fingerprint not in self.covers:
            self.covers.append(fingerprint)
            self._covers_dirty = True

    def save(self, path: str | os.PathLike) -> None:
        """Write the store to `path` (one file), atomically; see the class docstring. Memory while saving is
        O(entries), not O(ids): the added ids go to a temporary file beside `path` (or already are there,
        `spill_to`) and are merged with the stored ones in key order while the file is written."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        bulk = bool(self._spills)  # spilled by a build: kept for a retry when this save fails
        self.spill_to(directory)
        try:
            arrays, counts = {}, {}
            for kind in self.KINDS:
                spill, pending = self._spills[kind], self._pending[kind]
                # The texts added in memory join the spill (and stay in memory until the file is written: a failed
                # save loses nothing; a retry adds them again, and a text added twice is kept once).
                spill.append(np.frombuffer(b"".join(pending), dtype="V16"), list(pending.values()))
                merged = _merge(self._stored[kind], spill.finish())
                counts[kind] = len(merged["keys"])
                arrays.update({f"{kind}_{part}": array for part, array in merged.items()})
            header = {"format": self.FORMAT, "version": self.VERSION, "identity": self.identity, "counts": counts,
                      "covers": list(self.covers)}
            with atomic_file(path) as handle:  # the parent folder is created when missing
                _write_store(handle, header, arrays)
            del arrays
            fresh = type(self).load(path)  # from now on memory-mapped
        except BaseException:
            if not bulk:
                self.discard_spills()
            raise
        self.discard_spills()
        self._stored, self._pending, self.path = fresh._stored, {kind: {} for kind in self.KINDS}, path
        self._covers_dirty = False

    @classmethod
    def load(cls, path: str | os.PathLike, identity: Mapping[str, str] | None = None) -> MMGLTokenCache:
        """Open a store written by `save`, memory-mapped (reads its header only).

        Args:
            path (`str` or `os.PathLike`): the file.
            identity (`dict`, *optional*): the tokenizers' identity the store must have (a processor
                passes its own); a file of other tokenizers raises `ValueError` naming the file.

        Raises:
            `ValueError`: the file is truncated, corrupt, not a token store, or of other tokenizers.
        """
        path = os.fspath(path)
        names = [f"{kind}_{part}" for kind in cls.KINDS for part in ("keys", "offsets", "ids")]
        try:
            header, arrays = _renamed_kinds(*_open_store(path))
            arrays = {name: arrays[name] for name in names}
        except FileNotFoundError:
            raise
        except (OSError, EOFError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise ValueError(f"token cache {path!r} cannot be read (truncated, corrupt or not a token cache): {err}") from err
        if header.get("format") != cls.FORMAT or header.get("version") != cls.VERSION:
            raise ValueError(
                f"token cache {path!r} has format {header.get('format')!r} version {header.get('version')!r}, "
                f"expected {cls.FORMAT!r} version {cls.VERSION}"
            )
        if identity is not None and header["identity"] != dict(identity):
            raise ValueError(
                f"token cache {path!r} was built with tokenizers {header['identity']}, this processor uses "
                f"{dict(identity)}; rebuild it (build_token_cache) or remove the file"
            )
        cache = cls(header["identity"], path=path)
        cache.covers = list(header.get("covers") or [])
        counts = header.get("counts") or {}
        for kind in cls.KINDS:
            keys, offsets, ids = (arrays[f"{kind}_{part}"] for part in ("keys", "offsets", "ids"))
            # O(1) checks only; each row's offsets are checked when it is read (`_IdTable.row`).
            consistent = (
                keys.dtype == np.dtype("V16")
                and keys.shape == (counts.get(kind),)
                and offsets.shape == (len(keys) + 1,)
                and offsets[0] == 0
                and offsets[-1] == len(ids)
            )
            if not consistent:
                raise ValueError(f"token cache {path!r}: the {kind!r} tables are inconsistent (a damaged file)")
            handle = open(path, "rb") if isinstance(ids, np.memmap) else None  # rows are read from it: `_IdTable.row`
            cache._stored[kind] = _IdTable(keys, offsets, ids, handle)
        return cache


#: Kind names of stores written before the rename -> today's (`"clip"` held every text neighbour encoder's ids).
_OLD_KINDS = {"clip": "neighbor_text"}


def _kind(kind: str) -> str:
    return _OLD_KINDS.get(kind, kind)


def _renamed_kinds(header: dict, arrays: dict) -> tuple[dict, dict]:
    """A store's header and arrays with today's kind names (an older store says `"clip"`)."""
    rename = lambda name: next(  # noqa: E731
        (new + name[len(old):] for old, new in _OLD_KINDS.items() if name == old or name.startswith(old + "_")), name)
    header = dict(header)
    for field in ("identity", "counts"):
        if isinstance(header.get(field), dict):
            header[field] = {rename(key): value for key, value in header[field].items()}
    return header, {rename(name): array for name, array in arrays.items()}


def _reopen(path, identity, max_pending, pending, covers) -> MMGLTokenCache:
    cache = MMGLTokenCache.load(path, identity=identity)
    cache.max_pending, cache._pending, cache.covers = max_pending, pending, covers
    return cache


__all__ = ["MMGLTokenCache", "tokenizer_fingerprint"]
