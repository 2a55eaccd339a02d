"""A checkpoint save that failed for lack of disk space, told as such.

torch's writer reports a full disk as `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos`
and safetensors as a `SafetensorError` whose text mentions `os error 28`: neither carries an errno. A training
run whose save failed is therefore judged by the file system instead: an incomplete `checkpoint-N` folder (no
`trainer_state.json`, which the Trainer writes last) written by this run, on a file system with less room than a
checkpoint needs, or an `ENOSPC` anywhere in the chain of errors.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from processing.atomic_write import DiskFullError, free_bytes, is_disk_full


def checkpoint_bytes(model) -> int:
    """About what one checkpoint of `model` takes: its weights, plus AdamW's two float32 moments per trainable
    parameter (the optimizer state the Trainer saves beside them)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)


def incomplete_checkpoints(output_dir: str | os.PathLike, since: float) -> list[Path]:
    """`checkpoint-N` folders of `output_dir` changed after `since` (a `time.time()`) without a
    `trainer_state.json`: saves that did not finish."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("checkpoint-*") if path.is_dir() and path.stat().st_mtime >= since
                  and not (path / "trainer_state.json").exists())


def checkpoint_disk_full(err: BaseException, output_dir: str | os.PathLike, model, since: float) -> DiskFullError | None:
    """The `DiskFullError` to raise instead of `err` when `err` is a checkpoint save of this run (started at
    `since`) that ran out of disk space, else `None`. The incomplete checkpoint is removed (it cannot be resumed
    from, and it holds the space another try needs); the previous checkpoints are left as they were."""
    needed = checkpoint_bytes(model)
    partial = incomplete_checkpoints(output_dir, since)
    free = free_bytes(output_dir)
    full = is_disk_full(err) or (partial and free is not None and free < needed)
    if not full:
        return None
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    where = partial[-1] if partial else Path(output_dir)
    removed = f"the incomplete {where.name} was removed; " if partial else ""
    return DiskFullError(where, needed, f"{removed}earlier checkpoints and outputs are kept (resume from the last "
                                        "complete checkpoint once there is room)")


__all__ = ["checkpoint_bytes", "checkpoint_disk_full", "incomplete_checkpoints"]
