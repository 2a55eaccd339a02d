"""Open the page table a command is given: the Arrow data set that `python -m processing.data.wikiweb2m`
writes (a folder, converted once), or WikiWeb2M TFRecord files read now.

TFRecords read now never write outside the user's folders: their Arrow table is built in the cache folder the user
names (`cache_dir`: kept, and reused while the files are unchanged) or, without one, in a temporary folder that is
removed as soon as the table is loaded into memory (so nothing lands in `~/.cache/huggingface/datasets` and no lock
file is left, whether the read succeeds or fails). A large corpus is better converted once.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence


def is_arrow_dataset_dir(path: str | os.PathLike) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk`."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json"))


def open_page_table(source: str | os.PathLike | Sequence[str], cache_dir: str | os.PathLike | None = None,
                    **load_kwargs):
    """A `datasets.Dataset` with one row per page.

    Args:
        source: an Arrow data set folder (memory-mapped, nothing converted again), or TFRecord file(s) /
            glob(s) (read with `processing.data.wikiweb2m.load_pages`).
        cache_dir (`str`, *optional*): for TFRecords, the folder their Arrow table is kept in; without it the table
            is read into memory and nothing stays on disk (module docstring).
        load_kwargs: passed to `load_pages` for TFRecords (`skip_corrupt`, `errors`, `num_proc`, ...).
    """
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        if not is_arrow_dataset_dir(source):
            raise FileNotFoundError(
                f"{os.fspath(source)} is a folder but not an Arrow data set (no state.json); expected the output of "
                "`python -m processing.data.wikiweb2m`, or TFRecord file(s)"
            )
        import datasets

        table = datasets.load_from_disk(os.fspath(source))
        if isinstance(table, datasets.DatasetDict):
            raise ValueError(
                f"{os.fspath(source)} holds a DatasetDict ({list(table)}); expected one table of pages with a `split` "
                "column, as `python -m processing.data.wikiweb2m` writes"
            )
        return table
    from .wikiweb2m import load_pages

    if cache_dir is not None:
        return load_pages(source, cache_dir=cache_dir, **load_kwargs)
    work = tempfile.mkdtemp(prefix="mmgl-pages-")
    try:
        return load_pages(source, cache_dir=work, keep_in_memory=True, **load_kwargs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["is_arrow_dataset_dir", "open_page_table"]
