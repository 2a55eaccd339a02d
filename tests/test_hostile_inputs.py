"""Bad input and faults, second pass: each case runs the real command in a subprocess and checks its exit status,
exactly one ``error:`` line naming the file / field, no traceback, and every file that existed before unchanged
(hashed). A full disk is a small tmpfs where this machine lets the tests mount one (skipped where it does not)."""
import hashlib
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processing.data import cli
from processing.data import wikiweb2m as ww
from processing.data.image_fetcher import EXIT_FAILED_URLS
from processing.data.sample_data import generate_sample
from processing.data.tfrecord_io import write_tfrecord
from tests.test_image_fetcher import Server, make_image
from tests.test_wikiweb2m import make_row

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
TINY_CLIP_JSON = ROOT / "demo" / "tiny_clip.json"


def run(args, timeout=240, env=None):
    """``python ARGS`` from the worktree, offline, without the traceback switch; (exit status, stdout, stderr)."""
    env = {**{k: v for k, v in os.environ.items() if k != "MMGL_DEBUG"}, **(env or {})}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def one_error(code, err, *needles):
    """The command stopped on bad input with exactly one ``error:`` line holding every needle, and no traceback."""
    assert code == cli.EXIT_BAD_INPUT, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def tree_hashes(*roots):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs, or a skip where mounting is not allowed."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()

    def mounted(size="1m"):
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
        return mount

    yield mounted
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    generate_sample(root, num_pages=30, seed=0)
    return root


# ---------------------------------------------------------------------------------------------- image fetcher


def test_fetch_exit_status_says_whether_every_url_ended_ok(tmp_path):
    server = Server()
    try:
        good = server.add("/a.png", ("ok", make_image()))
        gone = server.add("/gone.png", ("status", 404))
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{good}\n{gone}\n")
        code, out, err = run(["-m", "processing.data.image_fetcher", urls, tmp_path / "c", "--retries", "0",
                              "--no_progress"])
        assert code == EXIT_FAILED_URLS and "Traceback" not in err, err
        assert json.loads(out)["failed_by_reason"] == {"http_404": 1}
        assert "1 of 2 URLs did not end ok" in err
        code, out, err = run(["-m", "processing.data.image_fetcher", urls, tmp_path / "c", "--retries", "0",
                              "--no_progress", "--allow_failed"])
        assert code == 0 and json.loads(out)["cached"] == 1, err
        urls.write_text(f"{good}\n")
        code, _, err = run(["-m", "processing.data.image_fetcher", urls, tmp_path / "c", "--no_progress"])
        assert code == 0, err
    finally:
        server.close()


def test_fetch_refuses_a_tmp_folder_linked_out_and_bad_numbers(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "thesis.part").write_text("keep me")
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "tmp").symlink_to(outside)
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:1/x.png\n")
    before = tree_hashes(outside)
    code, _, err = run(["-m", "processing.data.image_fetcher", urls, cache, "--no_progress"])
    one_error(code, err, cache / "tmp", "symbolic link")
    assert tree_hashes(outside) == before
    code, _, err = run(["-m", "processing.data.image_fetcher", urls, tmp_path / "d", "--max_workers", "0"])
    one_error(code, err, "--max_workers must be >= 1, got 0")


# -------------------------------------------------------------------------------------------------- converter


def test_convert_refuses_num_proc_zero(tmp_path):
    write_tfrecord(tmp_path / "in.tfrecord", [ww.serialize_page(make_row(2))], gzip=False)
    code, _, err = run(["-m", "processing.data.wikiweb2m", tmp_path / "in.tfrecord", tmp_path / "out", "--num_proc", "0"])
    one_error(code, err, "--num_proc must be >= 1, got 0")
    assert not (tmp_path / "out").exists()


def test_convert_on_a_full_disk_keeps_the_previous_data_set(tmp_path, tmpfs):
    disk = tmpfs("1m")
    small = tmp_path / "small.tfrecord"
    write_tfrecord(small, [ww.serialize_page(make_row(2, url=f"https://s/{i}")) for i in range(5)], gzip=False)
    assert ww.main([str(small), str(disk / "out")]) == 0
    before = tree_hashes(disk)
    row = make_row(6, url="https://big/0")
    row["section_text"] = [f"{t} {i} " + "words " * 300 for i, t in enumerate(row["section_text"])]
    big = tmp_path / "big.tfrecord"
    write_tfrecord(big, [ww.serialize_page({**row, "page_url": f"https://big/{i}"}) for i in range(150)], gzip=False)
    code, _, err = run(["-m", "processing.data.wikiweb2m", big, disk / "out"])
    line = one_error(code, err, "no space left on device writing", str(disk), "bytes needed", "bytes free",
                     f"the previous data set {disk / 'out'} is kept")
    assert f"{2 * big.stat().st_size:,} bytes needed" in line
    assert tree_hashes(disk) == before and sorted(p.name for p in disk.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------------- embedding-cache builder


@pytest.fixture(scope="module")
def pages_with_bad_urls(tmp_path_factory):
    """An Arrow data set of three pages whose image URLs include a NUL byte, a control character and ``%00``, and a
    folder holding the files of the good URLs."""
    root = tmp_path_factory.mktemp("bad_urls")
    rows = []
    for p in range(3):
        row = make_row(3, url=f"https://x/page{p}", images_per_section=[1, 2, 2])
        row["section_image_url"] = [[f"https://upload.example.org/{p}/good_{p}.png"],
                                    [f"https://upload.example.org/{p}/nul\x00{p}.png",
                                     f"https://upload.example.org/{p}/enc%00{p}.png"],
                                    [f"https://upload.example.org/{p}/line\n{p}.png",
                                     f"https://upload.example.org/{p}/absent_{p}.png"]]
        rows.append(row)
    write_tfrecord(root / "pages.tfrecord", [ww.serialize_page(r) for r in rows], gzip=False)
    assert ww.main([str(root / "pages.tfrecord"), str(root / "data")]) == 0
    images = root / "images"
    images.mkdir()
    for p in range(3):
        Image.new("RGB", (8, 8), (p * 40, 10, 10)).save(images / f"good_{p}.png")
    return root


def builder(data, cache, *extra):
    return ["-m", "processing.data.build_embedding_cache", data, cache, "--neighbor_encoder_name", "tiny",
            "--neighbor_encoder_pretrained", "none", "--neighbor_encoder_config", TINY_CLIP_JSON, "--no_progress",
            *extra]


def test_cache_builder_refuses_missing_or_file_image_folders_and_damaged_configs(pages_with_bad_urls, tmp_path):
    data = pages_with_bad_urls / "data"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "notes.txt").write_text("mine")
    not_a_folder = tmp_path / "images.txt"
    not_a_folder.write_text("not a folder")
    cases = [
        (builder(data, cache, "--image_dir", tmp_path / "missing"), [tmp_path / "missing", "no such folder"]),
        (builder(data, cache, "--image_dir", not_a_folder), [not_a_folder, "not a folder"]),
        (builder(data, cache, "--batch_size", "0"), ["--batch_size must be >= 1, got 0"]),
    ]
    broken = {"invalid": "{\"model_name\": ", "list": "[1, 2]"}
    for name, text in broken.items():
        folder = tmp_path / f"cache_{name}"
        folder.mkdir()
        (folder / "cache_config.json").write_text(text)
        expected = "invalid JSON" if name == "invalid" else "holds a JSON array, expected a JSON object"
        cases.append((builder(data, folder, "--image_dir", pages_with_bad_urls / "images"),
                      [folder / "cache_config.json", expected]))
    before = tree_hashes(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: run(case[0]), cases))
    for (args, needles), (code, _, err) in zip(cases, results):
        one_error(code, err, *needles)
    assert tree_hashes(tmp_path) == before


def test_cache_builder_masks_control_characters_and_needs_images_to_resolve(pages_with_bad_urls, tmp_path):
    # TFRecords given straight to the builder: nothing is written to the datasets cache or the temporary folder
    # (both pointed at empty folders here), whether the build succeeds or fails.
    data, images = pages_with_bad_urls / "pages.tfrecord", pages_with_bad_urls / "images"
    hf_home, tmp = tmp_path / "hf_home", tmp_path / "tmp"
    hf_home.mkdir()
    tmp.mkdir()
    elsewhere = {"HF_HOME": str(hf_home), "HF_DATASETS_CACHE": str(hf_home / "datasets"), "TMPDIR": str(tmp)}
    # NUL, newline and %00 in three URLs of each page: masked with a warning naming page, section and image; of the
    # others, one resolves and one has no file (partial coverage: a warning with the counts, per sample).
    code, out, err = run(builder(data, tmp_path / "cache", "--image_dir", images), env=elsewhere)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "page 'https://x/page1': 3 image reference(s) hold a NUL or another control character" in err
    assert "section 1, image 0: 'https://upload.example.org/1/nul\\x001.png'" in err
    assert "section 1, image 1: 'https://upload.example.org/1/enc%001.png'" in err
    assert "section 2, image 0: 'https://upload.example.org/1/line\\n1.png'" in err
    assert f"image folder {images} resolves 6 of 12 image reference(s)" in err
    summary = json.loads(out[out.index("{"):])
    assert summary["cache"]["image"] == 3
    # A folder that resolves none of them is an error, unless the images are absent on purpose.
    empty = tmp_path / "empty"
    empty.mkdir()
    before = tree_hashes(tmp_path / "cache")
    code, _, err = run(builder(data, tmp_path / "cache", "--image_dir", empty), env=elsewhere)
    one_error(code, err, f"image folder {empty} resolves none of the", "--allow_missing_images")
    # (torch itself makes a `torchinductor_<user>` folder in the temporary folder when imported: not ours.)
    assert list(hf_home.rglob("*")) == [] and [p for p in tmp.iterdir() if not p.name.startswith("torchinductor")] == []
    assert {k: v for k, v in tree_hashes(tmp_path / "cache").items() if "shard" not in k} == {
        k: v for k, v in before.items() if "shard" not in k}


# ------------------------------------------------------------------------------------------- run_summarization


def training(sample, output_dir, *extra):
    return ["run_summarization.py", "--train_files", sample / "wikiweb2m-sample.tfrecord.gz",
            "--config_overrides", "hidden_size=32,num_hidden_layers=4,ffn_dim=64,num_attention_heads=4,"
            "max_position_embeddings=512", "--tokenizer_vocab_size", "400", "--neighbor_encoder_config", TINY_CLIP_JSON,
            "--neighbor_encoder_pretrained", "none", "--output_dir", output_dir, "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--max_train_samples", "8", "--max_source_length", "128",
            "--max_target_length", "24", "--report_to", "none", "--use_cpu", "--data_report_examples", "4", *extra]


def weights_file(path, format="pt", cut=None):
    from safetensors.numpy import save

    data = save({"model.decoder.embed_tokens.weight": np.zeros((64, 32), dtype=np.float32)}, metadata={"format": format})
    path.write_bytes(data[:cut] if cut else data)


def test_damaged_checkpoints_and_ranges_are_one_line_before_any_work(sample, tmp_path):
    opt_config = {"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 64,
                  "num_attention_heads": 4, "vocab_size": 64, "max_position_embeddings": 512}
    folders = {}

    def folder(name, files):
        path = folders[name] = tmp_path / name
        path.mkdir()
        for file, content in files.items():
            if isinstance(content, tuple):
                weights_file(path / file, *content)
            else:
                (path / file).write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    truncated = folder("truncated", {"config.json": opt_config, "model.safetensors": ("pt", 200)})
    foreign = folder("foreign", {"config.json": opt_config, "model.safetensors": ("mmgl-embedding-shard/1",)})
    as_list = folder("list", {"config.json": [opt_config], "model.safetensors": ("pt",)})
    contradicting = folder("contradicting", {
        "config.json": {**opt_config, "model_type": "mmgl", "neighbor_mode": "self_attention", "max_text_neighbors": 11},
        "processor_config.json": {"context": "all", "neighbor_encoding": "ca_e", "max_text_neighbors": 11},
        "model.safetensors": ("pt",)})
    resume = folder("checkpoint-2", {"trainer_state.json": {"global_step": 2}, "config.json": opt_config})
    out = tmp_path / "out"
    out.mkdir()
    (out / "all_results.json").write_text('{"eval_rougeL": 0.5}')
    weights_file(out / "model.safetensors")
    cases = [
        (["--model_name_or_path", truncated, "--do_eval"], [truncated / "model.safetensors", "truncated"]),
        (["--model_name_or_path", foreign, "--do_eval"],
         [foreign / "model.safetensors", "format 'mmgl-embedding-shard/1', expected 'pt'"]),
        (["--model_name_or_path", as_list, "--do_eval"], [as_list / "config.json", "holds a JSON array"]),
        (["--model_name_or_path", contradicting, "--do_eval"],
         [contradicting, "processor_config.json and config.json contradict each other",
          "neighbor_encoding 'ca_e'", "needs neighbor_mode 'cross_attention', config.json has 'self_attention'"]),
        (["--do_train", "--resume_from_checkpoint", resume],
         [resume / "model.safetensors", "no such file; expected the weights of the checkpoint to resume"]),
        (["--do_eval", "--max_eval_samples", "0"], ["--max_eval_samples 0 leaves none of the", "'val' split"]),
        (["--do_train", "--preprocessing_num_workers", "0"], ["--preprocessing_num_workers must be >= 1, got 0"]),
        (["--do_train", "--max_train_samples", "-1"], ["--max_train_samples must be >= 0, got -1"]),
        (["--do_predict", "--generation_max_length", "40"],
         ["--generation_max_length 40 is not used", "give --generation_max_new_tokens"]),
    ]
    before = tree_hashes(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: run(training(sample, out, *map(str, case[0]))), cases))
    for (args, needles), (code, _, err) in zip(cases, results):
        one_error(code, err, *needles)
    assert tree_hashes(tmp_path) == before


def test_checkpoint_save_on_a_full_disk_is_one_line_and_keeps_what_was_there(sample, tmp_path, tmpfs):
    disk = tmpfs("512k")
    out = disk / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(training(sample, out, "--do_train", "--image_dir", sample / "images", "--embedding_cache_dir",
                                tmp_path / "cache", "--save_strategy", "steps", "--save_steps", "1"))
    checkpoints = disk / "out-checkpoints"  # the default --checkpoint_dir, beside the result folder
    one_error(code, err, f"no space left on device writing {checkpoints / 'checkpoint-1'}", "bytes needed",
              "the incomplete checkpoint-1 was removed")
    assert (out / "notes.txt").read_text() == "mine" and not (checkpoints / "checkpoint-1").exists()


def test_export_on_a_full_disk_is_one_line_and_keeps_the_previous_result_folder(sample, tmp_path, tmpfs):
    disk = tmpfs("256k")
    out = disk / "out"
    out.mkdir()
    (out / "all_results.json").write_text('{"eval_rougeL": 0.5}')
    before = tree_hashes(disk)
    code, _, err = run(training(sample, out, "--do_train", "--image_dir", sample / "images", "--embedding_cache_dir",
                                tmp_path / "cache", "--save_strategy", "no"))
    one_error(code, err, f"no space left on device writing {out}", "bytes needed",
              f"the previous contents of {out} are kept")
    assert tree_hashes(disk) == before  # the old result folder as it was, no half-built one beside it
    assert sorted(p.name for p in disk.iterdir()) == ["out"]


def test_an_image_folder_resolving_nothing_stops_training_unless_said(sample, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = training(sample, tmp_path / "out", "--do_train", "--image_dir", empty, "--embedding_cache_dir",
                    tmp_path / "cache", "--max_steps", "1")
    code, _, err = run(args)
    one_error(code, err, f"image folder {empty} resolves none of the", "--allow_missing_images")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cache_build_on_a_full_disk_names_the_shard_and_keeps_what_was_there(sample, tmp_path, tmpfs):
    disk = tmpfs("16k")
    cache = disk / "cache"
    cache.mkdir()
    (cache / "notes.txt").write_text("mine")
    data = tmp_path / "data"
    assert ww.main([str(sample / "wikiweb2m-sample.tfrecord.gz"), str(data)]) == 0
    code, _, err = run(builder(data, cache, "--image_dir", sample / "images"))
    line = one_error(code, err, f"no space left on device writing {cache / 'text'}", "bytes needed", "bytes free")
    assert "nothing was written" in line
    assert (cache / "notes.txt").read_text() == "mine"
    assert [p.name for p in (cache / "text").iterdir()] == []  # no temporary shard left behind
