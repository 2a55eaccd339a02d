"""The synthetic WikiWeb2M sample (processing.data.sample_data): schema, determinism, neighbour-only facts."""
import hashlib
import re
from collections import defaultdict

import pytest
from PIL import Image

from processing.data import sample_data as sd
from processing.data.wikiweb2m import PAGE_COLUMNS, iter_pages, load_pages, split_counts, summarization_samples


def words(text):
    return set(re.findall(r"[A-Za-z0-9]+", text))


def fact_in(fact, text):
    """Whole-word match, so "tea" is not found in "steady" nor "red" in "raised"."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(fact)}(?![A-Za-z0-9])", text) is not None


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    info = sd.generate_sample(out, num_pages=60, seed=3, image_size=48)
    return out, info


def test_round_trip_generator_to_reader_value_by_value(sample):
    out, info = sample
    assert info["files"] == [str(out / sd.OUTPUT_FILE)]
    rows = list(iter_pages(info["files"]))
    expected = [p.row for p in sd.iter_sample_pages(60, seed=3, image_size=48)]
    assert len(rows) == 60 == info["pages"]
    for got, want in zip(rows, expected):
        assert list(got) == list(PAGE_COLUMNS)
        for column in PAGE_COLUMNS:
            assert got[column] == want[column], column
    assert sum(len(r["section_title"]) for r in rows) == info["sections"]
    assert len(summarization_samples(rows)) == info["summarization_samples"]


def test_schema_types_and_bookkeeping_rules(sample):
    out, info = sample
    for row in iter_pages(info["files"]):
        n = len(row["section_title"])
        assert isinstance(row["page_url"], str) and isinstance(row["is_page_description_sample"], int)
        for column in PAGE_COLUMNS[8:]:
            assert len(row[column]) == n, column
        for i in range(n):
            # WikiWeb2M / realwiki rules, derived rather than hand-set.
            sample_rule = int(i > 0 and not row["section_contains_table_or_list"][i]
                              and bool(row["section_clean_1st_sentence"][i]) and bool(row["section_rest_sentence"][i]))
            assert row["is_section_summarization_sample"][i] == sample_rule
            assert row["section_contains_images"][i] == int(bool(row["section_image_url"][i]))
            assert row["section_text"][i].startswith(row["section_clean_1st_sentence"][i])
            parent = row["section_parent_index"][i]
            if i == 0:
                assert parent == -1 and row["section_depth"][0] == 0
            else:
                assert i in row["section_subsection_index"][parent]
                assert row["section_depth"][i] == row["section_depth"][parent] + 1
            m = len(row["section_image_url"][i])
            for column in PAGE_COLUMNS:
                if column.startswith("section_image_") or column == "is_image_caption_sample":
                    assert len(row[column][i]) == m, column
        assert row["page_contains_images"] == int(any(row["section_contains_images"]))
        assert "\n" not in row["clean_page_description"]


def test_structure_variety(sample):
    rows = list(iter_pages(sample[1]["files"]))
    images_per_section = [len(u) for r in rows for u in r["section_image_url"]]
    assert 0 in images_per_section and 1 in images_per_section and max(images_per_section) >= 2
    assert any(d == 2 for r in rows for d in r["section_depth"])  # parent / child sections
    assert any(r["section_contains_table_or_list"][i] and not r["is_section_summarization_sample"][i]
               for r in rows for i in range(len(r["section_title"])))
    assert any(t == "" and u for r in rows for t, u in zip(r["section_text"], r["section_image_url"]))  # image-only


def test_splits_about_80_10_10_with_samples_everywhere(sample):
    rows = list(iter_pages(sample[1]["files"]))
    counts = split_counts(rows)
    assert (counts["train"]["pages"], counts["val"]["pages"], counts["test"]["pages"]) == (48, 6, 6)
    for split in ("train", "val", "test"):
        assert counts[split]["summarization_samples"] > 0
    small = [p.row for p in sd.iter_sample_pages(3)]
    assert [r["split"] for r in small] == ["train", "val", "test"]
    assert all(summarization_samples(small, s) for s in ("train", "val", "test"))


def test_images_on_disk_match_urls_and_captions(sample):
    out, info = sample
    image_dir = out / "images"
    rows = list(iter_pages(info["files"]))
    names = [u.rsplit("/", 1)[-1] for r in rows for urls in r["section_image_url"] for u in urls]
    assert len(names) == len(set(names)) == info["images"]
    assert sorted(p.name for p in image_dir.iterdir()) == sorted(names)
    for url in (u for r in rows for urls in r["section_image_url"] for u in urls):
        name = url.rsplit("/", 1)[-1]
        digest = hashlib.md5(name.encode()).hexdigest()
        assert url.endswith(f"/{digest[0]}/{digest[:2]}/{name}")  # MediaWiki's hashed upload path
    checked = set()
    for r in rows:
        per_section = zip(r["section_image_url"], r["section_image_clean_ref_desc"], r["section_image_width"])
        for urls, caps, widths in per_section:
            for url, cap, width in zip(urls, caps, widths):
                img = Image.open(image_dir / url.rsplit("/", 1)[-1]).convert("RGB")
                assert img.size == (width, width) == (48, 48)
                flag = re.match(r"The (\w+) flag of", cap)
                if flag:  # the pixels show the colour the caption names
                    assert img.getpixel((24, 24)) == sd.COLOURS[flag.group(1)]
                    checked.add("flag")
                towers = re.search(r"with (\w+) towers", cap)
                if towers:  # the drawing has as many bars as the caption says
                    line = [img.getpixel((x, 36))[0] < 128 for x in range(48)]
                    bars = sum(1 for x in range(48) if line[x] and (x == 0 or not line[x - 1]))
                    number = {v: k for k, v in sd.NUMBERS.items()}[towers.group(1)]
                    assert bars == number
                    checked.add("towers")
    assert checked == {"flag", "towers"}


def test_summary_fact_only_in_neighbours():
    """The point of the sample: the target's key fact is not in the section, only around it."""
    sources = defaultdict(int)
    for page in sd.iter_sample_pages(300, seed=0):
        row = page.row
        samples = [i for i, f in enumerate(row["is_section_summarization_sample"]) if f]
        assert samples and set(page.facts) == set(samples)  # every sample has a known key fact
        for i in samples:
            fact = page.facts[i]
            summary = row["section_clean_1st_sentence"][i]
            assert fact_in(fact.value, summary)
            # absent from the section's own input text
            assert not fact_in(fact.value, row["section_rest_sentence"][i]), (summary, row["section_rest_sentence"][i])
            assert not fact_in(fact.value, row["section_title"][i])
            # present in the named neighbour
            if fact.source == "page_description":
                neighbour = row["clean_page_description"]
            elif fact.source == "parent_section":
                neighbour = row["section_text"][row["section_parent_index"][i]]
            else:
                assert fact.source == "image_caption"
                neighbour = " ".join(row["section_image_captions"][i])
            assert fact_in(fact.value, neighbour)
            assert fact.neighbour_text in (neighbour, *row["section_image_captions"][i])
            sources[fact.source] += 1
    assert set(sources) == {"page_description", "parent_section", "image_caption"}


def test_facts_are_not_predictable_from_the_page_name():
    by_name = defaultdict(set)
    for page in sd.iter_sample_pages(400):
        for i, fact in page.facts.items():
            if page.row["section_title"][i] == "Flag":
                by_name[page.row["page_title"]].add(fact.value)
    assert max(len(colours) for colours in by_name.values()) >= 3  # same name, different colours


def test_filler_vocabulary_has_no_fact_words():
    fact_words = set(sd.CITIES) | set(sd.COLOURS) | set(sd.SHAPES) | set(sd.NUMBERS.values()) | set(sd.PRODUCTS)
    fact_words |= {w for r in sd.RULERS for w in r.split()[1:]} | {str(y) for y in sd.YEARS}
    pools = [getattr(sd, name) for name in dir(sd) if name.endswith(("_FILLER", "_CAPTIONS", "_ITEMS"))]
    assert len(pools) == 11
    pools = [sentence for pool in pools for sentence in pool]
    for sentence in pools:
        assert not (words(sentence) & fact_words), sentence


def test_deterministic_for_a_seed(tmp_path):
    a = sd.generate_sample(tmp_path / "a", num_pages=20, seed=7, image_size=32)
    b = sd.generate_sample(tmp_path / "b", num_pages=20, seed=7, image_size=32)
    c = sd.generate_sample(tmp_path / "c", num_pages=20, seed=8, image_size=32, with_images=False)
    read = lambda info: open(info["files"][0], "rb").read()  # noqa: E731
    assert read(a) == read(b) != read(c)
    for name in sorted(p.name for p in (tmp_path / "a" / "images").iterdir()):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    assert c["image_dir"] is None and not (tmp_path / "c" / "images").exists()
    # A page does not depend on how many pages are generated.
    assert sd.make_page(5, seed=7).row == list(sd.iter_sample_pages(10, seed=7))[5].row


def test_shards_and_dataset_loading(tmp_path):
    info = sd.generate_sample(tmp_path, num_pages=25, with_images=False, num_shards=3)
    assert [p.rsplit("/", 1)[-1] for p in info["files"]] == [f"{sd.OUTPUT_FILE}-0000{k}-of-00003" for k in range(3)]
    ds = load_pages(str(tmp_path / f"{sd.OUTPUT_FILE}-*"), cache_dir=tmp_path / "cache")
    assert ds.to_list() == [p.row for p in sd.iter_sample_pages(25)]


def test_large_sample_without_images(tmp_path):
    # Speed is a benchmark's business (benchmarks/), not a test's: only the count and the report are checked.
    info = sd.generate_sample(tmp_path, num_pages=2000, with_images=False)
    assert info["pages"] == 2000 and info["pages_per_second"] > 0


def test_cli(tmp_path, capsys):
    assert sd.main([str(tmp_path), "--num_pages", "12", "--image_size", "32"]) == 0
    assert "wrote 12 pages" in capsys.readouterr().out
    assert (tmp_path / sd.OUTPUT_FILE).exists() and any((tmp_path / "images").iterdir())
