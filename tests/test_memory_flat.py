"""Issue 24: the first start's per-page state is compact or memory-mapped and given back, and equals what the
in-memory paths give (sample lists, released maps of real Arrow pages, the builder's met keys, the BPE memo)."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from processing.data.build_embedding_cache import _DigestSet
from processing.data.page_table import open_page_table
from processing.data.wikiweb2m import iter_pages, summarization_samples
from processing.mapped_pages import ReleaseEvery, release_arrays, release_mapped_files, table_maps, track, track_table
from processing.data.sample_index import PageGraphIndex
from processing.data.sample_list import SampleList
from processing.page_graph import PageGraph


def mapped_kib(path) -> int:
    """Resident KiB of this process's maps of `path` (from `/proc/self/smaps`)."""
    path, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                inside = len(head) >= 6 and head[5] == path
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.fixture(scope="module")
def arrow_pages(realwiki_dir, tmp_path_factory):
    """The real pages converted to an Arrow folder (memory-mapped when opened), as a user converts them."""
    out = tmp_path_factory.mktemp("arrow") / "data"
    subprocess.run([sys.executable, "-m", "processing.data.wikiweb2m", str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz"),
                    str(out)], check=True, capture_output=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return open_page_table(str(out))


def test_sample_list_is_two_arrays_and_equals_the_tuples(realwiki_dir, arrow_pages):
    rows = list(iter_pages(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz")))
    for split in ("train", "val", "test", None):
        expected = [(p, s) for p, row in enumerate(rows) if split in (None, row["split"])
                    for s, flag in enumerate(row["is_section_summarization_sample"]) if flag]
        for pages in (rows, arrow_pages):
            samples = summarization_samples(pages, split=split)
            assert isinstance(samples, SampleList) and samples == expected and list(samples) == expected
            # no Python object per sample: two integer arrays
            assert samples.pages.dtype == np.int64 and samples.sections.dtype == np.int32
            assert samples.pages.nbytes + samples.sections.nbytes == 12 * len(expected)
            assert samples[:3] == expected[:3] and all(type(v) is int for v in samples[0])
    index = PageGraphIndex(arrow_pages, samples=summarization_samples(arrow_pages))
    reference = PageGraphIndex(rows, samples=[tuple(pair) for pair in summarization_samples(rows)])
    assert len(index) == len(reference) > 50
    for i, (page, section) in enumerate(reference.samples):
        assert index.position(page, section) == i and (page, section) in index
        graph, s = index[i]
        assert s == section and graph.page_id == reference[i][0].page_id
    assert (10**6, 0) not in index and (0, 10**4) not in index
    with pytest.raises(KeyError, match="not a sample"):
        index.position(10**6, 0)
    assert index.page_indices() == sorted({p for p, _ in reference.samples})


def test_sample_list_refuses_a_pair_listed_twice():
    with pytest.raises(ValueError, match=r"sample \(page 3, section 1\) listed twice \(positions 1, 3\)"):
        PageGraphIndex([], samples=[(2, 0), (3, 1), (5, 2), (3, 1)])
    assert SampleList.from_pairs([]) == [] and SampleList.from_pairs([]).position(0, 0) == -1


def test_reading_every_arrow_row_keeps_a_bounded_part_of_the_table_resident(arrow_pages):
    path = arrow_pages.cache_files[0]["filename"]
    size_kib = os.path.getsize(path) // 1024
    assert size_kib > 400  # the 42 real pages: enough 4-KiB pages to see the difference
    release_mapped_files([path])
    for i in range(len(arrow_pages)):  # every row, as a first start does, without giving pages back
        PageGraph.coerce(arrow_pages[i])
    kept = mapped_kib(path)
    assert kept > size_kib // 2, (kept, size_kib)
    # What `PageGraphIndex` does: the table's map is released every so many rows, so that at most one block of
    # rows stays resident; the rows read afterwards are the same.
    index = PageGraphIndex(arrow_pages, graph_cache_size=0)
    index._release = ReleaseEvery(4)
    graphs = [graph.page_id for graph in index.graphs()]
    assert release_mapped_files() >= 1 and mapped_kib(path) < size_kib // 8
    assert graphs == [PageGraph.coerce(arrow_pages[p]).page_id for p in index.page_indices()]
    # Random rows, as DataLoader workers read them: the table's maps are given back after each row.
    samples = PageGraphIndex(arrow_pages)
    for i in range(0, len(samples), 3):
        graph, section = samples[i]
        assert mapped_kib(path) == 0
        assert graph.page_id == PageGraph.coerce(arrow_pages[samples.sample(i)[0]]).page_id
        samples._graphs.clear()  # each sample reads its row
    assert samples._maps[1] and all(start < end for start, end in samples._maps[1])
    assert PageGraphIndex(list(arrow_pages))[0] and table_maps(list(arrow_pages)) == []


def test_release_leaves_writable_and_unknown_maps_alone(tmp_path):
    path = tmp_path / "store.bin"
    np.arange(1 << 18, dtype=np.int64).tofile(path)
    reader = np.memmap(path, dtype=np.int64, mode="r")
    writer = np.memmap(path, dtype=np.int64, mode="c")  # private copy-on-write: its changes live in this process
    writer[:10] = -1
    track(path)
    assert int(reader.sum()) == (1 << 18) * ((1 << 18) - 1) // 2  # 2 MiB read: resident
    assert release_mapped_files([tmp_path / "other.bin"]) == 0
    before = mapped_kib(path)
    assert before >= 2048
    assert release_mapped_files() >= 1
    assert mapped_kib(path) < before
    assert (writer[:10] == -1).all(), "a writable map must keep its changes"
    assert release_arrays([writer]) == 0 and (writer[:10] == -1).all() and release_arrays([reader]) == 1
    assert int(reader.sum()) == (1 << 18) * ((1 << 18) - 1) // 2  # read again from the page cache
    track_table([])  # a list has no files: nothing tracked, no error


def test_digest_set_equals_a_python_set():
    rng = np.random.default_rng(0)
    keys = [rng.bytes(32) for _ in range(3000)] + [b"not-hex-%d" % i for i in range(500)]
    seen, reference = _DigestSet(min_pending=64), set()
    for key in keys + keys[:700]:
        assert (key in seen) == (key in reference)
        seen.add(key)
        reference.add(key)
    assert len(seen) == len(reference) == 3500
    assert seen._sorted.nbytes == 16 * len(seen._sorted) and len(seen._pending) < len(seen) // 4
    assert all(k in seen for k in keys) and not any(hashlib.sha256(k).digest() in seen for k in keys[:200])


def test_bpe_memo_stays_bounded_and_ids_equal_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from processing.text_neighbor_tokens import _bound_bpe_memo, clip_text_ids

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    texts = [f"word{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676)} and more" for i in range(3000)]
    ids = clip_text_ids(tokenizer, texts)
    assert len(tokenizer.cache) > 2000  # one entry per distinct word: the memo open_clip keeps forever
    _bound_bpe_memo(tokenizer, size=100)
    assert set(tokenizer.cache) == {"<start_of_text>", "<end_of_text>"}
    assert (clip_text_ids(tokenizer, texts) == ids).all() and (ids == tokenizer(texts)).all()


def test_token_store_lookups_keep_a_bounded_part_of_the_file_resident(tmp_path):
    from processing.token_cache import MMGLTokenCache

    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(20000)]
    ids = [rng.integers(0, 50000, size=int(rng.integers(50, 300))) for _ in texts]
    cache = MMGLTokenCache({"lm": "test"})
    cache.add("lm", texts, ids)
    path = tmp_path / "tokens.bin"
    cache.save(path)
    del cache  # it maps the file it saved too
    size_kib = os.path.getsize(path) // 1024
    assert size_kib > 6000
    store = MMGLTokenCache.load(path)
    for start in range(0, len(texts), 16):  # as examples ask: a few texts at a time, all over the file
        got = store.lookup("lm", texts[start : start + 16])
        assert all(np.array_equal(a, b) for a, b in zip(got, ids[start : start + 16]))
    # The ids (nearly all of the file) are read, not mapped: what the lookups left resident is a part of the sorted
    # keys and offsets, given back every 512 texts.
    assert mapped_kib(path) < size_kib // 8, (mapped_kib(path), size_kib)
    store._release_maps()
    assert mapped_kib(path) == 0
