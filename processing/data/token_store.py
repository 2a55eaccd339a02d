"""Build a token store (`processing.token_cache.MMGLTokenCache`): collect every unique text a data set's examples
will tokenise, block by block of pages, tokenise each once (optionally in forked processes) through the processor's
public `MMGLProcessor.encode_texts`, and save the store beside the run (`prepare_token_cache`, a training run's
startup). Build-time only: a Hub folder reads stores, it never builds them.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from processing.data.sample_index import PageGraphIndex
from processing.mapped_pages import ReleaseEvery, release_mapped_files, track_table
from processing.page_graph import PageGraph
from processing.token_cache import MMGLTokenCache

_FORK_ENCODERS = None  # kind -> the encoder a forked tokenisation worker calls (set just before the fork)


def _encode_in_worker(task):
    kind, chunk = task
    return [np.asarray(ids) for ids in _FORK_ENCODERS[kind](chunk)]


@contextlib.contextmanager
def _chunk_mapper(encoders: Mapping[str, Any], num_proc: int | None):
    """A function `(kind, chunks) -> each chunk's ids, in order`: in this process, or in `num_proc` forked
    processes started once for the whole build (the tokenizers are inherited, not pickled)."""
    global _FORK_ENCODERS
    import multiprocessing

    if not num_proc or num_proc <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield lambda kind, chunks: map(encoders[kind], chunks)
        return
    _FORK_ENCODERS = encoders
    try:
        with multiprocessing.get_context("fork").Pool(num_proc) as pool:
            yield lambda kind, chunks: pool.imap(_encode_in_worker, [(kind, chunk) for chunk in chunks])
    finally:
        _FORK_ENCODERS = None


def build_token_cache(
    processor,
    pages: Any,
    neighbor_input_ids: bool | None = None,
    batch_size: int = 2048,
    show_progress: bool = True,
    fingerprint: str | None = None,
    num_proc: int | None = None,
    block_pages: int = 4096,
) -> MMGLTokenCache:
    """Tokenise every unique text of `pages` once (batched) with `processor`'s tokenizers and install the ids on it
    (`MMGLProcessor.set_token_cache`): its examples then slice stored ids instead of tokenising.

    Collects, per page: the target text and summary of every section with a summary, and (for
    SA-TE) every node text that can be a neighbour; with `neighbor_input_ids` also the open_clip
    ids of the node texts. Texts met later (e.g. summary-scrubbed ones) are added on first use.

    Args:
        processor (`MMGLProcessor`): its tokenizers, prompts and design decide what is collected.
        pages: a `PageGraphIndex` (its pages with samples), or an iterable of page graphs, WikiWeb2M
            rows or page dicts.
        neighbor_input_ids (`bool`, *optional*): also cache open_clip ids for raw text neighbours;
            defaults to whether this configuration has text slots and no embedding cache is used (pass
            `False` when an embedding cache will provide text embeddings: they are then never read).
        batch_size (`int`, *optional*, defaults to 2048): texts per tokenizer call.
        show_progress (`bool`, *optional*, defaults to `True`): tqdm progress bars.
        fingerprint (`str`, *optional*): a fingerprint of the page table (e.g. the Arrow data set's
            `_fingerprint`); when the store already covers it for this configuration, nothing is
            collected (a restart does no work per page), and after building it is recorded as covered.
        num_proc (`int`, *optional*): tokenise in this many processes (fork); default one.
        block_pages (`int`, *optional*, defaults to 4096): pages whose texts are collected and tokenised at a
            time (memory holds one block's texts; `prepare_token_cache` spills the ids to disk).

    Returns:
        `MMGLTokenCache`, also installed on the processor (it extends the current one if any: after
        `load_token_cache`, only texts the file lacks are tokenised; keep them with
        `processor.token_cache.save(path)`).
    """
    from tqdm.auto import tqdm

    if neighbor_input_ids is None:
        neighbor_input_ids = processor.has_text_slots
    cache = processor.token_cache
    if cache is None:
        cache = MMGLTokenCache(processor.tokenizer_identity())
    processor.set_token_cache(cache)
    raw_neighbor_texts = processor.neighbor_encoding == "sa_te" and processor.context != "section_only"
    covered = None
    if fingerprint is not None:
        # "clip=": the record's spelling from before the kind was named "neighbor_text" (stores already written
        # stay covered).
        covered = (
            f"{fingerprint}|{processor.context}|{processor.neighbor_encoding}|{processor.context_prompt}|"
            f"{processor.section_prompt}|{processor.summary_prompt}|clip={bool(neighbor_input_ids)}"
        )
        if covered in cache.covers:
            return cache
    graphs: Iterable[PageGraph]
    if isinstance(pages, PageGraphIndex):
        graphs = pages.graphs()
    else:
        track_table(pages)  # a memory-mapped Arrow table: its pages are given back every 256 rows
        graphs = (PageGraph.coerce(page) for page in pages)
    release = ReleaseEvery(256)
    # Block by block of pages: the texts of one block are in memory at a time, and their ids go to the store
    # (to its spill files on disk when `spill_to` was called), so memory does not grow with the table.
    wanted: dict[str, dict[str, None]] = {"lm": {}, "neighbor_text": {}}

    def tokenize_block(map_chunks) -> None:
        for kind, texts in wanted.items():
            texts = cache.missing(kind, texts)  # texts already stored are not tokenised again
            chunks = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]
            for chunk, ids in zip(chunks, map_chunks(kind, chunks)):
                cache.add(kind, chunk, ids)
            wanted[kind] = {}

    encoders = {kind: functools.partial(processor.encode_texts, kind) for kind in ("lm", "neighbor_text")}
    with _chunk_mapper(encoders, num_proc) as map_chunks:
        in_block = 0
        for graph in tqdm(graphs, desc="token store", unit="page", disable=not show_progress):
            for s in range(graph.num_sections):
                if graph.summaries[s]:
                    wanted["lm"][processor.target_text(graph, s)] = None
                    wanted["lm"][graph.summaries[s]] = None
            for node in graph.nodes:
                if node.text:
                    if raw_neighbor_texts:
                        wanted["lm"][node.text] = None
                    if neighbor_input_ids:
                        wanted["neighbor_text"][node.text] = None
            if release.due():
                release_mapped_files()
            in_block += 1
            if in_block == block_pages:
                tokenize_block(map_chunks)
                in_block = 0
        tokenize_block(map_chunks)
    if covered is not None:
        cache.mark_covered(covered)
    return cache


def table_fingerprint(pages) -> str | None:
    """A fingerprint of a page table that changes when its rows do: the `_fingerprint` of a `datasets`
    Arrow table (set from its files and transforms), `None` for other tables (then nothing is skipped)."""
    fingerprint = getattr(pages, "_fingerprint", None)
    return f"{type(pages).__name__}:{fingerprint}:{len(pages)}" if fingerprint else None


def prepare_token_cache(
    processor,
    pages,
    path: str | os.PathLike | None = None,
    neighbor_input_ids: bool | None = None,
    save: bool = True,
    num_proc: int | None = None,
    show_progress: bool = True,
    block_pages: int = 4096,
) -> MMGLTokenCache:
    """Open the store at `path` (when it exists), tokenise what `pages` adds, save it back, and install it
    on `processor`: the startup of a training run. When the store already covers `pages`' table
    (`table_fingerprint`) for this configuration, no page is read: a restart costs O(1).

    Args:
        processor (`MMGLProcessor`): the processor (its tokenizers and configuration).
        pages: the page table (`datasets.Dataset` or an iterable of rows).
        path (`str`, *optional*): the store's file; none keeps the ids in memory only.
        neighbor_input_ids (`bool`, *optional*): also open_clip ids (raw text neighbours without an embedding
            cache); see `build_token_cache`.
        save (`bool`, *optional*, defaults to `True`): write the store back when something was added (only the
            main process should).
        num_proc (`int`, *optional*): tokenisation processes.
        block_pages (`int`, *optional*, defaults to 4096): pages tokenised at a time (`build_token_cache`).
    """
    if path and os.path.exists(path):
        processor.load_token_cache(path)
    elif processor.token_cache is None:
        processor.set_token_cache(MMGLTokenCache(processor.tokenizer_identity()))
    cache = processor.token_cache
    if path and save:  # the ids of new texts wait on disk beside the store, not in memory, until it is saved
        cache.spill_to(os.path.dirname(os.path.abspath(path)), {"lm": len(processor.tokenizer)})
    try:
        build_token_cache(
            processor, pages, neighbor_input_ids=neighbor_input_ids, show_progress=show_progress,
            fingerprint=table_fingerprint(pages), num_proc=num_proc, block_pages=block_pages,
        )
        if path and save and cache.dirty:
            cache.save(path)
    finally:
        cache.discard_spills()  # after a failure: the file on disk is as it was
    return cache


__all__ = ["build_token_cache", "prepare_token_cache", "table_fingerprint"]
