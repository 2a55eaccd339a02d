"""The WikiWeb2M schema and reader: TFRecord files of `SequenceExample` pages -> page rows.

WikiWeb2M (google-research-datasets/wit, `wikiweb2m.md`) stores one Wikipedia page per record as a
`tf.train.SequenceExample`: page-level *context* features and per-section *feature lists* (one step
per section, in page order). This module turns a record into ONE PAGE ROW, a plain `dict` whose keys
are the feature names, kept verbatim;
the columns, their types and the defaults of missing optional features are listed in
`processing/wikiweb2m_schema.py`, which the page graph reads too.

Errors name the file, the record's byte offset (in the uncompressed stream), the page and the
field, so one bad page among two million can be found. Corrupt framing is handled by
`processing.data.tfrecord_io`.

Splits: the official `split` field (`train` / `val` / `test`) is the default. The MMGL study
(Yoon et al., 2023) instead took pages in file order: the first 400k for training, the next 100k for
validation and the next 100k for testing; `study_split` gives those page ranges, scaled 4:1:1 when
fewer than 600k pages are read.

Usage::

    from processing.data.wikiweb2m import load_pages, page_url_index, summarization_samples
    pages = load_pages("wikiweb2m-*.tfrecord*", num_proc=4)    # datasets.Dataset, one row per page
    train = summarization_samples(pages, "train")             # [(page row index, section index), ...]
    row_of = page_url_index(pages)                            # page_url -> row index, O(1) lookups

    python -m processing.data.wikiweb2m 'wikiweb2m-*.tfrecord*' data/wikiweb2m --num_proc 4 --skip_corrupt
"""
from __future__ import annotations

import argparse
import functools
import glob as _glob
import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from processing.atomic_write import DiskFullError, is_disk_full
from processing.errors import MMGLInputError
from processing.wikiweb2m_schema import (
    CONTEXT_BYTES_FEATURES,
    CONTEXT_DEFAULTS,
    CONTEXT_FEATURES,
    IMAGE_BYTES_FEATURES,
    IMAGE_INT_FEATURES,
    PAGE_COLUMNS,
    REQUIRED_FEATURES,
    SECTION_BYTES_FEATURES,
    SECTION_DEFAULTS,
    SECTION_INT_FEATURES,
    SECTION_LIST_INT_FEATURES,
    SEQUENCE_FEATURES,
)

from processing.atomic_write import recover_folder, replace_folder, staging_folder

from .sample_list import SampleList
from .tfrecord_io import PathLike, TFRecordCorruptError, TFRecordReader

if TYPE_CHECKING:  # loaded by `_example_pb2`, without the tfrecord package's torch import
    from tfrecord import example_pb2

@functools.cache
def _example_pb2():
    """TensorFlow's Example protos as the `tfrecord` package ships them (`tfrecord.example_pb2`), loaded without
    running `tfrecord/__init__.py`, which imports torch (seconds) for DataLoader helpers this reader never uses.
    Registered under its own name, so a later `import tfrecord` reuses it instead of defining the protos twice."""
    name = "tfrecord.example_pb2"
    if name not in sys.modules:
        package = importlib.util.find_spec("tfrecord")  # locates the package without running it
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(package.submodule_search_locations[0], "example_pb2.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


#: Values of the official `split` field.
SPLITS = ("train", "val", "test")
#: The MMGL study's page budget per split, taken in page order (see `study_split`).
STUDY_SPLIT_PAGES = {"train": 400_000, "val": 100_000, "test": 100_000}

_BYTES_KINDS = dict.fromkeys(CONTEXT_BYTES_FEATURES + SECTION_BYTES_FEATURES + IMAGE_BYTES_FEATURES, "bytes_list")
_KIND = {**dict.fromkeys(PAGE_COLUMNS, "int64_list"), **_BYTES_KINDS}
_REQUIRED = frozenset(REQUIRED_FEATURES)
_CONTEXT_DEFAULT = CONTEXT_DEFAULTS
_SECTION_DEFAULT = SECTION_DEFAULTS


class WikiWeb2MFormatError(MMGLInputError, ValueError):
    """A record is not a valid WikiWeb2M page.

    Attributes:
        path (`str`): the TFRecord file.
        offset (`int`): the record's byte offset in the (uncompressed) stream.
        page (`str` or `None`): the page URL (or title) when it could be read.
        field (`str` or `None`): the offending feature.
        section (`int` or `None`): the offending section's position, for per-section problems.
    """

    field_holds_sections = True  # a feature list holds one value per section: "field 'section_text', section 2"

    def __init__(self, message: str, path: PathLike, offset: int, page=None, field=None, section=None):
        self.path, self.offset = str(path), offset
        super().__init__(message, file=self.path, record=offset, page=page, section=section, field=field)

    def __reduce__(self):
        # `datasets` worker processes pickle errors back to the parent: keep every attribute.
        return type(self), (self.message, self.path, self.offset, self.page, self.field, self.section)


class RecordDecodeError(WikiWeb2MFormatError):
    """A record passed its CRCs but is not a `SequenceExample` protobuf (skippable as corrupt)."""


class EmptyInputError(MMGLInputError, ValueError):
    """The input files hold no page at all (empty files, or every record skipped as corrupt).

    Attributes:
        paths (`list[str]`): the files read.
        corrupt_records (`int`): damaged records skipped while reading them.
    """

    def __init__(self, paths: Sequence[PathLike], corrupt_records: int = 0):
        self.paths, self.corrupt_records = [str(p) for p in paths], int(corrupt_records)
        shown = ", ".join(self.paths[:5]) + (f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else "")
        if corrupt_records:
            why = f"{corrupt_records} corrupt record(s) skipped: every record was damaged"
        else:
            why = "the file(s) hold no records"
        super().__init__(f"no pages read from {shown} ({why})")

    def __reduce__(self):
        return type(self), (self.paths, self.corrupt_records)


#: UTF-8 error handlers the reader accepts (others could put lone surrogates into the text).
TEXT_ERRORS = ("strict", "replace")


def _check_errors(errors: str) -> str:
    if errors not in TEXT_ERRORS:
        raise ValueError(f"errors must be one of {TEXT_ERRORS} (UTF-8 handling of page text), got {errors!r}")
    return errors


# --------------------------------------------------------------------------------------------------
# Record <-> page row
# --------------------------------------------------------------------------------------------------


class _RecordContext:
    """Where a record came from, to build errors that say it; also decodes text."""

    __slots__ = ("path", "offset", "page", "errors")

    def __init__(self, path: PathLike, offset: int, errors: str):
        self.path, self.offset, self.page, self.errors = path, offset, None, errors

    def error(self, message: str, field=None, section=None) -> WikiWeb2MFormatError:
        return WikiWeb2MFormatError(message, self.path, self.offset, self.page, field, section)

    def values(self, feature, name: str, section=None):
        """The value list of one `tf.train.Feature`, checking its type."""
        kind = feature.WhichOneof("kind")
        if kind is None:  # an empty Feature: no values at all
            return ()
        if kind != _KIND[name]:
            want = "bytes" if _KIND[name] == "bytes_list" else "int64"
            raise self.error(f"expected {want} values, found {kind}", name, section)
        return getattr(feature, kind).value

    def decode(self, values, name: str, section=None) -> list[str]:
        try:
            return [v.decode("utf-8", self.errors) for v in values]
        except UnicodeDecodeError as exc:
            raise self.error(
                f"value is not valid UTF-8 ({exc.reason} at byte {exc.start} of the value); "
                f"pass errors='replace' to read it with U+FFFD (on the command line: --errors replace; "
                f"run_summarization.py: --text_errors replace)",
                name,
                section,
            ) from None


def parse_page(data: bytes, path: PathLike = "<bytes>", offset: int = 0, errors: str = "strict") -> dict[str, Any]:
    """Parse one serialized WikiWeb2M `SequenceExample` into a page row (see the module docstring).

    Args:
        data (`bytes`): the record.
        path (`str`, *optional*): the file it came from, for error messages.
        offset (`int`, *optional*): its byte offset in the file, for error messages.
        errors (`str`, *optional*, defaults to `"strict"`): UTF-8 decoding error handler; `"strict"`
            raises `WikiWeb2MFormatError`, `"replace"` substitutes U+FFFD.

    Returns:
        `dict[str, Any]`: the page row, with every column of `PAGE_COLUMNS`.

    Raises:
        WikiWeb2MFormatError: not a SequenceExample, a required feature is missing, a value has
            the wrong type or is not UTF-8, or feature lengths disagree.
    """
    rc = _RecordContext(path, offset, _check_errors(errors))
    try:
        example = _example_pb2().SequenceExample.FromString(data)
    except DecodeError as exc:
        raise RecordDecodeError(f"record is not a SequenceExample protobuf ({exc})", path, offset) from None
    context = example.context.feature
    lists = example.feature_lists.feature_list
    row: dict[str, Any] = {}

    # Identify the page first so that every later error can name it.
    for name in ("page_url", "page_title"):
        if name in context:
            vals = rc.values(context[name], name)
            if len(vals) == 1:
                rc.page = vals[0].decode("utf-8", "replace")
                break

    for name in CONTEXT_FEATURES:
        vals = rc.values(context[name], name) if name in context else ()
        if len(vals) > 1:
            raise rc.error(f"expected one value, found {len(vals)}", name)
        if not vals:
            if name in _REQUIRED:
                raise rc.error("required feature is missing", name)
            row[name] = _CONTEXT_DEFAULT[name]
        elif _KIND[name] == "bytes_list":
            row[name] = rc.decode(vals, name)[0]
        else:
            row[name] = int(vals[0])

    # The number of sections: every present feature list must agree on it. A page without any
    # section (all lists absent or empty) is valid and simply has no samples.
    present = [name for name in SEQUENCE_FEATURES if name in lists]
    ref = "section_title" if "section_title" in lists else (present[0] if present else None)
    num_sections = len(lists[ref].feature) if ref else 0
    for name in present:
        n = len(lists[name].feature)
        if n != num_sections:
            raise rc.error(
                f"feature list has {n} steps but {ref!r} has {num_sections}: "
                f"every per-section feature needs one step per section",
                name,
            )
    if num_sections:
        for name in REQUIRED_FEATURES:
            if name in SEQUENCE_FEATURES and name not in lists:
                raise rc.error(f"required feature is missing (the page has {num_sections} sections)", name)

    for name in SECTION_BYTES_FEATURES + SECTION_INT_FEATURES:
        if name not in lists:  # optional here: required ones were checked above (or there are no sections)
            default = _SECTION_DEFAULT.get(name)
            row[name] = list(range(num_sections)) if default is None else [default] * num_sections
            continue
        is_bytes = _KIND[name] == "bytes_list"
        out = []
        for i, feature in enumerate(lists[name].feature):
            vals = rc.values(feature, name, i)
            if len(vals) != 1:
                if vals or name in _REQUIRED:
                    raise rc.error(f"expected one value per section, found {len(vals)}", name, i)
                default = _SECTION_DEFAULT[name]
                out.append(i if default is None else default)
            elif is_bytes:
                out.append(rc.decode(vals, name, i)[0])
            else:
                out.append(int(vals[0]))
        row[name] = out

    for name in SECTION_LIST_INT_FEATURES:
        if name in lists:
            row[name] = [[int(v) for v in rc.values(f, name, i)] for i, f in enumerate(lists[name].feature)]
        else:
            row[name] = [[] for _ in range(num_sections)]

    _parse_images(rc, lists, num_sections, row)
    return {name: row[name] for name in PAGE_COLUMNS}


def _parse_images(rc: _RecordContext, lists, num_sections: int, row: dict[str, Any]) -> None:
    """Fill the aligned per-image features of `row`; check that their lengths agree per section."""
    image_names = IMAGE_BYTES_FEATURES + IMAGE_INT_FEATURES
    parsed = {}
    for name in image_names:
        if name not in lists:
            continue
        feats = lists[name].feature
        if _KIND[name] == "bytes_list":
            parsed[name] = [rc.decode(rc.values(f, name, i), name, i) for i, f in enumerate(feats)]
        else:
            parsed[name] = [[int(v) for v in rc.values(f, name, i)] for i, f in enumerate(feats)]
    ref = next(iter(parsed), None)  # section_image_url when present
    counts = [len(v) for v in parsed[ref]] if ref else [0] * num_sections
    for name, per_section in parsed.items():
        for i, vals in enumerate(per_section):
            if len(vals) != counts[i]:
                raise rc.error(
                    f"{len(vals)} image values but {ref!r} has {counts[i]}: image lists of a section "
                    f"must be aligned",
                    name,
                    i,
                )
    for name in image_names:
        if name in parsed:
            row[name] = parsed[name]
        else:
            empty = "" if _KIND[name] == "bytes_list" else 0
            row[name] = [[empty] * n for n in counts]


def page_to_example(row: dict[str, Any]) -> example_pb2.SequenceExample:
    """Build the WikiWeb2M `SequenceExample` of a page row (the inverse of `parse_page`).

    Every column of `PAGE_COLUMNS` present in `row` is written; columns absent from `row` are
    left out of the record (useful to test readers on incomplete records).

    Args:
        row (`dict[str, Any]`): a page row.

    Returns:
        `tfrecord.example_pb2.SequenceExample`
    """
    example = _example_pb2().SequenceExample()
    context = example.context.feature
    for name in CONTEXT_FEATURES:
        if name in row:
            value = row[name]
            if _KIND[name] == "bytes_list":
                context[name].bytes_list.value.append(value.encode("utf-8"))
            else:
                context[name].int64_list.value.append(int(value))
    lists = example.feature_lists.feature_list
    for name in SEQUENCE_FEATURES:
        if name not in row:
            continue
        steps = lists[name].feature
        scalar = name in SECTION_BYTES_FEATURES or name in SECTION_INT_FEATURES
        if _KIND[name] == "bytes_list":
            for value in row[name]:
                vals = [value] if scalar else value
                steps.add().bytes_list.value.extend([v.encode("utf-8") for v in vals])
        else:
            for value in row[name]:
                steps.add().int64_list.value.extend([value] if scalar else value)
    return example


def serialize_page(row: dict[str, Any]) -> bytes:
    """The serialized WikiWeb2M record of a page row (see `page_to_example`)."""
    return page_to_example(row).SerializeToString()


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def resolve_paths(paths_or_glob: PathLike | Sequence[PathLike]) -> list[str]:
    """Expand a path, a glob pattern, or a list of them into a list of existing files.

    Patterns are expanded in sorted order (so `wikiweb2m-train.tfrecord.gz-0000*-of-00005` reads
    the shards in order); explicit paths keep the given order.

    Raises:
        FileNotFoundError: a path does not exist or a pattern matches nothing.
    """
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if _glob.has_magic(item):
            matches = sorted(p for p in _glob.glob(item) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
            out.extend(matches)
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise FileNotFoundError(f"no such file: {item!r}")
    if not out:
        raise FileNotFoundError("no input files given")
    return out


@dataclass
class ReadStats:
    """Counts gathered while reading (pass one to `iter_pages` to fill it).

    Attributes:
        files (`int`): files opened.
        pages (`int`): page rows produced.
        sections (`int`): sections in those pages.
        corrupt_records (`int`): damaged records skipped (only with `skip_corrupt=True`).
    """

    files: int = 0
    pages: int = 0
    sections: int = 0
    corrupt_records: int = 0

    def update(self, other: ReadStats) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def iter_pages(
    paths: PathLike | Sequence[PathLike],
    skip_corrupt: bool = False,
    errors: str = "strict",
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one page row per record of WikiWeb2M TFRecord files (gzip or plain), in file order.

    Args:
        paths (`str`, `os.PathLike` or a list of them): files or glob patterns (`resolve_paths`).
        skip_corrupt (`bool`, *optional*, defaults to `False`): skip records with bad framing or
            CRCs, or that are not protobufs, instead of raising; they are counted in `stats`.
            Records that parse but break the schema always raise `WikiWeb2MFormatError`.
        errors (`str`, *optional*, defaults to `"strict"`): UTF-8 error handler (`parse_page`).
        stats (`ReadStats`, *optional*): updated in place while reading.

    Yields:
        `dict[str, Any]`: page rows.

    Raises:
        TFRecordCorruptError: damaged framing (without `skip_corrupt`).
        WikiWeb2MFormatError: a record that is not a valid page.
    """
    stats = stats if stats is not None else ReadStats()
    for path in resolve_paths(paths):
        stats.files += 1
        reader = TFRecordReader(path, skip_corrupt=skip_corrupt)
        seen_corrupt = 0
        for offset, data in reader:
            stats.corrupt_records += reader.num_corrupt - seen_corrupt
            seen_corrupt = reader.num_corrupt
            try:
                row = parse_page(data, path, offset, errors)
            except RecordDecodeError:
                # A protobuf that does not decode behind valid CRCs was damaged before framing;
                # it is skippable like bad framing. Schema violations are not.
                if not skip_corrupt:
                    raise
                stats.corrupt_records += 1
                continue
            stats.pages += 1
            stats.sections += len(row["section_title"])
            yield row
        stats.corrupt_records += reader.num_corrupt - seen_corrupt


def ingestion_throughput(paths: PathLike | Sequence[PathLike], max_pages: int | None = None) -> float:
    """Pages per second that `iter_pages` reads from `paths` in this process (for benchmarks).

    Args:
        paths: files or glob patterns.
        max_pages (`int`, *optional*): stop after this many pages.

    Returns:
        `float`: pages per second (decompression, CRC checks, protobuf parsing and decoding).
    """
    count = 0
    start = time.perf_counter()
    for _ in iter_pages(paths):
        count += 1
        if max_pages is not None and count >= max_pages:
            break
    elapsed = time.perf_counter() - start
    return count / elapsed if elapsed > 0 else float("inf")


# --------------------------------------------------------------------------------------------------
# datasets integration
# --------------------------------------------------------------------------------------------------


def page_features():
    """The `datasets.Features` of a page row (explicit, so types never depend on the data seen).

    Returns:
        `datasets.Features`: strings as `Value("string")`, integers as `Value("int64")`,
        per-section features as `List`, per-section lists as `List(List(...))`.
    """
    from datasets import Features, List as DList, Value  # heavy import: only when asked for

    string, int64 = Value("string"), Value("int64")
    spec = {}
    for name in PAGE_COLUMNS:
        base = string if _KIND[name] == "bytes_list" else int64
        if name in CONTEXT_FEATURES:
            spec[name] = base
        elif name in SECTION_BYTES_FEATURES or name in SECTION_INT_FEATURES:
            spec[name] = DList(base)
        else:
            spec[name] = DList(DList(base))
    return Features(spec)


def _generate_pages(paths, skip_corrupt=False, errors="strict", fingerprint="", stats_dir=None):
    """`datasets` generator over a shard of `paths`; writes its `ReadStats` when asked.

    `fingerprint` is unused here: it is part of `gen_kwargs` only so that the `datasets` cache
    key changes when a file's size or modification time does (the key is computed from the
    arguments, not from the files' contents).
    """
    stats = ReadStats()
    yield from iter_pages(paths, skip_corrupt=skip_corrupt, errors=errors, stats=stats)
    if stats_dir is not None:
        with open(os.path.join(stats_dir, f"stats-{uuid.uuid4().hex}.json"), "w") as f:
            json.dump(asdict(stats), f)


def _files_fingerprint(paths: Sequence[str]) -> str:
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _build(paths_or_glob, num_proc, streaming, cache_dir, skip_corrupt, errors, stats_dir, keep_in_memory=False):
    paths = resolve_paths(paths_or_glob)  # a missing file is reported before `datasets` is imported
    import datasets

    gen_kwargs = {
        "paths": paths,
        "skip_corrupt": skip_corrupt,
        "errors": errors,
        "fingerprint": _files_fingerprint(paths),
        "stats_dir": stats_dir,
    }
    if streaming:
        return datasets.IterableDataset.from_generator(_generate_pages, features=page_features(), gen_kwargs=gen_kwargs)
    # `datasets` shards the `paths` list across processes: more processes than files would idle.
    if num_proc is not None:
        num_proc = min(num_proc, len(paths))
        num_proc = num_proc if num_proc > 1 else None
    try:
        ds = datasets.Dataset.from_generator(
            _generate_pages,
            features=page_features(),
            gen_kwargs=gen_kwargs,
            num_proc=num_proc,
            cache_dir=cache_dir,
            keep_in_memory=keep_in_memory,
        )
    except Exception as exc:
        # `datasets` refuses a generator that yields nothing with 'Instruction "train" corresponds
        # to no data!', which names neither the files nor why.
        if _is_no_data_error(exc):
            raise _empty_input(paths, skip_corrupt, errors) from None
        if num_proc is not None and _chain_find(exc, (WikiWeb2MFormatError, TFRecordCorruptError)) is None:
            # A worker process's error reaches us as text only (multiprocess keeps the remote
            # traceback as a string): read again in this process, up to the same bad record, to
            # raise the error itself with its file, offset, page and field.
            for _ in iter_pages(paths, skip_corrupt=skip_corrupt, errors=errors):
                pass
        raise
    if len(ds) == 0:
        raise _empty_input(paths, skip_corrupt, errors)
    return ds


def _chain_find(exc: BaseException | None, types) -> BaseException | None:
    """The first exception of `types` in `exc`'s `__cause__` / `__context__` chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, types):
            return exc
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return None


def _is_no_data_error(exc: BaseException) -> bool:
    found = _chain_find(exc, ValueError)
    while found is not None:
        if "corresponds to no data" in str(found):
            return True
        found = _chain_find(found.__cause__ or found.__context__, ValueError)
    return False


def _empty_input(paths: Sequence[str], skip_corrupt: bool, errors: str) -> EmptyInputError:
    """The error for inputs without pages, with the number of corrupt records skipped (a second,
    cheap pass: no page decodes, so it only re-checks framing)."""
    stats = ReadStats()
    for _ in iter_pages(paths, skip_corrupt=skip_corrupt, errors=errors, stats=stats):
        pass
    return EmptyInputError(paths, stats.corrupt_records)


def load_pages(
    paths_or_glob: PathLike | Sequence[PathLike],
    num_proc: int | None = None,
    streaming: bool = False,
    cache_dir: PathLike | None = None,
    skip_corrupt: bool = False,
    errors: str = "strict",
    keep_in_memory: bool = False,
):
    """Read WikiWeb2M TFRecord files into a `datasets.Dataset` with one row per page.

    Args:
        paths_or_glob (`str`, `os.PathLike` or a list of them): files or glob patterns.
        num_proc (`int`, *optional*): processes reading shards in parallel (one file per task, so
            at most the number of files); `None` reads in this process.
        streaming (`bool`, *optional*, defaults to `False`): return an `IterableDataset` that reads
            the files lazily instead of writing an Arrow cache.
        cache_dir (`str`, *optional*): where `datasets` keeps the Arrow cache (default: the
            `datasets` cache folder). The cache is keyed by the files' paths, sizes and mtimes.
        skip_corrupt (`bool`, *optional*, defaults to `False`): skip damaged records (`iter_pages`).
        errors (`str`, *optional*, defaults to `"strict"`): UTF-8 error handler.
        keep_in_memory (`bool`, *optional*, defaults to `False`): load the table into memory (the files written
            in `cache_dir` may then be removed).

    Returns:
        `datasets.Dataset` (or `datasets.IterableDataset` when `streaming`) with the columns of
        `PAGE_COLUMNS` and the types of `page_features`.

    Raises:
        FileNotFoundError: a path does not exist or a pattern matches nothing.
        EmptyInputError: the files hold no page (empty, or every record skipped as corrupt); not
            raised when `streaming` (nothing is read until iteration).
        WikiWeb2MFormatError, TFRecordCorruptError: a bad record (inside `datasets` generation
            they arrive wrapped in `DatasetGenerationError`; see `processing.data.cli`).
    """
    _check_errors(errors)
    return _build(paths_or_glob, num_proc, streaming, cache_dir, skip_corrupt, errors, stats_dir=None,
                  keep_in_memory=keep_in_memory)


# --------------------------------------------------------------------------------------------------
# Samples, splits and lookups
# --------------------------------------------------------------------------------------------------


def _iter_columns(pages, columns: Sequence[str]) -> Iterator[tuple]:
    """Yield tuples of `columns` per page from a `Dataset`, `IterableDataset` or list of rows.

    For `datasets` objects only the needed columns are read, in Arrow batches: the section texts of
    two million pages never have to be decoded to find the samples.
    """
    if hasattr(pages, "select_columns") and hasattr(pages, "iter"):
        for batch in pages.select_columns(list(columns)).iter(batch_size=1024):
            yield from zip(*(batch[c] for c in columns))
    else:
        for row in pages:
            yield tuple(row[c] for c in columns)


def _sample_flags(pages) -> Iterator[tuple]:
    """`(split, is_section_summarization_sample)` per page: columns of a `datasets` table or of page rows; pages of
    another kind (page dicts, `PageGraph`s) through their page graph."""
    from processing.page_graph import PageGraph

    if hasattr(pages, "select_columns") and hasattr(pages, "iter"):
        yield from _iter_columns(pages, ("split", "is_section_summarization_sample"))
        return
    for page in pages:
        if isinstance(page, Mapping) and "is_section_summarization_sample" in page:
            yield page.get("split"), page["is_section_summarization_sample"]
        else:
            graph = PageGraph.coerce(page)
            yield graph.split, graph.is_sample


def study_split(num_pages: int) -> dict[str, range]:
    """The MMGL study's page split: page positions (in file order) of train, val and test.

    The study used the first 400,000 pages for training, the next 100,000 for validation and the
    next 100,000 for testing, ignoring the official `split` field. With fewer than 600,000 pages
    the same 4:1:1 proportions are kept (val and test get `num_pages // 6` pages each, train the
    rest); with more, pages after the first 600,000 belong to no split.

    Args:
        num_pages (`int`): the number of pages read.

    Returns:
        `dict[str, range]`: `{"train": range, "val": range, "test": range}` of row indices.
    """
    if num_pages < 0:
        raise ValueError(f"num_pages must be >= 0, got {num_pages}")
    total = sum(STUDY_SPLIT_PAGES.values())
    if num_pages >= total:
        n_train, n_val, n_test = (STUDY_SPLIT_PAGES[s] for s in SPLITS)
    else:
        n_val = n_test = num_pages // 6
        n_train = num_pages - n_val - n_test
    return {
        "train": range(0, n_train),
        "val": range(n_train, n_train + n_val),
        "test": range(n_train + n_val, n_train + n_val + n_test),
    }


def summarization_samples(pages, split: str | None = None, use_study_split: bool = False) -> SampleList:
    """Section summarization samples as `(page row index, section index)` pairs, in page order (a `SampleList`:
    two integer arrays, no Python object per sample).

    A section is a sample when its `is_section_summarization_sample` flag is 1. The one selection rule: the
    sample index (`processing.data.sample_index.PageGraphIndex`) takes its default samples from here.

    Args:
        pages (`datasets.Dataset`, `datasets.IterableDataset`, or a list of page rows, page dicts or `PageGraph`s).
        split (`str`, *optional*): keep only pages of this split (`train`, `val` or `test`);
            `None` keeps all.
        use_study_split (`bool`, *optional*, defaults to `False`): assign splits by page position
            as the MMGL study did (`study_split`) instead of the official `split` field; needs
            `len(pages)`.

    Returns:
        `SampleList` (a sequence of `(int, int)` tuples)
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    wanted = None
    if use_study_split and split is not None:
        try:
            num_pages = len(pages)
        except TypeError:
            raise TypeError(
                "use_study_split needs the number of pages: pass a Dataset or a list, not a stream"
            ) from None
        wanted = study_split(num_pages)[split]

    def pairs():
        for page, (page_split, flags) in enumerate(_sample_flags(pages)):
            if split is not None:
                if wanted is not None:
                    if page not in wanted:
                        continue
                elif page_split != split:
                    continue
            yield from ((page, section) for section, flag in enumerate(flags) if flag)

    return SampleList.from_pairs(pairs())


def page_url_index(pages) -> dict[str, int]:
    """Map each `page_url` to its row index, for O(1) page lookup (never scan the table per item).

    Raises:
        ValueError: two rows share a URL.
    """
    index: dict[str, int] = {}
    for row, (url,) in enumerate(_iter_columns(pages, ("page_url",))):
        if url in index:
            raise ValueError(f"page_url {url!r} appears in rows {index[url]} and {row}")
        index[url] = row
    return index


def split_counts(pages, use_study_split: bool = False) -> dict[str, dict[str, int]]:
    """Pages, sections and summarization samples per split (and `"all"`).

    Returns:
        `dict[str, dict[str, int]]`: `{split: {"pages": .., "sections": .., "summarization_samples": ..}}`.
    """
    study = None
    if use_study_split:
        ranges = study_split(len(pages))
        study = lambda i: next((s for s, r in ranges.items() if i in r), None)  # noqa: E731
    counts = {s: {"pages": 0, "sections": 0, "summarization_samples": 0} for s in SPLITS + ("all",)}
    columns = ("split", "is_section_summarization_sample")
    for i, (page_split, flags) in enumerate(_iter_columns(pages, columns)):
        page_split = study(i) if study else page_split
        for key in ("all", page_split):
            if key is None:
                continue
            c = counts.setdefault(key, {"pages": 0, "sections": 0, "summarization_samples": 0})
            c["pages"] += 1
            c["sections"] += len(flags)
            c["summarization_samples"] += sum(1 for f in flags if f)
    return counts


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def recover_output(output_dir: PathLike) -> None:
    """Finish or undo what a killed `main` left beside `output_dir` (run at every start; `recover_folder`)."""
    recover_folder(output_dir)


def _check_replaceable(out: str) -> None:
    """Refuse to replace anything but an empty folder or a data set saved by `save_to_disk`."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise FileExistsError(f"{out}: output exists and is not a folder; expected a data set folder or a new path")
    entries = os.listdir(out)
    if entries and not {"dataset_info.json", "state.json", "dataset_dict.json"} & set(entries):
        raise FileExistsError(
            f"{out}: output folder exists and is not a data set saved by this command (no dataset_info.json "
            f"or state.json); refusing to replace it: give a new or empty OUTPUT_DIR"
        )


def _uncompressed_size(path: str) -> int:
    """Bytes of a TFRecord file once decompressed (a gzip file's size field; other files as they are)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b" or size < 18:
            return size
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little") or size  # modulo 2**32: files under 4 GiB


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m processing.data.wikiweb2m INPUT_GLOB OUTPUT_DIR [--num_proc N] [--skip_corrupt]`.

    Reads the TFRecord files into an Arrow dataset (one row per page), saves it with
    `save_to_disk`, and prints counts. `datasets` shows tqdm progress bars while generating and
    saving.

    Everything is written in a staging folder beside `OUTPUT_DIR` (`.NAME.tmp-<pid>-*`: the
    same file system, so renaming is atomic), which is renamed into place only once complete; a
    previous output is removed only after that. A kill at any point leaves the previous complete
    output or the new one, never a mix; the next start removes what the killed run left. Two runs
    writing the same `OUTPUT_DIR` at once are not supported.
    """
    from .cli import add_debug_argument

    parser = argparse.ArgumentParser(
        prog="python -m processing.data.wikiweb2m",
        description="Convert WikiWeb2M TFRecord files into an Arrow dataset (one row per page).",
    )
    parser.add_argument("input_glob", help="TFRecord file(s) or glob pattern, e.g. 'wikiweb2m-*.tfrecord*'")
    parser.add_argument("output_dir", help="where to save the dataset (datasets.load_from_disk reads it); "
                                           "a previous data set there is replaced only once the new one is complete")
    parser.add_argument("--num_proc", type=int, default=None,
                        help="processes reading in parallel (one file per task, so at most the number of files)")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="skip damaged records (bad framing, CRC or protobuf) instead of failing; they are counted")
    parser.add_argument("--errors", default="strict", choices=TEXT_ERRORS,
                        help="text that is not valid UTF-8: 'strict' fails naming file, record, page and field; "
                             "'replace' reads it with U+FFFD")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.num_proc is not None and args.num_proc < 1:
        raise ValueError(f"--num_proc must be >= 1, got {args.num_proc}")

    out = os.path.abspath(args.output_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    recover_output(out)
    _check_replaceable(out)
    # The datasets cache, the read statistics and the new data set all live in the staging folder,
    # so nothing is left in ~/.cache or /tmp, and the generator always runs (its counts are real).
    work = staging_folder(out)
    try:
        stats_dir = os.path.join(work, "stats")
        os.makedirs(stats_dir)
        cache_dir = os.path.join(work, "cache")
        staged = os.path.join(work, "data")
        try:
            ds = _build(args.input_glob, args.num_proc, False, cache_dir, args.skip_corrupt, args.errors, stats_dir)
            ds.save_to_disk(staged)
        except Exception as err:
            if not is_disk_full(err):
                raise
            # The Arrow cache and the saved copy each hold about the uncompressed input.
            needed = 2 * sum(_uncompressed_size(path) for path in resolve_paths(args.input_glob))
            kept = f"the previous data set {out} is kept" if os.path.exists(out) else "nothing was kept"
            raise DiskFullError(parent, needed, f"{kept}; free space or give another OUTPUT_DIR") from err
        stats = ReadStats()
        for name in os.listdir(stats_dir):
            with open(os.path.join(stats_dir, name)) as f:
                stats.update(ReadStats(**json.load(f)))
        counts = split_counts(ds)
        replace_folder(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"saved {len(ds)} pages to {args.output_dir}")
    print(f"files: {stats.files}  pages: {counts['all']['pages']}  sections: {counts['all']['sections']}  "
          f"skipped corrupt records: {stats.corrupt_records}")
    for split, c in counts.items():
        if split != "all":
            print(f"  {split:>5}: {c['pages']} pages, {c['sections']} sections, "
                  f"{c['summarization_samples']} summarization samples")
    print(f"  total: {counts['all']['summarization_samples']} summarization samples")
    return 0


__all__ = [
    "CONTEXT_FEATURES",
    "IMAGE_BYTES_FEATURES",
    "IMAGE_INT_FEATURES",
    "PAGE_COLUMNS",
    "REQUIRED_FEATURES",
    "SEQUENCE_FEATURES",
    "SPLITS",
    "STUDY_SPLIT_PAGES",
    "EmptyInputError",
    "ReadStats",
    "RecordDecodeError",
    "TEXT_ERRORS",
    "WikiWeb2MFormatError",
    "ingestion_throughput",
    "iter_pages",
    "load_pages",
    "main",
    "page_features",
    "page_to_example",
    "page_url_index",
    "parse_page",
    "recover_output",
    "resolve_paths",
    "serialize_page",
    "split_counts",
    "study_split",
    "summarization_samples",
]

if __name__ == "__main__":
    # Run the imported module's `main`, not this `__main__` copy's, so the errors raised are the
    # classes `processing.data.cli` knows.
    from processing.data.cli import run_command
    from processing.data.wikiweb2m import main as _main

    sys.exit(run_command(_main))
