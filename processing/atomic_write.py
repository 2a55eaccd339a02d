"""Crash-safe writes: a file or a folder gets its final name only when it is complete.

Every tool that replaces a file a user already has (token cache, embedding-cache shards and config,
converted data) writes through `atomic_file`: a hidden temporary sibling in the same folder (so the
rename cannot cross file systems), flushed and fsynced, then `os.replace`d over the target and the
folder fsynced. A crash or a kill at any point leaves the old complete file or the new complete one,
never a partial file under the final name; the temporary file is removed when the write fails. A full disk
(or quota) raises `DiskFullError` naming the file, the bytes needed and the bytes free.

A whole folder (a converted data set, an exported model with its metrics) is replaced the same way:
built in a staging sibling `.NAME.tmp-<pid>-*` (`staging_folder`), then swapped in by two renames
(`replace_folder`: `NAME` -> `.NAME.old-<pid>`, staging -> `NAME`); `recover_folder`, run at the
next start, finishes or undoes what a kill between them left. A kill at any point leaves the old
folder or the new one, never a mix of both.

This file imports only the standard library (Hub-loadable).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from .errors import MMGLInputError

STAGING_TAG = ".tmp-"
OLD_TAG = ".old-"


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable (where the platform lets a folder be opened)."""
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


#: The errno values of a full disk and of an exhausted quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system of `path` (its nearest existing folder), or `None`."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class DiskFullError(MMGLInputError, OSError):
    """No space left (or quota exhausted) while writing `path`: one line naming it, the bytes needed and the bytes
    free (measured when the message is shown, so after the failed writer removed its temporary files).

    Args:
        path: the file or folder being written.
        needed (`int`, *optional*): bytes the write needs (`at_least`: a lower bound).
        kept (`str`, *optional*): what is left as it was, e.g. "the previous data set is kept".
    """

    def __init__(self, path: str | os.PathLike, needed: int | None = None, kept: str = "", at_least: bool = False):
        self.path, self.needed, self.kept, self.at_least = os.fspath(path), needed, kept, at_least
        OSError.__init__(self, errno.ENOSPC, "no space left on device", self.path)  # errno and filename, as `open` sets them

    def __str__(self) -> str:
        parts = [] if self.needed is None else [f"{'at least ' if self.at_least else ''}{self.needed:,} bytes needed"]
        free = free_bytes(self.path)
        parts += [] if free is None else [f"{free:,} bytes free on its file system"]
        message = f"no space left on device writing {self.path}" + (f" ({', '.join(parts)})" if parts else "")
        return message + (f"; {self.kept}" if self.kept else "")

    def __reduce__(self):
        return type(self), (self.path, self.needed, self.kept, self.at_least)


# How Rust writers (safetensors, tokenizers) report ENOSPC / EDQUOT: not an `OSError`, only this text.
_RUST_DISK_FULL = tuple(f"(os error {code})" for code in sorted(DISK_FULL_ERRNOS))


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` or an error it was raised from (`__cause__` / `__context__`) is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if not isinstance(exc, OSError) and any(text in str(exc) for text in _RUST_DISK_FULL):
            return True
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return False


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", size: int | None = None) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on a clean exit it replaces `path`.

    The parent folder is created when missing. Temporary names are `.<name>.<random>.tmp`, which readers
    that look for final names never match. `size`: the bytes to be written, when known, for the message of a
    full disk (`DiskFullError`; else the bytes written until then are named as a lower bound).
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
    except BaseException as err:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0  # what reached the disk: a lower bound
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(err):
            kept = "the previous file is kept" if os.path.exists(path) else "nothing was written"
            raise DiskFullError(path, size if size is not None else written + 1, kept, at_least=size is None) from err
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through `atomic_file`."""
    with atomic_file(path, "wb", size=len(data)) as handle:
        handle.write(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _sibling_pid(name: str, prefix: str) -> int | None:
    """The pid in `<prefix><pid>[-...]`, or None when `name` is not such a sibling."""
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def staging_folder(out: str | os.PathLike) -> str:
    """A new empty folder `.NAME.tmp-<pid>-*` beside `out` (same file system, so it can be renamed into place)."""
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(out)}{STAGING_TAG}{os.getpid()}-", dir=os.path.dirname(out))


def _carry_over(old: str, out: str, keep: Callable[[str], bool] | None) -> None:
    """Moves the entries of `old` that `keep` names (and `out` lacks) into `out`."""
    if keep is None:
        return
    for entry in sorted(os.listdir(old)):
        if keep(entry) and not os.path.lexists(os.path.join(out, entry)):
            os.rename(os.path.join(old, entry), os.path.join(out, entry))


def recover_folder(out: str | os.PathLike, keep: Callable[[str], bool] | None = None) -> None:
    """Finish or undo what a killed `replace_folder` left beside `out` (run at every start).

    A staging folder `.NAME.tmp-<pid>-*` of a process that is gone is removed. A retired previous folder
    `.NAME.old-<pid>` is put back when `out` is missing (the kill fell between the two renames), else the entries
    `keep` names are moved into `out` and the rest is removed (the new folder was already in place).
    """
    out = os.path.abspath(out)
    parent, name = os.path.dirname(out), os.path.basename(out)
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        staging_pid = _sibling_pid(entry, f".{name}{STAGING_TAG}")
        if staging_pid is not None:
            if staging_pid == os.getpid() or not _pid_alive(staging_pid):
                shutil.rmtree(path, ignore_errors=True)
            continue
        old_pid = _sibling_pid(entry, f".{name}{OLD_TAG}")
        if old_pid is not None and (old_pid == os.getpid() or not _pid_alive(old_pid)):
            if not os.path.lexists(out):
                os.rename(path, out)
            else:
                _carry_over(path, out, keep)
                shutil.rmtree(path, ignore_errors=True)


def replace_folder(new: str | os.PathLike, out: str | os.PathLike, keep: Callable[[str], bool] | None = None) -> None:
    """Put the complete folder `new` at `out`; the previous one is deleted only afterwards.

    Both renames are within one folder, so each is atomic: a kill leaves `out` (old or new) or, between them,
    `.NAME.old-<pid>` that `recover_folder` puts back. `keep(name)`: entries of the previous folder that are
    not part of what is replaced (e.g. a log another program writes there) and move into the new one afterwards.
    """
    new, out = os.fspath(new), os.path.abspath(out)
    if os.path.lexists(out):
        old = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}{OLD_TAG}{os.getpid()}")
        os.rename(out, old)
        os.rename(new, out)
        fsync_dir(os.path.dirname(out))
        _carry_over(old, out, keep)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, out)
        fsync_dir(os.path.dirname(out))


__all__ = [
    "DiskFullError",
    "atomic_file",
    "atomic_write_bytes",
    "free_bytes",
    "fsync_dir",
    "is_disk_full",
    "recover_folder",
    "replace_folder",
    "staging_folder",
]
