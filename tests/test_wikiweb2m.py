"""TFRecord framing (processing.data.tfrecord_io) and the WikiWeb2M reader (processing.data.wikiweb2m)."""
import gzip
import json
import os

import pytest
from processing.data import wikiweb2m as ww
from processing.data.tfrecord_io import (
    TFRecordCorruptError,
    TFRecordReader,
    iter_tfrecord,
    masked_crc32c,
    write_tfrecord,
)
from processing.data.wikiweb2m import (
    PAGE_COLUMNS,
    ReadStats,
    RecordDecodeError,
    WikiWeb2MFormatError,
    iter_pages,
    load_pages,
    page_to_example,
    page_url_index,
    parse_page,
    serialize_page,
    split_counts,
    study_split,
    summarization_samples,
)

REALWIKI_FILE = "wikiweb2m-dev.tfrecord.gz"


# --------------------------------------------------------------------------------------------------
# A hand-built page row (independent of processing.data.sample_data)
# --------------------------------------------------------------------------------------------------


def make_row(num_sections=3, url="https://en.wikipedia.org/wiki/Test_page", split="train", images_per_section=None):
    """A valid page row: a lead and ``num_sections - 1`` h2 children; section 1 has two images."""
    n = num_sections
    if n == 0:
        row = make_row(1, url, split)
        return {k: ([] if k in ww.SEQUENCE_FEATURES else v) for k, v in row.items()}
    images = images_per_section or [2 if i == 1 else 0 for i in range(n)]
    first = [f"Section {i} starts here." for i in range(n)]
    rest = [f"It goes on {i}. And on." for i in range(n)]
    return {
        "split": split,
        "page_url": url,
        "page_title": "Test page",
        "raw_page_description": "A test page.\nIt is small.",
        "clean_page_description": "A test page. It is small.",
        "page_contains_images": int(any(images)),
        "page_content_sections_without_table_list": n,
        "is_page_description_sample": 1,
        "section_title": ["Introduction"] + [f"Part {i}" for i in range(1, n)],
        "section_text": [f"{a} {b}" for a, b in zip(first, rest)],
        "section_raw_1st_sentence": list(first),
        "section_clean_1st_sentence": list(first),
        "section_rest_sentence": rest,
        "section_index": list(range(n)),
        "section_depth": [0] + [1] * (n - 1),
        "section_heading_level": [0] + [2] * (n - 1),
        "section_parent_index": [-1] + [0] * (n - 1),
        "section_contains_table_or_list": [0] * n,
        "section_contains_images": [int(k > 0) for k in images],
        "is_section_summarization_sample": [0] + [1] * (n - 1),
        "section_subsection_index": [list(range(1, n))] + [[] for _ in range(n - 1)],
        "section_image_url": [
            [f"https://upload.wikimedia.org/x/{i}_{j}.png" for j in range(k)] for i, k in enumerate(images)
        ],
        "section_image_mime_type": [["image/png"] * k for k in images],
        "section_image_alt_text": [["alt ü"] * k for k in images],
        "section_image_raw_ref_desc": [[f"caption {j}\nraw" for j in range(k)] for k in images],
        "section_image_clean_ref_desc": [[f"caption {j} raw" for j in range(k)] for k in images],
        "section_image_raw_attr_desc": [[""] * k for k in images],
        "section_image_clean_attr_desc": [[""] * k for k in images],
        "section_image_captions": [[f"alt ü, caption {j} raw" for j in range(k)] for k in images],
        "section_image_width": [[100 + j for j in range(k)] for k in images],
        "section_image_height": [[50 + j for j in range(k)] for k in images],
        "section_image_in_wit": [[1] * k for k in images],
        "is_image_caption_sample": [[j % 2 for j in range(k)] for k in images],
    }


def write_rows(path, rows, gzip_=True):
    write_tfrecord(path, [serialize_page(r) for r in rows], gzip=gzip_)
    return str(path)


def record_bytes(example):
    return example.SerializeToString()


# --------------------------------------------------------------------------------------------------
# tfrecord_io: framing, CRCs, corruption
# --------------------------------------------------------------------------------------------------


def test_masked_crc_known_value_and_tfrecord_writer_parity(tmp_path):
    # crc32c(b"") == 0, so the masked value is the mask constant itself.
    assert masked_crc32c(b"") == 0xA282EAD8
    from tfrecord.writer import TFRecordWriter  # an independent implementation of the framing

    data = [{"n": (i, "int"), "s": (b"x" * i * 37, "byte")} for i in range(5)]
    theirs = tmp_path / "theirs.tfrecord"
    writer = TFRecordWriter(str(theirs))
    for d in data:
        writer.write(d)
    writer.close()
    recs = [TFRecordWriter.serialize_tf_example(d) for d in data]
    ours = tmp_path / "ours.tfrecord"
    write_tfrecord(ours, recs, gzip=False)
    assert ours.read_bytes() == theirs.read_bytes()
    assert [d for _, d in iter_tfrecord(theirs)] == recs


def test_reader_offsets_plain_and_gzip(tmp_path):
    recs = [b"x" * n for n in (0, 5, 1000, 3)]
    expected_offsets, pos = [], 0
    for r in recs:
        expected_offsets.append(pos)
        pos += 16 + len(r)
    for gz in (False, True):
        p = tmp_path / f"f{gz}.tfrecord"
        assert write_tfrecord(p, recs, gzip=gz) == len(recs)
        assert (p.read_bytes()[:2] == b"\x1f\x8b") is gz
        assert list(iter_tfrecord(p)) == list(zip(expected_offsets, recs))
    empty = tmp_path / "empty.tfrecord.gz"
    write_tfrecord(empty, [])
    assert list(iter_tfrecord(empty)) == []
    # Concatenated gzip members read as one stream, as gzip itself does.
    members = tmp_path / "members.tfrecord.gz"
    plain = (tmp_path / "fFalse.tfrecord").read_bytes()
    members.write_bytes(gzip.compress(plain[:16]) + gzip.compress(plain[16:]))
    assert [d for _, d in iter_tfrecord(members)] == recs


def test_damaged_gzip_stream_is_a_corrupt_error(tmp_path):
    p = tmp_path / "f.tfrecord.gz"
    write_tfrecord(p, [bytes(range(256)) * 40 for _ in range(20)])
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # damage the deflate stream itself
    p.write_bytes(bytes(raw))
    with pytest.raises(TFRecordCorruptError, match=str(p)):
        list(iter_tfrecord(p))
    reader = TFRecordReader(p, skip_corrupt=True)
    list(reader)
    assert reader.num_corrupt >= 1


def test_realwiki_records_pass_both_crcs(realwiki_dir):
    reader = TFRecordReader(realwiki_dir / REALWIKI_FILE)
    records = list(reader)
    assert reader.num_records == len(records) == 42 and reader.num_corrupt == 0
    raw = gzip.decompress((realwiki_dir / REALWIKI_FILE).read_bytes())
    assert sum(16 + len(d) for _, d in records) == len(raw)


def _plain_file(tmp_path, n=4, size=50):
    recs = [bytes([65 + i]) * size for i in range(n)]
    p = tmp_path / "plain.tfrecord"
    write_tfrecord(p, recs, gzip=False)
    return p, recs, [i * (16 + size) for i in range(n)]


@pytest.mark.parametrize("gz", [False, True])
def test_flipped_data_byte_names_offset_and_skip_continues(tmp_path, gz):
    p, recs, offsets = _plain_file(tmp_path)
    raw = bytearray(p.read_bytes())
    raw[offsets[2] + 12 + 7] ^= 0x01  # one bit inside record 2's data
    bad = tmp_path / ("bad.tfrecord.gz" if gz else "bad.tfrecord")
    bad.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))

    with pytest.raises(TFRecordCorruptError) as info:
        list(iter_tfrecord(bad))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.offset == offsets[2] and str(bad) in str(err) and str(offsets[2]) in str(err)
    assert "data CRC" in str(err)

    reader = TFRecordReader(bad, skip_corrupt=True)
    got = [d for _, d in reader]
    assert got == [recs[0], recs[1], recs[3]]  # the record after the damaged one is still read
    assert reader.num_corrupt == 1 and reader.num_records == 3


def test_flipped_length_byte_stops_with_skip(tmp_path):
    p, recs, offsets = _plain_file(tmp_path)
    raw = bytearray(p.read_bytes())
    raw[offsets[1]] ^= 0x04  # record 1's length field: framing after it is unknown
    p.write_bytes(bytes(raw))
    with pytest.raises(TFRecordCorruptError, match=f"offset {offsets[1]}.*length CRC"):
        list(iter_tfrecord(p))
    reader = TFRecordReader(p, skip_corrupt=True)
    assert [d for _, d in reader] == recs[:1]
    assert reader.num_corrupt == 1


@pytest.mark.parametrize("cut", [3, 12 + 20, 16 + 50 - 1])  # in the header, in the data, in the CRC
def test_truncated_plain_file(tmp_path, cut):
    p, recs, offsets = _plain_file(tmp_path)
    p.write_bytes(p.read_bytes()[: offsets[3] + cut])
    with pytest.raises(TFRecordCorruptError, match=f"offset {offsets[3]}: file truncated") as info:
        list(iter_tfrecord(p))
    assert info.value.path == str(p)
    reader = TFRecordReader(p, skip_corrupt=True)
    assert [d for _, d in reader] == recs[:3] and reader.num_corrupt == 1


def test_truncated_gzip_file(tmp_path):
    recs = [os.urandom(3000) for _ in range(40)]  # incompressible: the cut lands mid-stream
    p = tmp_path / "cut.tfrecord.gz"
    write_tfrecord(p, recs)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TFRecordCorruptError, match="uncompressed byte offset") as info:
        list(iter_tfrecord(p))
    assert str(p) in str(info.value)
    reader = TFRecordReader(p, skip_corrupt=True)
    got = [d for _, d in reader]
    assert reader.num_corrupt == 1
    assert 0 < len(got) < len(recs) and got == recs[: len(got)]  # everything before the cut survives
    # A gzip stream cut right after its last complete record but before its trailer is still damage.
    trailer_cut = tmp_path / "trailer.tfrecord.gz"
    trailer_cut.write_bytes(data[:-8])
    with pytest.raises(TFRecordCorruptError, match="end-of-stream"):
        list(iter_tfrecord(trailer_cut))


def test_writer_is_atomic(tmp_path):
    p = tmp_path / "out.tfrecord.gz"
    write_tfrecord(p, [b"old"])

    def failing():
        yield b"new 1"
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_tfrecord(p, failing())
    assert [d for _, d in iter_tfrecord(p)] == [b"old"]  # the previous file is untouched
    assert sorted(os.listdir(tmp_path)) == ["out.tfrecord.gz"]  # no temp file left behind
    with pytest.raises(TypeError):
        write_tfrecord(tmp_path / "typed.tfrecord", ["not bytes"])
    assert not (tmp_path / "typed.tfrecord").exists()


# --------------------------------------------------------------------------------------------------
# The real sample (../shared/data/realwiki)
# --------------------------------------------------------------------------------------------------


def test_realwiki_counts_match_manifest(realwiki_dir):
    manifest = json.loads((realwiki_dir / "MANIFEST.json").read_text())
    stats = ReadStats()
    rows = list(iter_pages(realwiki_dir / REALWIKI_FILE, stats=stats))
    assert len(rows) == manifest["pages"] == stats.pages
    assert sum(len(r["section_title"]) for r in rows) == manifest["sections"] == stats.sections
    assert len(summarization_samples(rows)) == manifest["summarization_samples"]
    assert sum(len(u) for r in rows for u in r["section_image_url"]) == manifest["images"]
    assert sum(r["is_page_description_sample"] for r in rows) == manifest["page_description_samples"]
    assert sum(sum(f) for r in rows for f in r["is_image_caption_sample"]) == manifest["image_caption_samples"]
    counts = split_counts(rows)
    for split, expected in manifest["per_split"].items():
        assert counts[split]["pages"] == expected["pages"]
        assert counts[split]["sections"] == expected["sections"]
        assert counts[split]["summarization_samples"] == expected["summarization_samples"]
        assert len(summarization_samples(rows, split)) == expected["summarization_samples"]
    assert [(r["page_url"], r["split"], len(r["section_title"])) for r in rows] == [
        (p["url"], p["split"], p["sections"]) for p in manifest["page_list"]
    ]
    # Types are exactly the documented ones.
    row = rows[0]
    assert set(row) == set(PAGE_COLUMNS)
    assert isinstance(row["page_title"], str) and isinstance(row["page_contains_images"], int)
    assert all(isinstance(v, str) for v in row["section_text"])
    assert all(isinstance(v, int) for v in row["section_parent_index"])
    assert all(isinstance(v, list) for v in row["section_image_url"])


def test_realwiki_matches_independent_reader(realwiki_dir):
    from tfrecord.reader import sequence_loader

    path = str(realwiki_dir / REALWIKI_FILE)
    rows = list(iter_pages(path))
    theirs = list(sequence_loader(path, None, None, None, compression_type="gzip"))
    assert len(theirs) == len(rows)
    for (context, seq), row in zip(theirs, rows):
        assert context["page_url"].decode() == row["page_url"]
        assert context["split"].decode() == row["split"]
        content = "page_content_sections_without_table_list"
        assert int(context[content][0]) == row[content]
        assert [t.decode() for t in seq["section_title"]] == row["section_title"]
        assert [t.decode() for t in seq["section_clean_1st_sentence"]] == row["section_clean_1st_sentence"]
        assert [int(a[0]) for a in seq["section_parent_index"]] == row["section_parent_index"]
        assert [int(a[0]) for a in seq["is_section_summarization_sample"]] == row["is_section_summarization_sample"]
        assert [a.tolist() for a in seq["section_subsection_index"]] == row["section_subsection_index"]
        assert [a.tolist() for a in seq["section_image_width"]] == row["section_image_width"]


def test_realwiki_round_trip_and_images_on_disk(realwiki_dir, tmp_path):
    rows = list(iter_pages(realwiki_dir / REALWIKI_FILE))
    copy = write_rows(tmp_path / "copy.tfrecord.gz", rows)
    assert list(iter_pages(copy)) == rows
    names = {u.rsplit("/", 1)[-1] for r in rows for urls in r["section_image_url"] for u in urls}
    assert names and all((realwiki_dir / "images" / n).exists() for n in names)


def test_url_index_and_study_split(realwiki_dir):
    rows = list(iter_pages(realwiki_dir / REALWIKI_FILE))
    index = page_url_index(rows)
    assert len(index) == len(rows)
    assert all(rows[i]["page_url"] == url for url, i in index.items())
    with pytest.raises(ValueError, match="appears in rows 0 and 2"):
        page_url_index([rows[0], rows[1], rows[0]])

    assert study_split(600_000) == {
        "train": range(400_000),
        "val": range(400_000, 500_000),
        "test": range(500_000, 600_000),
    }
    big = study_split(2_000_000)  # the study used only the first 600k pages
    assert big["test"].stop == 600_000
    small = study_split(42)
    assert [len(small[s]) for s in ("train", "val", "test")] == [28, 7, 7]
    val = summarization_samples(rows, "val", use_study_split=True)
    assert val and all(28 <= page < 35 for page, _ in val)
    assert set(summarization_samples(rows)) == {
        s for split in ("train", "val", "test") for s in summarization_samples(rows, split, use_study_split=True)
    }
    with pytest.raises(ValueError, match="unknown split"):
        summarization_samples(rows, "validation")


# --------------------------------------------------------------------------------------------------
# Schema edge cases
# --------------------------------------------------------------------------------------------------


def test_round_trip_value_by_value():
    row = make_row(4)
    assert parse_page(serialize_page(row)) == row


def test_missing_required_feature_names_file_offset_page_field(tmp_path):
    rows = [make_row(url="https://x/A"), make_row(url="https://x/B")]
    example = page_to_example(rows[1])
    del example.feature_lists.feature_list["section_text"]
    path = tmp_path / "missing.tfrecord.gz"
    write_tfrecord(path, [serialize_page(rows[0]), record_bytes(example)])
    offset = 16 + len(serialize_page(rows[0]))
    with pytest.raises(WikiWeb2MFormatError) as info:
        list(iter_pages(path))
    err = info.value
    msg = str(err)
    assert err.field == "section_text" and err.offset == offset and err.page == "https://x/B"
    assert str(path) in msg and f"offset {offset}" in msg and "https://x/B" in msg and "section_text" in msg

    for context_field in ("page_url", "split", "page_title"):
        example = page_to_example(make_row())
        del example.context.feature[context_field]
        with pytest.raises(WikiWeb2MFormatError, match=f"'{context_field}'.*required feature is missing"):
            parse_page(record_bytes(example), "f.tfrecord", 7)


def test_optional_features_missing_get_defaults():
    row = make_row(3)
    optional = [c for c in PAGE_COLUMNS if c not in ww.REQUIRED_FEATURES and c != "section_image_url"]
    sparse = {k: v for k, v in row.items() if k not in optional}
    got = parse_page(serialize_page(sparse))
    assert set(got) == set(PAGE_COLUMNS)
    assert got["raw_page_description"] == "" and got["page_contains_images"] == 0
    assert got["section_raw_1st_sentence"] == ["", "", ""]
    assert got["section_index"] == [0, 1, 2] and got["section_depth"] == [-1, -1, -1]
    assert got["section_subsection_index"] == [[], [], []]
    # Image features stay aligned with the URLs: one empty value per image.
    assert got["section_image_url"] == row["section_image_url"]
    assert got["section_image_captions"] == [[], ["", ""], []]
    assert got["section_image_width"] == [[], [0, 0], []]
    # Without any image feature at all, every image list is empty.
    no_images = {k: v for k, v in sparse.items() if k != "section_image_url"}
    got = parse_page(serialize_page(no_images))
    assert got["section_image_url"] == [[], [], []] and got["is_image_caption_sample"] == [[], [], []]


def test_length_mismatch_names_field_and_both_lengths():
    row = make_row(3)
    row["section_rest_sentence"] = row["section_rest_sentence"][:2]
    with pytest.raises(WikiWeb2MFormatError, match=r"'section_rest_sentence'.*2 steps but 'section_title' has 3"):
        parse_page(serialize_page(row), "p.tfrecord", 0)
    row = make_row(3)
    row["section_image_captions"][1] = ["only one"]
    with pytest.raises(WikiWeb2MFormatError, match=r"'section_image_captions', section 1: 1 image values.*has 2"):
        parse_page(serialize_page(row))


def test_wrong_type_and_multiple_values():
    example = page_to_example(make_row())
    example.context.feature["page_contains_images"].ClearField("int64_list")
    example.context.feature["page_contains_images"].bytes_list.value.append(b"1")
    with pytest.raises(WikiWeb2MFormatError, match="'page_contains_images'.*expected int64"):
        parse_page(record_bytes(example))
    example = page_to_example(make_row())
    example.feature_lists.feature_list["section_title"].feature[2].bytes_list.value.append(b"second title")
    with pytest.raises(WikiWeb2MFormatError, match="'section_title', section 2: expected one value"):
        parse_page(record_bytes(example))


def test_non_utf8_raises_or_replaces(tmp_path):
    example = page_to_example(make_row(url="https://x/bad"))
    example.feature_lists.feature_list["section_text"].feature[1].bytes_list.value[0] = b"caf\xe9 au lait"
    path = tmp_path / "latin1.tfrecord"
    write_tfrecord(path, [record_bytes(example)], gzip=False)
    with pytest.raises(WikiWeb2MFormatError) as info:
        list(iter_pages(path))
    msg = str(info.value)
    assert "UTF-8" in msg and "'section_text'" in msg and "section 1" in msg and "offset 0" in msg
    assert str(path) in msg and "https://x/bad" in msg
    (row,) = iter_pages(path, errors="replace")
    assert row["section_text"][1] == "caf\ufffd au lait"


def test_zero_sections_is_a_valid_page():
    row = make_row(3)
    empty = make_row(0)
    assert empty["section_title"] == [] and empty["page_url"] == row["page_url"]
    got = parse_page(serialize_page(empty))
    assert got == empty
    assert summarization_samples([got]) == []
    # Feature lists left out entirely: still zero sections, not "missing required feature".
    context_only = {k: v for k, v in empty.items() if k in ww.CONTEXT_FEATURES}
    assert parse_page(serialize_page(context_only)) == empty


def test_three_hundred_sections(tmp_path):
    row = make_row(300, images_per_section=[i % 3 for i in range(300)])
    path = write_rows(tmp_path / "long.tfrecord.gz", [row])
    (got,) = iter_pages(path)
    assert got == row and len(got["section_title"]) == 300
    assert len(summarization_samples([got])) == 299


def test_not_a_protobuf_is_skippable_corruption(tmp_path):
    good = serialize_page(make_row())
    path = tmp_path / "junk.tfrecord.gz"
    write_tfrecord(path, [good, b"\xff\xff\xff not a protobuf", good])
    with pytest.raises(RecordDecodeError, match=f"offset {16 + len(good)}"):
        list(iter_pages(path))
    stats = ReadStats()
    assert len(list(iter_pages(path, skip_corrupt=True, stats=stats))) == 2
    assert stats.corrupt_records == 1


def test_iter_pages_skip_corrupt_counts_across_files(tmp_path):
    rows = [make_row(url=f"https://x/{i}") for i in range(5)]
    a = write_rows(tmp_path / "a.tfrecord", rows, gzip_=False)
    raw = bytearray(open(a, "rb").read())
    second = 16 + len(serialize_page(rows[0]))
    raw[second + 12 + 30] ^= 0xFF
    open(a, "wb").write(bytes(raw))
    b = write_rows(tmp_path / "b.tfrecord.gz", rows[:2])
    with pytest.raises(TFRecordCorruptError, match=f"a.tfrecord: corrupt TFRecord at byte offset {second}"):
        list(iter_pages([a, b]))
    stats = ReadStats()
    got = list(iter_pages(str(tmp_path / "*.tfrecord*"), skip_corrupt=True, stats=stats))
    assert [r["page_url"] for r in got] == [f"https://x/{i}" for i in (0, 2, 3, 4, 0, 1)]
    assert stats == ReadStats(files=2, pages=6, sections=18, corrupt_records=1)


def test_resolve_paths_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        ww.resolve_paths(str(tmp_path / "*.tfrecord"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(iter_pages(tmp_path / "absent.tfrecord"))


# --------------------------------------------------------------------------------------------------
# datasets integration and CLI
# --------------------------------------------------------------------------------------------------


def test_dataset_streaming_and_parallel_give_the_same_rows(tmp_path):
    splits = ("train", "val", "test")
    rows = [make_row(n, url=f"https://x/{i}", split=splits[i % 3]) for i, n in enumerate([0, 1, 3, 5, 2, 4])]
    shards = [write_rows(tmp_path / f"shard-{k}.tfrecord.gz", rows[3 * k : 3 * k + 3]) for k in range(2)]
    cache = tmp_path / "cache"

    ds = load_pages(str(tmp_path / "shard-*.tfrecord.gz"), cache_dir=cache)
    assert ds.num_rows == 6 and ds.column_names == list(PAGE_COLUMNS)
    assert ds.features == ww.page_features()
    assert [ds[i] for i in range(len(ds))] == rows

    streamed = load_pages(shards, streaming=True)
    assert list(streamed) == rows
    val = summarization_samples(rows, "val")
    assert val and summarization_samples(streamed, "val") == summarization_samples(ds, "val") == val
    assert page_url_index(ds) == {r["page_url"]: i for i, r in enumerate(rows)}

    parallel = load_pages(shards, num_proc=2, cache_dir=tmp_path / "cache2")  # fresh cache: really run 2 processes
    assert parallel.to_list() == rows

    # The cache follows the files: rewriting a shard gives the new rows, not stale ones.
    rows[0] = make_row(2, url="https://x/rewritten")
    os.utime(write_rows(shards[0], rows[:3]), ns=(1, 1))
    assert load_pages(shards, cache_dir=cache)[0]["page_url"] == "https://x/rewritten"


def test_cli_writes_arrow_dataset_and_prints_counts(tmp_path, capsys):
    import datasets

    rows = [make_row(3, url=f"https://x/{i}", split=s) for i, s in enumerate(["train", "train", "val", "test"])]
    good = write_rows(tmp_path / "in-0.tfrecord", rows, gzip_=False)
    raw = bytearray(open(good, "rb").read())
    raw[16 + 12] ^= 0x10  # damage page 0's data
    open(good, "wb").write(bytes(raw))
    out = tmp_path / "arrow"
    assert ww.main([str(tmp_path / "in-*.tfrecord"), str(out), "--skip_corrupt"]) == 0
    printed = capsys.readouterr().out
    assert "pages: 3" in printed and "sections: 9" in printed and "skipped corrupt records: 1" in printed
    assert "val: 1 pages, 3 sections, 2 summarization samples" in printed
    saved = datasets.load_from_disk(str(out))
    assert saved.to_list() == rows[1:]


def test_ingestion_throughput_is_positive(realwiki_dir):
    assert ww.ingestion_throughput(realwiki_dir / REALWIKI_FILE, max_pages=10) > 0
