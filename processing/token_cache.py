"""Token ids of every unique text of a data set, tokenised once, and their pickle-free file format.

`MMGLTokenCache` holds the ids; `tokenizer_fingerprint` says which tokenizer made them. Nothing outside
this file depends on how entries are stored: callers use `missing`, `add`, `lm` / `clip`, `save` and `load`.

This file is Hub-loadable: it imports installed packages and same-folder files only.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .atomic_write import atomic_file


def tokenizer_fingerprint(tokenizer) -> str:
    """``sha256:<hex>`` of what decides a fast tokenizer's ids: its JSON (model, vocab, merges, normaliser,
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
    """The ids of many texts in three flat arrays: text ``i`` has digest ``keys[i]`` (sorted) and ids
    ``ids[offsets[i] : offsets[i + 1]]``. No Python object per text, so it loads and searches fast."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, ids: np.ndarray):
        self.keys, self.offsets, self.ids = keys, offsets, ids

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(cls, base: "_IdTable" | None, keys: np.ndarray, arrays: Sequence[np.ndarray]) -> "_IdTable":
        """``base``'s entries plus new ones (``keys[j]`` has ids ``arrays[j]``), sorted by key."""
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.int64)
        starts = np.cumsum(lengths) - lengths
        if base is not None:
            keys = np.concatenate([base.keys, keys])
            starts = np.concatenate([base.offsets[:-1], starts + len(base.ids)])
            lengths = np.concatenate([np.diff(base.offsets), lengths])
            flat = np.concatenate([base.ids, flat])
        order = np.argsort(keys, kind="stable")
        keys, starts, lengths = keys[order], starts[order], lengths[order]
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Gather every entry's ids in key order at once (entry j's run, shifted to its new place).
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        fits = flat.size == 0 or (flat.min() >= -(2**31) and flat.max() < 2**31)
        return cls(keys, offsets, flat[gather].astype(np.int32 if fits else np.int64))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[rows] == keys, rows, -1)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)


class MMGLTokenCache:
    """Token ids of every unique text of a data set, tokenised once.

    In memory, ``lm`` maps a text to its OPT ids (``" " + text``, int64 array) and ``clip`` maps a
    neighbour text to its open_clip ids (`(Lc,)` long tensor): a dict lookup per text while building
    examples. ``identity`` records the tokenizers the ids came from (`tokenizer_fingerprint`); a
    processor refuses a cache made by other tokenizers.

    On disk (`save` / `load`) a cache is one ``.npz`` file without pickled objects: a JSON header
    (format, version, identity, counts) and, per kind, the 128-bit digests of the texts (sorted), the
    ids of all texts as one flat int32 array and their offsets. `save` writes a temporary file beside
    the target, fsyncs it and renames it over the target (`os.replace`), so a crash leaves the old
    file or the new one, never a partial file under the final name; `load` refuses a truncated or
    inconsistent file, and a file of other tokenizers, naming the file. The texts of a loaded file
    move into ``lm`` / ``clip`` when first asked for (the file stores only their digests); new texts
    go in through `add` (as `build_token_cache` and the processor do), so that the next `save` keeps them.
    """

    FORMAT = "mmgl-token-cache"
    VERSION = 1
    KINDS = ("lm", "clip")

    def __init__(self, identity: Mapping[str, str], path: str | None = None):
        self.identity = dict(identity)
        self.path = path  # the file it was loaded from or last saved to, for error messages
        self.lm: dict[str, np.ndarray] = {}
        self.clip: dict[str, torch.Tensor] = {}
        self._stored: dict[str, _IdTable] = {}  # from the file, by kind
        self._added: dict[str, dict[str, None]] = {kind: {} for kind in self.KINDS}  # not in the file yet

    def __len__(self) -> int:
        return sum(len(self._stored.get(kind, ())) + len(self._added[kind]) for kind in self.KINDS)

    def missing(self, kind: str, texts: Iterable[str]) -> list[str]:
        """The texts (unique, in order) with no ids yet; ids found in the loaded file are moved to memory."""
        table = getattr(self, kind)
        missing = [text for text in dict.fromkeys(texts) if text not in table]
        stored = self._stored.get(kind)
        if stored is None or not missing:
            return missing
        rows = stored.find(_text_digests(missing))
        for text, row in zip(missing, rows.tolist()):
            if row >= 0:
                ids = stored.row(row)
                table[text] = ids if kind == "lm" else torch.from_numpy(ids)
        return [text for text, row in zip(missing, rows.tolist()) if row < 0]

    def add(self, kind: str, texts: Sequence[str], ids: Sequence[Any]) -> None:
        """Remember freshly tokenised ``texts`` (saved by the next `save`)."""
        getattr(self, kind).update(zip(texts, ids))
        self._added[kind].update(dict.fromkeys(texts))

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache to ``path`` (an ``.npz`` file), atomically; see the class docstring."""
        path = os.fspath(path)
        tables = {}
        for kind in self.KINDS:
            added = list(self._added[kind])
            table = getattr(self, kind)
            arrays = [np.asarray(table[text]) for text in added]
            tables[kind] = _IdTable.build(self._stored.get(kind), _text_digests(added), arrays)
        header = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "identity": self.identity,
            "counts": {kind: len(table) for kind, table in tables.items()},
        }
        arrays = {"header": np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)}
        for kind, table in tables.items():
            arrays.update({f"{kind}_keys": table.keys, f"{kind}_offsets": table.offsets, f"{kind}_ids": table.ids})
        with atomic_file(path) as handle:  # the parent folder is created when missing
            np.savez(handle, **arrays)
        self._stored, self._added, self.path = tables, {kind: {} for kind in self.KINDS}, path

    @classmethod
    def load(cls, path: str | os.PathLike, identity: Mapping[str, str] | None = None) -> "MMGLTokenCache":
        """Read a cache written by `save`.

        Args:
            path (`str` or `os.PathLike`): the ``.npz`` file.
            identity (`dict`, *optional*): the tokenizers' identity the cache must have (a processor
                passes its own); a file of other tokenizers raises `ValueError` naming the file.

        Raises:
            `ValueError`: the file is truncated, corrupt, not a token cache, or of other tokenizers.
        """
        path = os.fspath(path)
        names = ["header"] + [f"{kind}_{part}" for kind in cls.KINDS for part in ("keys", "offsets", "ids")]
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in names}
            header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:  # truncated, corrupt, foreign
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
        counts = header.get("counts") or {}
        for kind in cls.KINDS:
            keys, offsets, ids = (arrays[f"{kind}_{part}"] for part in ("keys", "offsets", "ids"))
            consistent = (
                keys.dtype == np.dtype("V16")
                and keys.shape == (counts.get(kind),)
                and offsets.shape == (len(keys) + 1,)
                and offsets[0] == 0
                and offsets[-1] == len(ids)
                and bool(np.all(np.diff(offsets) >= 0))
            )
            if not consistent:
                raise ValueError(f"token cache {path!r}: the {kind!r} tables are inconsistent (a damaged file)")
            cache._stored[kind] = _IdTable(keys, offsets, ids)
        return cache


__all__ = ["MMGLTokenCache", "tokenizer_fingerprint"]
