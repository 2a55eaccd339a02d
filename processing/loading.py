"""The one loader of the files a run reads back: JSON configs and states, safetensors weights, checkpoint folders.

Every read turns what can be wrong with the file itself into one `InputFileError` whose message starts with the
file's path and says what was expected, so a command prints one line instead of a traceback from deep inside a
library:

* a missing file, or a folder where a file was expected;
* text that is not UTF-8, invalid JSON, or JSON of another type than expected (a list where a config object
  belongs);
* a safetensors file that is truncated (its header describes more bytes than the file holds), that is not a
  safetensors file at all, or that is another kind of safetensors file (its `__metadata__["format"]` is not the
  expected one: an embedding shard where model weights belong).

Used for the checkpoints `run_summarization.py` evaluates, resumes or starts from (`config.json`,
`processor_config.json`, `trainer_state.json`, the weights), the embedding cache (`cache_config.json`, shard
and index headers) and encoder configs given by file; contents (which fields, which values) stay the callers' to
check.

This file imports only the standard library (Hub-loadable).
"""
from __future__ import annotations

import json
import os
from typing import Any

from .errors import MMGLInputError

#: The weights files of a checkpoint folder, any one of which makes it loadable (transformers' and peft's names).
WEIGHTS_NAMES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


class InputFileError(MMGLInputError, ValueError):
    """A file that is missing, unreadable or not what it should be; the message starts with its path.

    Attributes:
        path (`str`): the file.
    """

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = os.fspath(path)
        super().__init__(message, file=self.path)


def _expecting(what: str | None) -> str:
    return f"; expected {what}" if what else ""


def read_bytes(path: str | os.PathLike, what: str | None = None) -> bytes:
    """The bytes of `path`; a missing file, a folder or an unreadable file raises `InputFileError`."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputFileError(path, f"no such file{_expecting(what)}") from None
    except IsADirectoryError:
        raise InputFileError(path, f"is a folder, not a file{_expecting(what)}") from None
    except OSError as err:
        raise InputFileError(path, f"cannot be read ({err.strerror or err}){_expecting(what)}") from None


def read_json(path: str | os.PathLike, expected: type | tuple[type, ...] = dict, what: str | None = None) -> Any:
    """The JSON value in `path`, of type `expected` (default: an object, as every config and state is).

    Raises:
        `InputFileError`: missing or unreadable file, not UTF-8, invalid JSON, or a value of another type; the
        message names the file and what was expected (`what`, e.g. `"the model's config (a JSON object)"`).
    """
    data = read_bytes(path, what)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputFileError(path, f"not UTF-8 text ({err.reason} at byte {err.start}){_expecting(what)}") from None
    except json.JSONDecodeError as err:
        found = "an empty file" if not data.strip() else f"invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        raise InputFileError(path, f"{found}{_expecting(what)}") from None
    if not isinstance(value, expected):
        wanted = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in (expected if isinstance(expected, tuple) else (expected,)))
        found = _JSON_TYPES.get(type(value), type(value).__name__)
        raise InputFileError(path, f"holds a JSON {found}, expected a JSON {wanted}{': ' + what if what else ''}")
    return value


def safetensors_layout(path: str | os.PathLike, what: str | None = None,
                       format: str | None = None) -> tuple[dict, dict]:
    """Metadata and tensors (name -> `(dtype, shape, absolute byte offset)`) of a safetensors file, read from its
    header alone (8-byte little-endian header length, JSON header, tensor bytes) and checked to describe the file
    exactly, without reading any tensor.

    Args:
        path: the file.
        what (`str`, *optional*): what the file should be, for messages.
        format (`str`, *optional*): the `__metadata__["format"]` it must record (`"pt"` for transformers weights).

    Raises:
        `InputFileError`: missing, truncated, not a safetensors file, or of another format.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= size - 8:
                raise InputFileError(path, f"not a safetensors file, or truncated ({size} bytes, no complete header)"
                                           f"{_expecting(what)}")
            header = json.loads(handle.read(length).decode("utf-8"))
    except FileNotFoundError:
        raise InputFileError(path, f"no such file{_expecting(what)}") from None
    except IsADirectoryError:
        raise InputFileError(path, f"is a folder, not a file{_expecting(what)}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputFileError(path, f"not a safetensors file (its header is not JSON){_expecting(what)}") from None
    if not isinstance(header, dict):
        raise InputFileError(path, f"not a safetensors file (its header is not a JSON object){_expecting(what)}")
    metadata = header.pop("__metadata__", None) or {}
    start, end, tensors = 8 + length, 0, {}
    try:
        for name, spec in header.items():
            begin, stop = (int(x) for x in spec["data_offsets"])
            tensors[name] = (spec["dtype"], tuple(int(d) for d in spec["shape"]), start + begin)
            end = max(end, stop)
    except (KeyError, TypeError, ValueError):
        raise InputFileError(path, f"not a safetensors file (malformed tensor entries){_expecting(what)}") from None
    if start + end > size:
        raise InputFileError(path, f"truncated: {size} bytes, its header describes {start + end}{_expecting(what)}")
    if start + end < size:
        raise InputFileError(path, f"{size} bytes, its header describes {start + end}: not one safetensors file"
                                   f"{_expecting(what)}")
    if format is not None and metadata.get("format") != format:
        raise InputFileError(path, f"a safetensors file of format {metadata.get('format')!r}, expected {format!r}"
                                   f"{_expecting(what)}")
    return metadata, tensors


def check_checkpoint(folder: str | os.PathLike, what: str = "a model checkpoint") -> None:
    """Check, before any model code reads it, that `folder` holds a JSON `config.json` and complete weights:
    a `model.safetensors` (or the shards its `model.safetensors.index.json` names) or a peft
    `adapter_model.safetensors` whose headers describe the files exactly (`pytorch_model.bin` only exists).

    Raises:
        `InputFileError` naming the first file that is missing or damaged.
    """
    folder = os.fspath(folder)
    config = os.path.join(folder, "config.json")
    adapter = os.path.join(folder, "adapter_config.json")
    if os.path.isfile(config) or not os.path.isfile(adapter):  # a peft checkpoint may hold only its adapter
        read_json(config, dict, f"the config of {what} (a JSON object)")
    else:
        read_json(adapter, dict, f"the adapter config of {what} (a JSON object)")
    present = [name for name in WEIGHTS_NAMES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise InputFileError(os.path.join(folder, "model.safetensors"),
                             f"no such file; expected the weights of {what} ({', '.join(WEIGHTS_NAMES)})")
    for name in present:
        path = os.path.join(folder, name)
        if name == "model.safetensors.index.json":
            index = read_json(path, dict, f"the weight index of {what}")
            shards = index.get("weight_map")
            if not isinstance(shards, dict):
                raise InputFileError(path, f"no 'weight_map' object; expected the weight index of {what}")
            for shard in sorted(set(map(str, shards.values()))):
                safetensors_layout(os.path.join(folder, shard), f"a weight shard of {what}", format="pt")
        elif name.endswith(".safetensors"):
            safetensors_layout(path, f"the weights of {what}", format="pt")


__all__ = ["InputFileError", "WEIGHTS_NAMES", "check_checkpoint", "read_bytes", "read_json", "safetensors_layout"]
