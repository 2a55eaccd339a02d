"""Bad input and faults: one clear line per error, nothing complete destroyed by a kill, damaged pages
repaired or refused with the page, section and field named, a wall-clock bound on downloads."""
import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processing.data import cli
from processing.data import wikiweb2m as ww
from processing.data.image_fetcher import ImageFetcher, URLListError, urls_from_file
from processing.data.tfrecord_io import frame_record, write_tfrecord
from processing.page_graph import PageFieldTypeError, PageGraph, PageStructureError
from tests.test_image_fetcher import Server, make_image
from tests.test_wikiweb2m import make_row

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def run_cli(module, *args, env=None, timeout=90):
    """Run ``python -m module args`` from the worktree; return (returncode, stdout, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if k != "MMGL_DEBUG"}
    full_env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})})
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def write_pages(path, rows, gzip_=False):
    write_tfrecord(path, [ww.serialize_page(r) for r in rows], gzip=gzip_)
    return path


def non_utf8_file(path):
    rows = [make_row(2, url="https://x/good"), make_row(2, url="https://x/bad")]
    example = ww.page_to_example(rows[1])
    example.feature_lists.feature_list["section_text"].feature[1].bytes_list.value[0] = b"caf\xe9 au lait"
    write_tfrecord(path, [ww.serialize_page(rows[0]), example.SerializeToString()], gzip=False)
    return path


def tree_hashes(root):
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def siblings(out):
    return sorted(p.name for p in Path(out).parent.iterdir() if p.name.startswith(f".{Path(out).name}."))


# ------------------------------------------------------------------------------ command entry point


def test_reader_error_inside_datasets_is_one_line_naming_file_page_field(tmp_path):
    bad = non_utf8_file(tmp_path / "bad.tfrecord")
    code, out, err = run_cli("processing.data.wikiweb2m", bad, tmp_path / "arrow")
    assert code == cli.EXIT_BAD_INPUT, err
    assert "Traceback" not in err and "DatasetGenerationError" not in err
    (line,) = error_lines(err)
    assert str(bad) in line and "record at byte offset" in line and "'https://x/bad'" in line
    assert "field 'section_text'" in line and "section 1" in line and "--errors replace" in line
    assert not (tmp_path / "arrow").exists() and siblings(tmp_path / "arrow") == []

    # --traceback shows the whole chain, with the datasets wrapper around our error.
    code, _, err = run_cli("processing.data.wikiweb2m", bad, tmp_path / "arrow", "--traceback")
    assert code == 1 and "Traceback" in err and "WikiWeb2MFormatError" in err

    # And the suggested option reads the page.
    assert ww.main([str(bad), str(tmp_path / "arrow"), "--errors", "replace"]) == 0


def test_reader_error_in_a_worker_process_is_raised_as_itself(tmp_path):
    # multiprocess hands the parent only the text of a worker's traceback; the reader error must
    # still come out as itself, naming the file, page and field.
    good = write_pages(tmp_path / "a.tfrecord", [make_row(2, url="https://x/a")])
    bad = non_utf8_file(tmp_path / "b.tfrecord")
    with pytest.raises(ww.WikiWeb2MFormatError, match=rf"{bad}: .*'https://x/bad', field 'section_text'") as info:
        ww.load_pages([good, bad], num_proc=2, cache_dir=tmp_path / "cache")
    assert info.value.field == "section_text" and info.value.path == str(bad)


def test_run_command_unwraps_chains_and_keeps_tracebacks_of_bugs(capsys, monkeypatch):
    monkeypatch.delenv("MMGL_DEBUG", raising=False)
    reader_error = ww.WikiWeb2MFormatError("expected one value, found 2", "f.tfrecord", 12, "P", "split")

    def wrapped(argv):
        try:
            raise reader_error
        except ww.WikiWeb2MFormatError as exc:
            raise RuntimeError("An error occurred while generating the dataset") from exc

    assert cli.run_command(wrapped, []) == cli.EXIT_BAD_INPUT
    assert error_lines(capsys.readouterr().err) == [f"error: {reader_error}"]

    def missing(argv):
        open("/nonexistent/urls.txt")

    assert cli.run_command(missing, []) == cli.EXIT_BAD_INPUT
    assert "/nonexistent/urls.txt" in error_lines(capsys.readouterr().err)[0]

    def bug(argv):
        json.loads("{not json")  # a ValueError raised outside this project: a bug, keep the traceback

    with pytest.raises(json.JSONDecodeError):
        cli.run_command(bug, [])
    # --traceback (or MMGL_DEBUG=1) re-raises what main raised, the whole chain intact.
    with pytest.raises(RuntimeError, match="generating the dataset") as info:
        cli.run_command(wrapped, ["--traceback"])
    assert info.value.__cause__ is reader_error
    monkeypatch.setenv("MMGL_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.run_command(wrapped, [])


def test_every_flag_of_every_command_has_help(monkeypatch):
    from processing.data import build_embedding_cache, image_fetcher, sample_data

    class Captured(Exception):
        pass

    def capture(self, args=None, namespace=None):
        raise Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    parsers = {}
    for module in (ww, image_fetcher, sample_data, build_embedding_cache):
        with pytest.raises(Captured) as info:
            module.main([])
        parser = parsers[module] = info.value.args[0]
        undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
        assert undocumented == [], f"{module.__name__}: {undocumented}"
        assert "--traceback" in parser._option_string_actions, module.__name__
    assert "--download_timeout" in parsers[image_fetcher]._option_string_actions


# ------------------------------------------------------------------------------- inputs without pages


def test_empty_and_all_corrupt_inputs_name_the_files(tmp_path):
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    with pytest.raises(ww.EmptyInputError, match=rf"no pages read from {empty} \(the file\(s\) hold no records\)"):
        ww.load_pages(empty, cache_dir=tmp_path / "c1")

    damaged = tmp_path / "damaged.tfrecord"
    records = [bytearray(frame_record(ww.serialize_page(make_row(2, url=f"https://x/{i}")))) for i in range(3)]
    for r in records:
        r[20] ^= 0xFF  # inside the data: the data CRC fails, the framing stays readable
    damaged.write_bytes(b"".join(records))
    with pytest.raises(ww.EmptyInputError, match=rf"no pages read from {damaged} \(3 corrupt record"):
        ww.load_pages(damaged, cache_dir=tmp_path / "c2", skip_corrupt=True)

    code, _, err = run_cli("processing.data.wikiweb2m", damaged, tmp_path / "out", "--skip_corrupt")
    assert code == cli.EXIT_BAD_INPUT and "Traceback" not in err
    assert error_lines(err) == [f"error: no pages read from {damaged} (3 corrupt record(s) skipped: every "
                                f"record was damaged)"]


# ------------------------------------------------------------------------------------ killed writes


def test_kill_mid_write_keeps_the_previous_output_byte_for_byte(tmp_path):
    out = tmp_path / "arrow"
    old_input = write_pages(tmp_path / "old.tfrecord", [make_row(3, url=f"https://old/{i}") for i in range(20)])
    assert ww.main([str(old_input), str(out)]) == 0
    before = tree_hashes(out)
    assert any(name.endswith(".arrow") for name in before)

    row = make_row(6, url="https://new/0")
    row["section_text"] = [t + " padding" * 200 for t in row["section_text"]]  # ~10 kB pages
    big = write_pages(tmp_path / "big.tfrecord", [{**row, "page_url": f"https://new/{i}"} for i in range(3000)])
    proc = subprocess.Popen([sys.executable, "-m", "processing.data.wikiweb2m", str(big), str(out)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill in the last phase, while save_to_disk writes the new Arrow files (~30 MB): the step
        # that used to overwrite the previous output in place.
        deadline = time.monotonic() + 60
        staging = None
        while proc.poll() is None and time.monotonic() < deadline:
            names = siblings(out)
            if names and (tmp_path / names[0] / "data").exists():
                staging = tmp_path / names[0]
                break
            time.sleep(0.005)
        assert staging is not None and proc.poll() is None, "the conversion ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert staging.name.startswith(".arrow.tmp-") and staging.exists()
    assert tree_hashes(out) == before  # the previous output, untouched

    # A rerun removes what the killed run left and replaces the output only when done.
    small_new = write_pages(tmp_path / "new.tfrecord", [make_row(2, url=f"https://new/{i}") for i in range(7)])
    assert ww.main([str(small_new), str(out)]) == 0
    assert siblings(out) == []
    import datasets

    assert datasets.load_from_disk(str(out))["page_url"] == [f"https://new/{i}" for i in range(7)]


def test_recovery_puts_back_a_retired_output_and_refuses_foreign_folders(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that no longer runs
    dead.wait()
    out = tmp_path / "arrow"
    old = tmp_path / f".arrow.old-{dead.pid}"
    old.mkdir()
    (old / "state.json").write_text("{}")
    stale = tmp_path / f".arrow.tmp-{dead.pid}-abc"
    (stale / "cache").mkdir(parents=True)
    ww.recover_output(out)  # killed between "old -> .old" and "new -> out": the old one comes back
    assert (out / "state.json").read_text() == "{}" and siblings(out) == []

    old.mkdir()  # killed after the new output was in place: the retired one is removed
    ww.recover_output(out)
    assert not old.exists() and (out / "state.json").exists()

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    good = write_pages(tmp_path / "in.tfrecord", [make_row(2)])
    with pytest.raises(FileExistsError, match=r"notes.*not a data set saved by this command"):
        ww.main([str(good), str(foreign)])
    assert (foreign / "thesis.txt").read_text() == "keep me" and siblings(foreign) == []


# ----------------------------------------------------------------------------- damaged page structure


def test_bad_parents_are_repaired_with_a_warning(caplog):
    row = make_row(5, url="https://x/P")
    row["section_parent_index"] = [-1, 7, 3, 2, 4]  # out of range; 2 <-> 3 a cycle; 4 its own parent
    with caplog.at_level("WARNING", logger="processing.page_graph"):
        graph = PageGraph.from_wikiweb2m(row)
    assert graph.section_parents[1] == -1 and graph.section_parents[4] == -1
    assert -1 in graph.section_parents[2:4] and graph.section_parents[2:4] != [-1, -1]  # one edge of the cycle cut
    text = caplog.text
    assert "page 'https://x/P', section 1, field 'section_parent_index': parent index 7 is out of range" in text
    assert "section 4, field 'section_parent_index': parent index 4 is the section itself" in text
    assert "closes a cycle" in text
    assert len(graph.edges["parent_child"]) == 1


def test_ragged_rows_and_non_integer_parents_are_refused_by_type():
    row = make_row(4, url="https://x/R")
    row["section_rest_sentence"] = row["section_rest_sentence"][:3]
    with pytest.raises(PageStructureError, match=r"page 'https://x/R', field 'section_rest_sentence': 3 values "
                                                 r"for 4 sections") as info:
        PageGraph.from_wikiweb2m(row)
    assert info.value.field == "section_rest_sentence" and isinstance(info.value, ValueError)

    page = {"title": "T", "sections": [{"title": "A", "text": "One. Two."}, {"title": "B", "text": "x", "parent": "zero"}]}
    with pytest.raises(PageStructureError, match=r"page 'T', section 1, field 'parent': expected an integer, got 'zero'"):
        PageGraph.from_dict(page)
    row = make_row(3, url="https://x/Z")
    row["section_parent_index"] = [-1, "zero", 0]
    with pytest.raises(PageStructureError, match=r"'https://x/Z', section 1, field 'section_parent_index'"):
        PageGraph.from_wikiweb2m(row)


@pytest.mark.parametrize("page, pattern", [
    ({"title": "T", "sections": ["just a string"]}, r"page 'T', section 0, field 'sections': expected a dict"),
    ({"title": "T", "sections": [{"text": "a", "images": "x.png"}]},
     r"page 'T', section 0, field 'images': expected a list, got str"),
    ({"title": "T", "sections": [{"text": "a", "images": ["x.png"]}]},
     r"page 'T', section 0, field 'images': image 0: expected a dict"),
    ({"title": "T", "sections": [{"text": ["a", "b"]}]}, r"page 'T', section 0, field 'text': expected text .* got list"),
    ({"title": {"en": "T"}, "url": "u", "sections": []}, r"page 'u', field 'title': expected text .* got dict"),
    ({"title": "T", "sections": [{"text": "a", "images": [{"url": "x", "caption": 3}]}]},
     r"page 'T', section 0, image 0, field 'caption': expected text .* got int"),
    ({"title": "T", "sections": [{"text": "a", "is_sample": "false"}]}, r"section 0, field 'is_sample': expected a bool"),
])
def test_page_dict_fields_are_checked_by_type(page, pattern):
    with pytest.raises(PageFieldTypeError, match=pattern) as info:
        PageGraph.from_dict(page)
    assert isinstance(info.value, TypeError) and isinstance(info.value, PageStructureError)


def test_lone_surrogates_are_refused_naming_the_field():
    page = {"title": "T", "sections": [{"title": "A", "text": "ok"}, {"title": "B", "text": "bad \ud800 text"}]}
    with pytest.raises(PageStructureError, match=r"page 'T', section 1, field 'text': text holds a lone surrogate"):
        PageGraph.from_dict(page)


def test_page_dicts_accepted_before_are_still_accepted(tmp_path):
    picture = Image.new("RGB", (4, 4))
    graph = PageGraph.from_dict({
        "title": b"T", "description": None, "url": "u",
        "sections": [
            {"title": "A", "text": "One. Two.", "images": [{"path": tmp_path / "a.png", "caption": b"c"},
                                                           {"image": picture}, {"image": b"\x89PNG"}]},
            {"title": "B", "text": "Three. Four.", "parent": np.int64(0), "is_sample": np.bool_(True)},
            {"title": "C", "text": "Five. Six.", "parent": 1, "is_sample": 1},
        ],
    })
    assert graph.title == "T" and graph.description == "" and graph.section_parents == [-1, 0, 1]
    assert graph.nodes[4].image == str(tmp_path / "a.png") and graph.nodes[4].text == "c"
    assert graph.nodes[5].image is picture and graph.is_sample == [True, True, True]


# ------------------------------------------------------------------------------------------- fetcher


def test_slow_drip_download_is_cut_at_the_wall_clock_timeout(tmp_path):
    server = Server()
    try:
        url = server.add("/drip.png", ("drip", make_image(), 0.1))  # ~100 bytes: 10+ s if waited out
        fetcher = ImageFetcher(tmp_path / "cache", retries=0, connect_timeout=2, read_timeout=2, download_timeout=1.0)
        start = time.monotonic()
        summary = fetcher.fetch([url])
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert summary["failed_by_reason"] == {"timeout": 1}
    assert elapsed < 1.0 + 1.0, elapsed
    records = [json.loads(line) for line in (tmp_path / "cache" / "manifest.jsonl").read_text().splitlines()]
    assert records[-1]["reason"] == "timeout" and "exceeded 1.0 s" in records[-1]["detail"]
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_binary_url_list_is_a_clear_error(tmp_path):
    binary = tmp_path / "urls.bin"
    binary.write_bytes(make_image())
    with pytest.raises(URLListError, match=rf"{binary}: not a text file of URLs"):
        urls_from_file(binary)
    latin1 = tmp_path / "urls.txt"
    latin1.write_bytes(b"https://a/x.png\nhttps://b/caf\xe9.png\n")
    with pytest.raises(URLListError, match=rf"{latin1}: line 2 is not valid UTF-8"):
        urls_from_file(latin1)
    code, _, err = run_cli("processing.data.image_fetcher", binary, tmp_path / "cache")
    assert code == cli.EXIT_BAD_INPUT and "Traceback" not in err
    assert error_lines(err) == [f"error: {binary}: not a text file of URLs (it holds NUL bytes); expected one URL per line"]
