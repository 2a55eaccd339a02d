"""Crash-safe writes: a file gets its final name only when it is complete.

Every tool that replaces a file a user already has (token cache, embedding-cache shards and config,
converted data) writes through `atomic_file`: a hidden temporary sibling in the same folder (so the
rename cannot cross file systems), flushed and fsynced, then `os.replace`d over the target and the
folder fsynced. A crash or a kill at any point leaves the old complete file or the new complete one,
never a partial file under the final name; the temporary file is removed when the write fails.

This file imports only the standard library (Hub-loadable).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (where the platform lets a folder be opened)."""
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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it replaces ``path``.

    The parent folder is created when missing. Temporary names are ``.<name>.<random>.tmp``, which readers
    that look for final names never match.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through `atomic_file`."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


__all__ = ["atomic_file", "atomic_write_bytes", "fsync_dir"]
