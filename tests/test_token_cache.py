"""The memory-mapped token store (`processing.token_cache.MMGLTokenCache`): file round trip, incremental
extension, refusal of foreign / damaged files naming them, equality with plain tokenisation on real pages,
and sharing between DataLoader workers."""
import os

import numpy as np
import pytest
import torch

from processing.data.bpe_tokenizer import train_bpe_tokenizer
from processing.page_graph import PageGraph
from processing.token_cache import MMGLTokenCache
from tests.test_processor import image_dir, image_processor, known_row, make_processor, tokenizer  # noqa: F401
from processing.data.token_store import build_token_cache


def _all_texts(processor, graph):
    """Every text the store is asked about for ``graph``: (lm texts, clip texts)."""
    lm = [graph.summaries[s] for s in range(graph.num_sections) if graph.summaries[s]]
    lm += [processor.target_text(graph, s) for s in range(graph.num_sections) if graph.summaries[s]]
    clip = [node.text for node in graph.nodes if node.text]
    return list(dict.fromkeys(lm)), list(dict.fromkeys(clip))


def test_token_cache_file_round_trip(tokenizer, image_processor, image_dir, tmp_path, monkeypatch):
    processor = make_processor(tokenizer, image_processor, "all", "sa_e")
    cache = build_token_cache(processor, [known_row()], neighbor_input_ids=True, show_progress=False)
    graph = PageGraph.from_wikiweb2m(known_row())
    lm_texts, clip_texts = _all_texts(processor, graph)
    # Examples first: summary-scrubbed neighbour texts join the cache on first use, and are saved too.
    expected = {s: processor.build_example(graph, s, image_dir=image_dir) for s in graph.sample_sections()}
    path = tmp_path / "tokens.bin"
    cache.save(path)
    assert os.listdir(tmp_path) == ["tokens.bin"]  # no temporary file left behind
    assert not path.read_bytes().startswith(b"\x80")  # no pickle
    loaded = MMGLTokenCache.load(path, identity=cache.identity)
    assert len(loaded) == len(cache) and loaded.identity == cache.identity and loaded.path == str(path)
    assert all(isinstance(t.ids, np.memmap) for t in loaded._stored.values() if len(t))  # mapped, not read
    # Every text comes back with its ids, value by value; nothing is tokenised again.
    assert loaded.missing("lm", lm_texts) == [] and loaded.missing("clip", clip_texts) == []
    for text, ids in zip(lm_texts, processor._encode_lm(lm_texts)):
        got = loaded.get("lm", text)
        assert got.dtype == np.int64 and np.array_equal(got, ids), text
    for text, ids in zip(clip_texts, processor._encode_clip(clip_texts)):
        assert torch.equal(loaded.get("clip", text), ids), text
    assert loaded.missing("lm", ["never seen"]) == ["never seen"] and loaded.get("lm", "never seen") is None
    fresh = make_processor(tokenizer, image_processor, "all", "sa_e")
    assert fresh.load_token_cache(path) is fresh.token_cache
    fresh._prompt_ids()  # the prompt words are tokenised once per processor, not cached in the file
    monkeypatch.setattr(fresh, "_encode_lm", lambda texts: pytest.fail(f"tokenised again: {texts}"))
    monkeypatch.setattr(fresh, "_encode_clip", lambda texts: pytest.fail(f"tokenised again: {texts}"))
    for section, a in expected.items():
        b = fresh.build_example(graph, section, image_dir=image_dir)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Texts added later are saved too (merged with the file's), and a saved cache extends a file.
    monkeypatch.undo()
    fresh.token_cache.add("lm", ["extra text"], fresh._encode_lm(["extra text"]))
    fresh.token_cache.save(path)
    again = MMGLTokenCache.load(path)
    assert len(again) == len(cache) + 1
    assert again.missing("lm", ["extra text"]) == []
    assert np.array_equal(again.get("lm", "extra text"), fresh._encode_lm(["extra text"])[0])


def test_token_cache_incremental_build_and_covered_table(tokenizer, image_processor, tmp_path, monkeypatch):
    """Building onto a loaded store tokenises only the texts it lacks; a covered table is not even collected."""
    processor = make_processor(tokenizer, image_processor, "all", "sa_te")
    first = known_row()
    build_token_cache(processor, [first], show_progress=False, fingerprint="table-a")
    path = tmp_path / "tokens.bin"
    processor.token_cache.save(path)
    size = len(processor.token_cache)
    second = known_row()
    second["page_title"] = "Beta"
    second["section_text"] = [text + " (copy 2)" for text in second["section_text"]]
    fresh = make_processor(tokenizer, image_processor, "all", "sa_te")
    fresh.load_token_cache(path)
    seen = []
    original = fresh._encode_lm
    monkeypatch.setattr(fresh, "_encode_lm", lambda texts: seen.extend(texts) or original(texts))
    build_token_cache(fresh, [first, second], show_progress=False, fingerprint="table-b")
    assert seen and all("(copy 2)" in text for text in seen)  # only the new page's new texts
    assert len(fresh.token_cache) == size + len(seen)
    fresh.token_cache.save(path)
    # A restart on a covered table collects nothing at all (no page is even read).
    again = make_processor(tokenizer, image_processor, "all", "sa_te")
    again.load_token_cache(path)

    def no_pages():
        pytest.fail("pages were read although the store covers the table")
        yield

    assert build_token_cache(again, no_pages(), show_progress=False, fingerprint="table-b") is again.token_cache
    # Another configuration of the same table is not covered.
    other = make_processor(tokenizer, image_processor, "section_only", "sa_te")
    other.load_token_cache(path)
    with pytest.raises(pytest.fail.Exception):
        build_token_cache(other, no_pages(), show_progress=False, fingerprint="table-b")


def test_token_cache_parallel_build_equals_serial(tokenizer, image_processor):
    rows = []
    for copy in range(3):
        row = known_row()
        row["section_text"] = [f"{text} copy {copy}" for text in row["section_text"]]
        rows.append(row)
    serial = make_processor(tokenizer, image_processor, "all", "sa_te")
    parallel = make_processor(tokenizer, image_processor, "all", "sa_te")
    a = build_token_cache(serial, rows, neighbor_input_ids=True, show_progress=False, batch_size=4)
    b = build_token_cache(parallel, rows, neighbor_input_ids=True, show_progress=False, batch_size=4, num_proc=2)
    assert len(a) == len(b) > 0
    for row in rows:
        graph = PageGraph.from_wikiweb2m(row)
        lm_texts, clip_texts = _all_texts(serial, graph)
        for kind, texts in (("lm", lm_texts), ("clip", clip_texts)):
            for x, y in zip(a.lookup(kind, texts), b.lookup(kind, texts)):
                assert x is not None and np.array_equal(np.asarray(x), np.asarray(y))


def test_token_cache_file_of_other_tokenizers_is_refused(tokenizer, image_processor, tmp_path):
    processor = make_processor(tokenizer, image_processor, "all", "sa_te")
    path = tmp_path / "tokens.bin"
    build_token_cache(processor, [known_row()], show_progress=False).save(path)
    other = make_processor(train_bpe_tokenizer(["something else entirely"] * 5, 300), image_processor)
    with pytest.raises(ValueError, match=r"tokens\.bin.*was built with tokenizers"):
        other.load_token_cache(path)
    assert other.token_cache is None
    with pytest.raises(ValueError, match=r"tokens\.bin.*was built with tokenizers"):
        other.set_token_cache(MMGLTokenCache.load(path))
    # A different open_clip context length changes the neighbour ids: refused as well.
    with pytest.raises(ValueError, match="was built with tokenizers"):
        make_processor(tokenizer, image_processor, neighbor_context_length=8).load_token_cache(path)
    # The fingerprint ignores the truncation / padding state that tokenizer calls leave behind.
    before = processor.tokenizer_identity()
    tokenizer("warm up", max_length=4, truncation=True, padding="max_length")
    assert make_processor(tokenizer, image_processor, "all", "sa_te").tokenizer_identity() == before


def test_token_cache_damaged_file_is_detected(tokenizer, image_processor, tmp_path, monkeypatch):
    processor = make_processor(tokenizer, image_processor, "all", "sa_te")
    cache = build_token_cache(processor, [known_row()], show_progress=False)
    path = tmp_path / "tokens.bin"
    cache.save(path)
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 1, 10, 0):  # truncated anywhere
        (tmp_path / "cut.bin").write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"cut\.bin.*cannot be read"):
            MMGLTokenCache.load(tmp_path / "cut.bin")
    (tmp_path / "old.pkl").write_bytes(b"\x80\x04\x95" + b"pickled" * 10)  # e.g. the old pickle format
    with pytest.raises(ValueError, match=r"old\.pkl.*cannot be read"):
        MMGLTokenCache.load(tmp_path / "old.pkl")
    np.savez(tmp_path / "v1.npz", header=np.zeros(3, np.uint8))  # the previous .npz format
    with pytest.raises(ValueError, match=r"v1\.npz.*cannot be read"):
        MMGLTokenCache.load(tmp_path / "v1.npz")
    with pytest.raises(FileNotFoundError):
        MMGLTokenCache.load(tmp_path / "absent.bin")
    # A crash while writing leaves the previous file as it was, and no temporary file.
    cache.add("lm", ["one more"], processor._encode_lm(["one more"]))

    def crash(handle, *args, **kwargs):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("processing.token_cache._write_store", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.save(path)
    assert path.read_bytes() == data and sorted(os.listdir(tmp_path)) == ["cut.bin", "old.pkl", "tokens.bin", "v1.npz"]
    monkeypatch.undo()
    assert len(MMGLTokenCache.load(path)) == len(cache) - 1


def test_token_cache_equals_plain_tokenisation_on_real_pages(realwiki_dir, tokenizer, image_processor, tmp_path):
    """Every text of the real pages: the store's ids equal the tokenizer's own call (`tokenizer(...)`; the
    store is built through the Rust tokenizer's offset-free batch call)."""
    from processing.data.wikiweb2m import iter_pages

    pages = [PageGraph.coerce(row) for row in iter_pages(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz"))]
    processor = make_processor(tokenizer, image_processor, "all", "sa_te")
    build_token_cache(processor, pages, neighbor_input_ids=True, show_progress=False)
    path = tmp_path / "real.bin"
    processor.token_cache.save(path)
    loaded = MMGLTokenCache.load(path, identity=processor.tokenizer_identity())
    for graph in pages:
        lm_texts, clip_texts = _all_texts(processor, graph)
        lm_texts += [node.text for node in graph.nodes if node.text]
        plain = tokenizer([" " + text for text in lm_texts], add_special_tokens=False, split_special_tokens=True)
        for text, ids in zip(lm_texts, plain["input_ids"]):
            assert loaded.get("lm", text).tolist() == ids, (graph.page_id, text[:40])
        for text, ids in zip(clip_texts, processor.clip_tokenizer(clip_texts)):  # open_clip's own call
            assert torch.equal(loaded.get("clip", text), ids), (graph.page_id, text[:40])


def test_lm_ids_equal_the_tokenizer_call_for_special_words_and_any_backend_setting(tokenizer, image_processor):
    """Literal special tokens in page text stay plain text on the fast path, and a tokenizer whose backend
    truncates or pads (a saved setting) still gives every id, as `tokenizer(...)` without either does."""
    processor = make_processor(tokenizer, image_processor, "all", "sa_te")
    texts = ["a <neighbor> in the text", "ends with </s>", "plain words " * 40, ""]
    expected = tokenizer([" " + t for t in texts], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert [ids.tolist() for ids in processor._encode_lm(texts)] == expected
    assert processor.neighbor_token_id not in expected[0]  # the literal is split, not the placeholder
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(8)
    backend.enable_padding(length=256)
    try:
        assert [ids.tolist() for ids in processor._encode_lm(texts)] == expected
    finally:
        backend.no_truncation()
        backend.no_padding()


def test_clip_ids_stop_early_but_equal_open_clips_call_at_every_length(tokenizer, image_processor):
    """`clip_text_ids` encodes words only until the context is full: the same ids as open_clip's tokenizer for
    texts shorter than, exactly at, and longer than the context (HTML entities and mojibake cleaned as a whole)."""
    from processing.text_neighbor_tokens import clip_text_ids

    clip = make_processor(tokenizer, image_processor, "all", "sa_e").clip_tokenizer
    words = [f"w{i} caf\u00c3\u00a9 &amp; it's" if i % 7 == 0 else f"word{i}," for i in range(300)]
    texts = ["", "one", " ".join(words)] + [" ".join(words[:n]) for n in range(1, 30)] + ["x " * n for n in range(40)]
    # Lines: the cleaning sees prefixes ending at line breaks. Mojibake and entities at line ends, an early "<" (ftfy
    # stops unescaping HTML for the lines after it), a final sigma before a break, CRLF, blank and very long lines.
    lines = ["caf\u00c3\u00a9 au lait &amp;", "<b>bold</b> &lt;tag&gt; then &amp;amp;", "ΟΔΟΣ", "a\r", "", "y " * 300]
    texts += ["\n".join(lines[i:] + lines[:i]) * repeat for i in range(len(lines)) for repeat in (1, 3)]
    texts += ["\n".join(f"line {i} with words &amp; more" for i in range(n)) for n in (1, 5, 40)]
    # A "<" late in a line stops ftfy's unescaping for the whole line: cut inside the line, the entity would be
    # unescaped once more than in the whole text.
    texts += ["&amp;amp;amp; word " + "w " * 100 + "<i>x</i>\nnext line\n" * 3]
    expected = clip(texts)
    lengths = (expected != 0).sum(1)
    assert lengths.min() <= 3 and (lengths == clip.context_length).sum() > 5  # short, and cut at the context
    assert (lengths[3:] == clip.context_length - 1).any()  # one id short of the context: not cut
    assert torch.equal(clip_text_ids(clip, texts), expected)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1 << 20])
def test_merge_streams_a_sorted_table_without_repeated_keys(chunk_tokens):
    """`_merge` against a dict: the stored entries win over new ones, the first of repeated new keys wins, every
    id is in place whatever the chunk size, and the id type is the narrowest that holds them."""
    from processing.token_cache import _IdTable, _merge

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 255, size=(60, 16), dtype=np.uint8).view("V16").reshape(-1))

    def table(entries, sort):
        items = sorted(entries, key=lambda e: e[0].tobytes()) if sort else entries
        lengths = [len(ids) for _, ids in items]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate([ids for _, ids in items]) if items else np.zeros(0, np.int64)
        return _IdTable(np.array([k for k, _ in items], dtype="V16"), offsets, flat)

    ids = [rng.integers(0, 60_000, size=int(rng.integers(0, 9))) for _ in keys]
    base_entries = [(keys[i], ids[i].astype(np.uint16)) for i in range(0, len(keys), 3)]
    new_entries = [(keys[i], ids[i].astype(np.int32)) for i in range(len(keys)) if i % 3]
    new_entries += [(keys[0], np.array([1, 2, 3], np.int32)), (keys[1], np.array([9], np.int32))]  # repeated
    merged = _merge(table(base_entries, True), table(new_entries, False), chunk_tokens=chunk_tokens)
    expected = {}
    for key, value in base_entries + new_entries:
        expected.setdefault(key.tobytes(), value)
    assert [k.tobytes() for k in merged["keys"]] == sorted(expected)
    flat = np.concatenate(list(merged["ids"].chunks()))
    assert flat.dtype == np.uint16 and len(flat) == merged["offsets"][-1]
    for i, key in enumerate(merged["keys"]):
        got = flat[merged["offsets"][i] : merged["offsets"][i + 1]]
        assert got.tolist() == expected[key.tobytes()].tolist()


def test_prepare_spills_to_disk_and_equals_the_tokenizer(realwiki_dir, tokenizer, image_processor, tmp_path,
                                                          monkeypatch):
    """The path `run_summarization` walks: `prepare_token_cache` on real pages, block by block (2 pages; each page
    twice, so texts repeat across blocks), ids spilled to disk (nothing held in memory), extending a saved store;
    every id equals the tokenizer's own call, no temporary file stays, and a crash keeps the old file."""
    from processing.data.wikiweb2m import iter_pages
    from processing.data.token_store import prepare_token_cache

    rows = list(iter_pages(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz")))
    path = tmp_path / "store" / "tokens.bin"
    first = make_processor(tokenizer, image_processor, "all", "sa_te")
    prepare_token_cache(first, rows[:5], path, show_progress=False, block_pages=2)
    before = path.read_bytes()
    processor = make_processor(tokenizer, image_processor, "all", "sa_te")
    held = []
    original_add = MMGLTokenCache.add

    def add(cache, kind, texts, ids):
        original_add(cache, kind, texts, ids)
        held.append(sum(len(p) for p in cache._pending.values()))
        assert cache._spills and os.path.getsize(cache._spills["lm"].path) > 0

    monkeypatch.setattr(MMGLTokenCache, "add", add)
    doubled = [row for row in rows for _ in range(2)]
    cache = prepare_token_cache(processor, doubled, path, show_progress=False, block_pages=2)
    monkeypatch.undo()
    assert held and max(held) == 0  # every id went to the spill file, none to memory
    assert os.listdir(path.parent) == ["tokens.bin"]  # spills removed, no temporary file
    loaded = MMGLTokenCache.load(path, identity=processor.tokenizer_identity())
    texts = []
    for row in rows:
        graph = PageGraph.coerce(row)
        texts += _all_texts(processor, graph)[0] + [node.text for node in graph.nodes if node.text]
    texts = list(dict.fromkeys(texts))
    assert len(loaded) == len(cache) == len(texts)  # each text once, though spilled twice
    plain = tokenizer([" " + text for text in texts], add_special_tokens=False, split_special_tokens=True)
    for text, ids in zip(texts, plain["input_ids"]):
        assert loaded.get("lm", text).tolist() == ids, text[:40]
    # A crash half way through a build leaves the saved file as it was and no temporary file.
    path.write_bytes(before)
    crashing = make_processor(tokenizer, image_processor, "all", "sa_te")
    calls = []

    def encode_then_crash(texts):  # the first block is tokenised and spilled, the second crashes
        calls.append(len(texts))
        if len(calls) > 1:
            raise RuntimeError("simulated crash")
        return first._encode_lm(texts)

    monkeypatch.setattr(crashing, "_encode_lm", encode_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_token_cache(crashing, doubled, path, show_progress=False, block_pages=2)
    assert len(calls) == 2 and path.read_bytes() == before and os.listdir(path.parent) == ["tokens.bin"]


class _Examples(torch.utils.data.Dataset):
    def __init__(self, processor, graph, image_dir):
        self.processor, self.graph, self.image_dir = processor, graph, image_dir
        self.sections = list(graph.sample_sections()) * 3

    def __len__(self):
        return len(self.sections)

    def __getitem__(self, i):
        return self.processor.build_example(self.graph, self.sections[i], image_dir=self.image_dir)


def _first(batch):
    return batch


def test_token_cache_shared_by_dataloader_workers(tokenizer, image_processor, image_dir, tmp_path):
    """Two workers reading the mapped store give the same batches as the main process; the store pickles as
    its path (a spawned worker maps the file rather than receiving a copy of the ids)."""
    import pickle

    processor = make_processor(tokenizer, image_processor, "all", "sa_te")
    path = tmp_path / "tokens.bin"
    build_token_cache(processor, [known_row()], show_progress=False)
    processor.token_cache.save(path)
    processor.load_token_cache(path)
    blob = pickle.dumps(processor.token_cache)
    assert len(blob) < 2048 and pickle.loads(blob).path == str(path)
    data = _Examples(processor, PageGraph.from_wikiweb2m(known_row()), image_dir)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=workers, collate_fn=_first)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) > 1
    for a, b in zip(batches[0], batches[2]):
        for x, y in zip(a, b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
