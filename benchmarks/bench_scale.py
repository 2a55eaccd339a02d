"""How the data path's memory, startup and disk grow with the number of pages (issue: full WikiWeb2M on
one machine).

Generates N pages by replicating the real pages of ``../shared/data/realwiki`` with a per-copy unique
suffix on every text (real lengths, no two texts shared across copies), then for each N:

* first start: collect and tokenise every text into the memory-mapped token store, save it (CPU s, disk);
* restart: open the store and call `prepare_token_cache` on the same (covered) table, the startup of a
  training run (CPU s per page);
* steady state: resolve the ids of every text of every sample section (as `build_example` does) in the
  main process and in two forked workers, and read resident memory from ``/proc`` (RSS growth of the
  main process; private dirty memory of each worker, i.e. what it does not share with the main process).

It prints per-page figures, the extrapolation to 2M pages, and the ratio between consecutive N (flat
per-page figures mean linear totals).

The embedding-cache part (``--part embeddings``) writes, for every node text and image of the N pages, a
random float16 vector of width 512 (ViT-B/32's) into shards as the builder does (the frozen encoder's own
compute is left out: it depends on the accelerator, not on this code), then measures:

* first start: the shards plus the key index (`build_embedding_cache.save_index`), CPU s and disk per page;
* restart: opening the complete cache and checking its coverage record, the startup of a training run (CPU s
  per page), side by side with opening it without an index (every shard header read: the previous reader's
  work at every start);
* steady state: looking up every text and image of every page in the main process and in two forked
  workers (RssAnon growth of the main process, Private_Dirty growth of each worker), and the lookup time.

Usage::

    python benchmarks/bench_scale.py --pages 1000 4000 16000                  # token store
    python benchmarks/bench_scale.py --part embeddings --pages 2000 8000 32000  # embedding cache
    python benchmarks/bench_scale.py --part preparation --pages 2000          # first-start steps per page
    python benchmarks/bench_scale.py --part run --pages 8000 24000 48000      # whole training runs (~20 min)
    python benchmarks/bench_scale.py --part command --pages 6000 12000 24000  # the command as a user runs it
    python benchmarks/bench_scale.py --part manifest --pages 100000 400000    # image manifest, per image

``--part preparation`` times, per page and on one core, the conversion of TFRecords to the Arrow table, the
collection of the neighbour inputs, and the frozen ViT-B/32 encoder per text and per image.

``--part run`` runs `run_summarization.main()` itself at each N (the README's SA-E command with an embedding cache
and a token store, a tiny OPT and CLIP, 2 DataLoader workers, 40 steps) twice: a first start that prepares
everything and a restart that finds it prepared. It prints the CPU seconds up to the first training step and per
phase (the frozen encoder's forward passes apart), the main process's peak anonymous memory (also per phase), each
worker's private memory, and their slopes per page between consecutive N.

``--part command`` (issue 24) runs ``python run_summarization.py`` itself, as a user does, for each N: the same
SA-E command (converted Arrow folder, or ``--source tfrecord``; new embedding cache and token store; a saved
tokenizer; 2 DataLoader workers; ``--steps`` training steps, 2 by default), first start then restart. Each run is one
process tree under ``/usr/bin/time -v``; the main process's maximum resident set is the one ``time`` reports (file-
backed pages of memory maps included, as any user or scheduler counts them), every other process of the tree
(the DataLoader workers) is sampled every 50 ms for its peak (`VmHWM`). It prints the slope per extra page between
consecutive N of the main process (first start and restart) and of the largest child.
"""
from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from processing.data.bpe_tokenizer import train_bpe_tokenizer  # noqa: E402
from processing.data.wikiweb2m import iter_pages  # noqa: E402
from processing.image_source import clip_image_processor  # noqa: E402
from processing.page_graph import PageGraph  # noqa: E402
from processing.processing_mmgl import MMGLProcessor  # noqa: E402
from processing.token_cache import MMGLTokenCache  # noqa: E402
from processing.data.token_store import build_token_cache

REALWIKI = ROOT.parent / "shared" / "data" / "realwiki" / "wikiweb2m-dev.tfrecord.gz"
TEXT_FIELDS = ("page_title", "clean_page_description", "section_title", "section_text", "section_clean_1st_sentence",
               "section_rest_sentence")
FULL_PAGES = 2_000_000


def _unique(value, tag):
    if isinstance(value, str):
        return f"{value} {tag}" if value else value
    if isinstance(value, list):
        return [_unique(v, tag) for v in value]
    return value


def make_rows(base: list[dict], n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = copy.copy(base[i % len(base)])
        tag = f"[copy {i // len(base)}]"
        for name in TEXT_FIELDS:
            row[name] = _unique(row[name], tag)
        row["page_url"] = f"{row['page_url']}#{i}"
        rows.append(row)
    return rows


def make_pages(base: list[dict], n: int) -> list[PageGraph]:
    return [PageGraph.from_wikiweb2m(row) for row in make_rows(base, n)]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        # RssAnon: the process's own memory; the mapped store's pages are shared page cache (RssFile).
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def private_kib(pid: int | str = "self") -> int:
    # Private_Dirty: memory the worker no longer shares with the main process (its own allocations and the
    # copy-on-write pages it touched); clean mapped pages of the store are shared.
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def resolve_all(processor, pages) -> int:
    count = 0
    for graph in pages:
        for s in graph.sample_sections():
            texts = [processor.target_text(graph, s), graph.summaries[s]]
            texts += [node.text for node in graph.nodes if node.text][: processor.max_text_neighbors]
            count += len(processor._lm_ids_many(texts))
    return count


def worker(path, identity, options, image_processor, tokenizer, base, n, conn):
    # The worker makes its own pages first: touching the main process's page objects would count their
    # copy-on-write pages, which a real run does not have (its pages are an Arrow table).
    pages = make_pages(base, n)
    gc.collect()
    before = private_kib()
    processor = MMGLProcessor(image_processor, tokenizer, **options)
    processor.set_token_cache(MMGLTokenCache.load(path, identity=identity))
    resolve_all(processor, pages)
    conn.send(private_kib() - before)
    conn.close()


def page_inputs(pages: list[PageGraph]) -> tuple[list[list[str]], list[list[str]]]:
    """Per page: its node texts, and a content key (sha256, as the fetcher's manifest records) per image node."""
    texts, images = [], []
    for graph in pages:
        texts.append([node.text for node in graph.nodes if node.text])
        images.append([hashlib.sha256(f"{graph.page_id}|{j}".encode()).hexdigest()
                       for j, node in enumerate(graph.nodes) if node.kind == "image"])
    return texts, images


def write_cache(cache_dir: Path, texts: list[list[str]], images: list[list[str]], width: int = 512) -> None:
    """A complete cache as the builder writes it (config, shards of 4,096 rows, index), random vectors."""
    import numpy as np
    import torch

    from processing.atomic_write import atomic_write_bytes
    from processing.data.build_embedding_cache import _ShardWriter, save_index
    from processing.embedding_cache import CACHE_FORMAT, CONFIG_NAME, EmbeddingCache, encoder_identity, text_key

    config = {"format": CACHE_FORMAT, "model_name": "bench", "pretrained": None, "config_sha256": "bench",
              "weights_sha256": "bench", "embed_dim": width, "dtype": "float16"}
    cache_dir.mkdir(parents=True)
    atomic_write_bytes(cache_dir / CONFIG_NAME, json.dumps(config).encode())
    rng = np.random.default_rng(0)
    for kind, keys in (("text", list(dict.fromkeys(text_key(t) for page in texts for t in page))),
                       ("image", list(dict.fromkeys(k for page in images for k in page)))):
        (cache_dir / kind).mkdir()
        writer = _ShardWriter(cache_dir / kind, 0, torch.float16, 4096, encoder_identity(config))
        for start in range(0, len(keys), 4096):
            batch = keys[start:start + 4096]
            writer.add(batch, torch.from_numpy(rng.standard_normal((len(batch), width), dtype=np.float32)))
        writer.flush()
    save_index(EmbeddingCache(cache_dir), ["bench-table"])


def lookup_all(cache, texts, images) -> int:
    found = 0
    for page_texts, page_images in zip(texts, images):
        found += sum(cache.get_text(t) is not None for t in page_texts)
        found += sum(cache.get_image(None, sha256=k) is not None for k in page_images)
    return found


def previous_lookup_us(cache_dir: Path, texts, images) -> float:
    """Microseconds per lookup of the previous reader's path: key -> (shard, row) in a dict, shards loaded whole."""
    from safetensors.torch import load_file

    from processing.embedding_cache import text_key

    rows = {}
    for kind in ("text", "image"):
        for path in sorted((cache_dir / kind).glob("shard-*.safetensors")):
            embeddings = load_file(path)["embeddings"]
            with open(path, "rb") as handle:  # the keys, from the header
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
            for row, key in enumerate(json.loads(header["__metadata__"]["keys"])):
                rows[(kind, key)] = (embeddings, row)
    t = time.perf_counter()
    count = 0
    for page_texts, page_images in zip(texts, images):
        for text in page_texts:
            embeddings, row = rows[("text", text_key(text))]
            embeddings[row].clone()
        for key in page_images:
            embeddings, row = rows[("image", key)]
            embeddings[row].clone()
        count += len(page_texts) + len(page_images)
    return (time.perf_counter() - t) / count * 1e6


def embedding_worker(cache_dir, base, n, conn):
    from processing.embedding_cache import EmbeddingCache

    texts, images = page_inputs(make_pages(base, n))
    gc.collect()
    before = private_kib()
    lookup_all(EmbeddingCache(cache_dir), texts, images)
    conn.send(private_kib() - before)
    conn.close()


def bench_embeddings(base: list[dict], sizes: list[int]) -> None:
    import multiprocessing

    from processing.data.build_embedding_cache import _set_aside_damaged_files
    from processing.embedding_cache import INDEX_NAME, EmbeddingCache

    rows = []
    for n in sizes:
        texts, images = page_inputs(make_pages(base, n))
        gc.collect()
        with tempfile.TemporaryDirectory() as tmp:
            cache_dir = Path(tmp) / "cache"
            t = cpu()
            write_cache(cache_dir, texts, images)
            first = cpu() - t
            disk = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
            rss0 = rss_kib()
            t = cpu()
            cache = EmbeddingCache(cache_dir)
            assert cache.covers("bench-table") and cache.index_fresh
            restart = cpu() - t
            lookups = sum(map(len, texts)) + sum(map(len, images))
            t = time.perf_counter()
            found = lookup_all(cache, texts, images)
            lookup_s = time.perf_counter() - t
            assert found == lookups
            steady = rss_kib() - rss0
            del cache
            # The previous reader's lookup, side by side: a dict of every key to its row of a loaded shard.
            previous = previous_lookup_us(cache_dir, texts, images)
            ctx = multiprocessing.get_context("fork")
            workers = []
            for _ in range(2):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=embedding_worker, args=(cache_dir, base, n, child))
                proc.start()
                workers.append((proc, parent))
            grow = [parent.recv() for _, parent in workers]
            for proc, _ in workers:
                proc.join()
            # A build's start over the complete cache: now (shards the index records are not read) and as the
            # previous builder did at every start (every shard loaded and checksummed: --verify).
            t = cpu()
            assert _set_aside_damaged_files(cache_dir)[1] == 0
            build_start = cpu() - t
            t = cpu()
            _set_aside_damaged_files(cache_dir, verify=True)
            verify_start = cpu() - t
            # The previous reader's start: every shard header read (here: the index set aside).
            os.replace(cache_dir / INDEX_NAME, Path(tmp) / INDEX_NAME)
            t = cpu()
            EmbeddingCache(cache_dir)
            headers = cpu() - t
        rows.append(dict(n=n, keys=lookups, first=first, restart=restart, headers=headers, disk=disk, steady=steady,
                         workers=grow, lookup_us=lookup_s / lookups * 1e6, previous_us=previous, build_start=build_start,
                         verify_start=verify_start))
        print(f"N={n:>7,} pages: {lookups:,} lookups, first start {first:.1f} CPU s, restart {restart * 1e3:.1f} CPU ms "
              f"(from shard headers: {headers * 1e3:.0f} ms), build start {build_start * 1e3:.1f} CPU ms (every shard "
              f"checksummed: {verify_start * 1e3:.0f} ms), disk {disk / 2**20:.0f} MiB, lookup {lookup_s / lookups * 1e6:.1f} "
              f"us (dict of loaded shards: {previous:.1f} us), main RSS growth {steady / 1024:.1f} MiB, workers' private growth {[round(g / 1024, 1) for g in grow]} MiB")
    print()
    print(f"{'N':>8} {'1st CPU ms/page':>16} {'restart CPU us/page':>20} {'headers CPU us/page':>20} {'disk KiB/page':>14} "
          f"{'build start us/page':>20} {'verify-all us/page':>19} {'main RSS KiB/page':>18} {'worker KiB/page':>16} "
          f"{'lookup us':>10} {'dict lookup us':>15}")
    for r in rows:
        n = r["n"]
        print(f"{n:>8,} {r['first'] / n * 1e3:>16.2f} {r['restart'] / n * 1e6:>20.2f} {r['headers'] / n * 1e6:>20.2f} "
              f"{r['disk'] / n / 1024:>14.2f} {r['build_start'] / n * 1e6:>20.2f} {r['verify_start'] / n * 1e6:>19.2f} "
              f"{r['steady'] / n:>18.3f} {max(r['workers']) / n:>16.3f} {r['lookup_us']:>10.1f} {r['previous_us']:>15.1f}")
    last = rows[-1]
    n = last["n"]
    print(f"\nextrapolated to {FULL_PAGES:,} pages (linear from N={n:,}; labelled as an extrapolation):")
    print(f"  restart (open + coverage check): {last['restart'] / n * FULL_PAGES / 60:.3f} CPU-minutes; "
          f"from shard headers: {last['headers'] / n * FULL_PAGES / 60:.2f} CPU-minutes")
    print(f"  build start: {last['build_start'] / n * FULL_PAGES / 60:.3f} CPU-minutes; every shard checksummed (the "
          f"previous builder's start, now --verify): {last['verify_start'] / n * FULL_PAGES / 60:.1f} CPU-minutes")
    print(f"  disk: {last['disk'] / n * FULL_PAGES / 2**30:.1f} GiB; main RSS growth: "
          f"{last['steady'] / n * FULL_PAGES / 2**20:.2f} GiB; per worker: {max(last['workers']) / n * FULL_PAGES / 2**20:.2f} GiB")


def bench_preparation(base: list[dict], n: int) -> None:
    """CPU seconds per page of each first-start step, on one core (torch and tokenizers single-threaded):
    conversion of TFRecords to the Arrow table, collection of the neighbour inputs (`all` + SA-E: a page graph
    per page), and the frozen encoder ViT-B/32 (random init: the pretrained one's compute) per text and per image
    (decode and preprocessing included)."""
    import torch

    from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
    from processing.data.page_table import open_page_table
    from processing.data.tfrecord_io import write_tfrecord
    from processing.data.wikiweb2m import main as convert
    from processing.data.wikiweb2m import serialize_page
    from processing.image_source import load_rgb_image, pixel_values
    from processing.data.neighbor_inputs import collect_neighbor_inputs
    from processing.data.sample_index import PageGraphIndex

    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "pages.tfrecord.gz"
        write_tfrecord(records, (serialize_page(row) for row in make_rows(base, n)))
        t = cpu()
        convert([str(records), str(Path(tmp) / "pages")])
        conversion = cpu() - t
        pages = open_page_table(str(Path(tmp) / "pages"))
        t = cpu()
        inputs = collect_neighbor_inputs(PageGraphIndex(pages), "all", "sa_e", 11, 5, REALWIKI.parent / "images")
        collection = cpu() - t
    encoder = MMGLNeighborEncoder.from_settings("ViT-B-32")
    texts = inputs.texts[:64]
    t = cpu()
    with torch.no_grad():
        encoder.embed_texts(texts)
    per_text = (cpu() - t) / len(texts)
    files = sorted((REALWIKI.parent / "images").iterdir())[:32]
    processor = clip_image_processor("ViT-B-32")
    t = cpu()
    for start in range(0, len(files), 16):
        encoder.encode_image(pixel_values(processor, [load_rgb_image(str(f)) for f in files[start:start + 16]]))
    per_image = (cpu() - t) / len(files)
    texts_per_page = len(inputs.texts) / n
    images_per_page = 3.8e6 / FULL_PAGES  # WikiWeb2M: 3.8M images on 2M pages
    print(f"N={n:,} pages ({inputs.texts and len(inputs.texts):,} unique neighbour texts, {texts_per_page:.2f} per page)")
    print(f"  conversion (TFRecord -> Arrow): {conversion / n * 1e3:.2f} CPU ms/page")
    print(f"  neighbour-input collection: {collection / n * 1e3:.2f} CPU ms/page")
    print(f"  ViT-B/32 on one core: {per_text * 1e3:.0f} CPU ms/text, {per_image * 1e3:.0f} CPU ms/image")
    hours = {"conversion": conversion / n, "collection": collection / n,
             "text encoder": per_text * texts_per_page, "image encoder": per_image * images_per_page}
    print(f"extrapolated to {FULL_PAGES:,} pages, {images_per_page:.1f} images per page (CPU-hours on one core):")
    for name, seconds in hours.items():
        print(f"  {name}: {seconds * FULL_PAGES / 3600:.2f}")


# Runs `run_summarization.main()` in a child process and records, at the first training step, the CPU seconds of
# the startup (and of its phases), and at the last step the anonymous memory of the main process (peak and now) and
# the private memory of each DataLoader worker.
RUN_PROBE = r"""
import json, os, sys, threading, time
sys.path.insert(0, os.environ["MMGL_ROOT"])
sys.path.insert(0, os.path.join(os.environ["MMGL_ROOT"], "benchmarks"))
import psutil
import transformers
import run_summarization as rs
from bench_scale import cpu, private_kib, rss_kib

record, peak = {"phases": {}, "phase_peak": {}}, [0, 0]  # peak RssAnon of the run, of the current phase
def timed(name, fn):
    def wrapper(*args, **kwargs):
        start, peak[1] = cpu(), rss_kib()
        try:
            return fn(*args, **kwargs)
        finally:
            record["phases"][name] = record["phases"].get(name, 0.0) + cpu() - start
            record["phase_peak"][name] = max(peak[1], rss_kib())
    return wrapper
for name in ("open_page_table", "summarization_samples", "PageGraphIndex", "prepare_token_cache",
             "build_embedding_cache", "data_report"):
    setattr(rs, name, timed(name, getattr(rs, name)))
# The frozen encoder's own compute (its forward passes), inside build_embedding_cache: what the first-start
# target leaves out.
from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
for name in ("encode_text", "encode_image"):
    setattr(MMGLNeighborEncoder, name, timed("encoder " + name, getattr(MMGLNeighborEncoder, name)))

def sample():
    while True:
        now = rss_kib()
        peak[:] = max(peak[0], now), max(peak[1], now)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
steps, original = int(os.environ["MMGL_BENCH_STEPS"]), transformers.Trainer.training_step
def training_step(self, *args, **kwargs):
    record["steps"] = record.get("steps", 0) + 1
    if record["steps"] == 1:
        record["startup_cpu"] = cpu()
        record["main_rss_anon_first_step"] = rss_kib()
    if record["steps"] == steps:
        workers = [c.pid for c in psutil.Process().children()]
        record.update(main_rss_anon=rss_kib(), main_peak_rss_anon=peak[0],
                      workers_private=[private_kib(pid) for pid in workers],
                      workers_rss_anon=[rss_kib(pid) for pid in workers])
        with open(os.environ["MMGL_BENCH_PROBE"], "w") as f:
            json.dump(record, f)
    return original(self, *args, **kwargs)
transformers.Trainer.training_step = training_step
rs.main(sys.argv[1:])
"""


def bench_run(base: list[dict], sizes: list[int], steps: int = 40) -> None:
    """A whole training run's startup and memory (`run_summarization.main()`, the README's SA-E configuration with
    an embedding cache and a token store, 2 DataLoader workers, a tiny OPT and the tiny CLIP of the demo) at each N:
    the first start (conversion before it, timed apart) and a restart with everything prepared."""
    import subprocess

    from processing.data.tfrecord_io import write_tfrecord
    from processing.data.wikiweb2m import serialize_page

    images = REALWIKI.parent / "images"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_bpe_tokenizer([t for row in base for t in row["section_text"]], vocab_size=8000)
        tokenizer.save_pretrained(tmp / "tokenizer")
        env = dict(os.environ, MMGL_ROOT=str(ROOT), MMGL_BENCH_STEPS=str(steps), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        rows = []
        for n in sizes:
            work = tmp / f"n{n}"
            records = work / "pages.tfrecord.gz"
            records.parent.mkdir()
            write_tfrecord(records, (serialize_page(row) for row in make_rows(base, n)))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "processing.data.wikiweb2m", str(records), str(work / "data")],
                           check=True, env=env, cwd=ROOT, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            conversion = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            starts = {}
            for start in ("first", "restart"):
                probe = work / f"{start}.json"
                command = [
                    sys.executable, "-c", RUN_PROBE, "--train_files", str(work / "data"), "--image_dir", str(images),
                    "--embedding_cache_dir", str(work / "cache"), "--token_cache_file", str(work / "tokens.bin"),
                    "--tokenizer_name", str(tmp / "tokenizer"), "--context", "all", "--neighbor_encoding", "sa_e",
                    "--position_encoding", "laplacian",
                    "--neighbor_encoder_config", str(ROOT / "demo" / "tiny_clip.json"),
                    "--neighbor_encoder_pretrained", "none", "--config_overrides",
                    "hidden_size=64,num_hidden_layers=2,ffn_dim=128,num_attention_heads=4,max_position_embeddings=512",
                    "--max_source_length", "256", "--max_target_length", "32", "--do_train", "--max_steps", str(steps),
                    "--per_device_train_batch_size", "8", "--dataloader_num_workers", "2", "--save_strategy", "no",
                    "--report_to", "none", "--use_cpu", "--seed", "0", "--output_dir", str(work / f"out-{start}"),
                    "--disable_tqdm", "true",
                ]
                done = subprocess.run(command, env=dict(env, MMGL_BENCH_PROBE=str(probe)), cwd=ROOT,
                                      capture_output=True, text=True)
                if done.returncode or not probe.exists():
                    sys.exit(f"the {start} run at N={n} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                starts[start] = json.loads(probe.read_text())
            disk = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file())
            disk += (work / "tokens.bin").stat().st_size
            rows.append(dict(n=n, conversion=conversion, disk=disk, **starts))
            first, again = starts["first"], starts["restart"]
            print(f"N={n:>7,} pages: conversion {conversion:.1f} CPU s; first start {first['startup_cpu']:.1f} CPU s "
                  f"{ {k: round(v, 2) for k, v in first['phases'].items()} }; restart {again['startup_cpu']:.1f} CPU s "
                  f"{ {k: round(v, 2) for k, v in again['phases'].items()} }; main RssAnon peak "
                  f"{again['main_peak_rss_anon'] / 1024:.0f} MiB "
                  f"(first start {first['main_peak_rss_anon'] / 1024:.0f}), "
                  f"workers' private {[round(k / 1024, 1) for k in again['workers_private']]} MiB; disk "
                  f"{disk / 2**20:.1f} MiB; first start's peak RssAnon per phase (MiB) "
                  f"{ {k: round(v / 1024) for k, v in first['phase_peak'].items()} }", flush=True)
    print("\nper page, as the slope between consecutive N (the constant part: imports, model, encoder, cancels):")
    print(f"{'N':>16} {'1st start CPU ms':>17} {'restart CPU us':>15} {'main peak KiB':>14} {'main at step KiB':>17} "
          f"{'workers KiB':>12} {'1st-start main peak KiB':>24}")
    for a, b in zip(rows, rows[1:]):
        dn = b["n"] - a["n"]

        def slope(start, key):
            va, vb = a[start][key], b[start][key]
            return (sum(vb) - sum(va)) / dn if isinstance(va, list) else (vb - va) / dn

        print(f"{a['n']:>7,}->{b['n']:<8,} {slope('first', 'startup_cpu') * 1e3:>17.2f} "
              f"{slope('restart', 'startup_cpu') * 1e6:>15.1f} {slope('restart', 'main_peak_rss_anon'):>14.3f} "
              f"{slope('restart', 'main_rss_anon'):>17.3f} {slope('restart', 'workers_private'):>12.3f} "
              f"{slope('first', 'main_peak_rss_anon'):>24.3f}")
    # From the last two sizes: below them bounded state still fills up (the page-graph LRU, the data report's
    # examples, a token-store block of 4,096 pages) and would read as growth.
    a, b = rows[-2], rows[-1]
    dn = b["n"] - a["n"]
    restart = (b["restart"]["startup_cpu"] - a["restart"]["startup_cpu"]) / dn
    memory = sum((b["restart"][k] if isinstance(b["restart"][k], int) else sum(b["restart"][k]))
                 - (a["restart"][k] if isinstance(a["restart"][k], int) else sum(a["restart"][k]))
                 for k in ("main_peak_rss_anon", "workers_private")) / dn
    print(f"\nextrapolated to {FULL_PAGES:,} pages (slope {a['n']:,} -> {b['n']:,}; labelled as an extrapolation):")
    print(f"  restart startup: {b['restart']['startup_cpu'] / 60:.2f} CPU-minutes at N={b['n']:,} "
          f"+ {restart * (FULL_PAGES - b['n']) / 60:.2f} for the rest")
    print(f"  data-path memory growth, main peak + 2 workers: {memory:.3f} KiB/page -> "
          f"{memory * FULL_PAGES / 2**20:.2f} GiB")
    first_peak = (b["first"]["main_peak_rss_anon"] - a["first"]["main_peak_rss_anon"]) / dn
    print(f"  first start, main peak: {first_peak:.3f} KiB/page -> {first_peak * FULL_PAGES / 2**20:.2f} GiB "
          f"(+ {b['first']['main_peak_rss_anon'] / 2**20:.2f} GiB at N={b['n']:,})")
    first = (b["first"]["startup_cpu"] - a["first"]["startup_cpu"] + b["conversion"] - a["conversion"]) / dn
    print(f"  first start incl. conversion (tiny encoder): {first * FULL_PAGES / 3600:.2f} CPU-hours")

    def encoder_cpu(r):
        return sum(v for k, v in r["first"]["phases"].items() if k.startswith("encoder "))

    without = first - (encoder_cpu(b) - encoder_cpu(a)) / dn
    print(f"  first start incl. conversion, without the encoder's forward passes: {without * 1e3:.2f} CPU ms/page -> "
          f"{without * FULL_PAGES / 3600:.2f} CPU-hours (tokenisation, hashing, image decoding counted)")
    print(f"  disk (token store + embedding cache; images shared by the copies): "
          f"{b['disk'] / b['n'] / 1024:.2f} KiB/page")


def _tree_memory(root: int, peaks: dict, stop) -> None:
    """Samples every process of the tree under `root` every 50 ms: its peak resident set (`VmHWM`, exact: the kernel
    keeps it) and the most anonymous / file-backed memory seen, by process (main process, DataLoader workers, ...)."""
    import psutil

    def status(pid: int) -> dict:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                    if k in ("VmHWM", "RssAnon", "RssFile", "RssShmem")}

    try:
        top = psutil.Process(root)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [top] + top.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for proc in procs:
            try:
                values, name = status(proc.pid), " ".join(proc.cmdline()[:3])[-60:]
            except (OSError, psutil.Error):
                continue
            entry = peaks.setdefault(proc.pid, {"name": name, "parent": proc.ppid()})
            for key, value in values.items():
                entry[key] = max(entry.get(key, 0), value)
        stop.wait(0.05)


def run_measured(command: list[str], env: dict, log: Path) -> dict:
    """Runs `command` under `/usr/bin/time -v` (the main process's maximum resident set, as a user would measure it)
    while sampling every process of its tree (`_tree_memory`). Returns per process peaks and the wall / CPU time."""
    import subprocess
    import threading

    timing = log.with_suffix(".time")
    peaks: dict = {}
    stop = threading.Event()
    with open(log, "w") as out:
        start = time.time()
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(timing), *command], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=_tree_memory, args=(proc.pid, peaks, stop), daemon=True)
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
    if code:
        sys.exit(f"{' '.join(command[:3])} failed ({code}); its log: {log}\n{log.read_text()[-3000:]}")
    fields = dict(line.strip().rsplit(": ", 1) for line in timing.read_text().splitlines() if ": " in line)
    main_pid = next((pid for pid, e in peaks.items() if e["parent"] == proc.pid), None)
    main = peaks.get(main_pid, {})
    others = [e for pid, e in peaks.items() if pid not in (proc.pid, main_pid)]
    return dict(
        wall=time.time() - start,
        cpu=float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]),
        main_max_rss=int(fields["Maximum resident set size (kbytes)"]),
        main_anon=main.get("RssAnon", 0), main_file=main.get("RssFile", 0),
        children_max_rss=[e.get("VmHWM", 0) for e in others], children_anon=[e.get("RssAnon", 0) for e in others],
        children=[e["name"] for e in others],
    )


def bench_command(base: list[dict], sizes: list[int], steps: int = 2, source: str = "arrow") -> None:
    """The whole `run_summarization.py` first start and restart as a user runs it (issue 24): one process tree per
    run, the maximum resident set of each process (main process by `/usr/bin/time -v`, DataLoader workers and any
    other child by their `VmHWM`), at each N, and the slope per page between consecutive N."""
    import subprocess

    from processing.data.tfrecord_io import write_tfrecord
    from processing.data.wikiweb2m import serialize_page

    images = REALWIKI.parent / "images"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = train_bpe_tokenizer([t for row in base for t in row["section_text"]], vocab_size=8000)
        tokenizer.save_pretrained(tmp / "tokenizer")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS="1")
        for n in sizes:
            work = tmp / f"n{n}"
            records = work / "pages.tfrecord.gz"
            records.parent.mkdir()
            write_tfrecord(records, (serialize_page(row) for row in make_rows(base, n)))
            data = records
            if source == "arrow":
                subprocess.run([sys.executable, "-m", "processing.data.wikiweb2m", str(records), str(work / "data")],
                               check=True, env=env, cwd=ROOT, capture_output=True)
                data = work / "data"
            runs = {}
            for start in ("first", "restart"):
                runs[start] = run_measured([
                    sys.executable, str(ROOT / "run_summarization.py"), "--train_files", str(data),
                    "--image_dir", str(images), "--embedding_cache_dir", str(work / "cache"),
                    "--token_cache_file", str(work / "tokens.bin"), "--tokenizer_name", str(tmp / "tokenizer"),
                    "--context", "all", "--neighbor_encoding", "sa_e",
                    "--neighbor_encoder_config", str(ROOT / "demo" / "tiny_clip.json"),
                    "--neighbor_encoder_pretrained", "none", "--config_overrides",
                    "hidden_size=64,num_hidden_layers=2,ffn_dim=128,num_attention_heads=4,max_position_embeddings=512",
                    "--max_source_length", "256", "--max_target_length", "32", "--do_train", "--max_steps", str(steps),
                    "--per_device_train_batch_size", "8", "--dataloader_num_workers", "2", "--save_strategy", "no",
                    "--report_to", "none", "--use_cpu", "--seed", "0", "--output_dir", str(work / f"out-{start}"),
                    "--disable_tqdm", "true",
                ], env, work / f"{start}.log")
            rows.append(dict(n=n, **runs))
            for start, r in runs.items():
                print(f"N={n:>7,} {start:>7}: wall {r['wall']:.0f} s, CPU {r['cpu']:.0f} s; main max RSS "
                      f"{r['main_max_rss'] / 1024:.0f} MiB (most RssAnon {r['main_anon'] / 1024:.0f}, RssFile "
                      f"{r['main_file'] / 1024:.0f}); children max RSS "
                      f"{[round(k / 1024) for k in r['children_max_rss']]} MiB; load {os.getloadavg()[0]:.1f}",
                      flush=True)
    print("\nper extra page, as the slope between consecutive N (KiB; the fixed part cancels):")
    print(f"{'N':>16} {'1st main':>9} {'1st anon':>9} {'1st file':>9} {'1st child':>10} {'re main':>8} {'re child':>9}")
    for a, b in zip(rows, rows[1:]):
        dn = b["n"] - a["n"]

        def slope(start, key, pick=max):
            va, vb = a[start][key], b[start][key]
            return (pick(vb or [0]) - pick(va or [0])) / dn if isinstance(va, list) else (vb - va) / dn

        print(f"{a['n']:>7,}->{b['n']:<8,} {slope('first', 'main_max_rss'):>9.2f} {slope('first', 'main_anon'):>9.2f} "
              f"{slope('first', 'main_file'):>9.2f} {slope('first', 'children_max_rss'):>10.2f} "
              f"{slope('restart', 'main_max_rss'):>8.2f} {slope('restart', 'children_max_rss'):>9.2f}")
    a, b = rows[0], rows[-1]
    worst = max((b[s]["main_max_rss"] - a[s]["main_max_rss"]) / (b["n"] - a["n"]) for s in ("first", "restart"))
    peak = (b["first"]["main_max_rss"] + worst * (FULL_PAGES - b["n"])) / 2**20
    print(f"\nextrapolated to {FULL_PAGES:,} pages (main process, slope {a['n']:,} -> {b['n']:,}, the larger of first "
          f"start and restart): {worst:.2f} KiB/page -> {peak:.1f} GiB peak")


def _open_manifest(cls, path, urls, conn):
    gc.collect()
    before, t = rss_kib(), cpu()
    manifest = cls(path)
    opened, grown = cpu() - t, rss_kib() - before
    t = time.perf_counter()
    assert all(manifest.get(url)["url"] == url for url in urls)
    conn.send((opened, grown, (time.perf_counter() - t) / len(urls)))
    conn.close()


def bench_manifest(sizes: list[int]) -> None:
    """The image folder's manifest as the resolver reads it (`ManifestIndex`) against the fetcher's dict of records
    (`ImageManifest`, what the resolver read before), side by side: anonymous memory and CPU to open, and the time
    of one lookup, for N fetched images (records shaped like the fetcher's)."""
    import multiprocessing
    import random

    from processing.image_source import ImageManifest, ManifestIndex

    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "manifest.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for i in range(n):
                    sha = hashlib.sha256(str(i).encode()).hexdigest()
                    f.write(json.dumps({"url": f"https://upload.wikimedia.org/wikipedia/commons/{sha[0]}/{sha[:2]}/"
                                        f"Image_{i}_of_a_page.jpg", "status": "ok", "sha256": sha,
                                        "path": f"{sha[:2]}/{sha}.jpg", "bytes": 100_000 + i, "fetched_at": 1.7e9 + i},
                                       sort_keys=True) + "\n")
            urls = [json.loads(line)["url"] for line in random.Random(0).sample(path.read_text().splitlines(), 2000)]
            row = {}
            for name, cls in (("ManifestIndex", ManifestIndex), ("ImageManifest (dict of records)", ImageManifest)):
                # Each in a fresh forked process: memory another one freed would be reused and hide growth.
                parent, child = multiprocessing.get_context("fork").Pipe()
                proc = multiprocessing.get_context("fork").Process(target=_open_manifest, args=(cls, path, urls, child))
                proc.start()
                opened, grown, lookup = parent.recv()
                proc.join()
                row[name] = grown
                print(f"N={n:>9,} images, {name}: +{grown / 1024:.1f} MiB ({grown * 1024 / n:.0f} B/image), open "
                      f"{opened:.2f} CPU s, lookup {lookup * 1e6:.1f} us", flush=True)
            print(f"  extrapolated to 3.8M images: dict {row['ImageManifest (dict of records)'] / n * 3.8e6 / 2**20:.2f} "
                  f"GiB, index {row['ManifestIndex'] / n * 3.8e6 / 2**20:.2f} GiB per process")


def main():
    import multiprocessing

    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--num_proc", type=int, default=1)
    parser.add_argument("--part", choices=("tokens", "embeddings", "preparation", "run", "command", "manifest"),
                        default="tokens")
    parser.add_argument("--steps", type=int, default=2, help="training steps of each `--part command` run")
    parser.add_argument("--source", choices=("arrow", "tfrecord"), default="arrow",
                        help="`--part command`: train from the converted Arrow folder or the TFRecord itself")
    args = parser.parse_args()
    base = list(iter_pages(str(REALWIKI)))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared: other jobs run)")
    if args.part == "embeddings":
        return bench_embeddings(base, args.pages)
    if args.part == "preparation":
        return bench_preparation(base, args.pages[-1])
    if args.part == "run":
        return bench_run(base, args.pages)
    if args.part == "command":
        return bench_command(base, args.pages, args.steps, args.source)
    if args.part == "manifest":
        return bench_manifest(args.pages)
    tokenizer = train_bpe_tokenizer([t for row in base for t in row["section_text"]], vocab_size=8000)
    from tests.modeling_helpers import TINY_CLIP

    image_processor = clip_image_processor("ViT-B-32", TINY_CLIP)
    options = dict(context="all", neighbor_encoding="sa_te", max_source_length=1024, max_target_length=128)
    rows = []
    for n in args.pages:
        pages = make_pages(base, n)
        gc.collect()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tokens.bin")
            processor = MMGLProcessor(image_processor, tokenizer, **options)
            t = cpu()
            build_token_cache(processor, pages, show_progress=False, fingerprint=f"bench-{n}", num_proc=args.num_proc)
            processor.token_cache.save(path)
            first = cpu() - t
            texts = len(processor.token_cache)
            disk = os.path.getsize(path)
            del processor
            gc.collect()
            # Restart: open the store, startup on the covered table.
            fresh = MMGLProcessor(image_processor, tokenizer, **options)
            rss0 = rss_kib()
            t = cpu()
            fresh.load_token_cache(path)
            build_token_cache(fresh, pages, show_progress=False, fingerprint=f"bench-{n}")
            restart = cpu() - t
            resolved = resolve_all(fresh, pages)
            steady = rss_kib() - rss0
            ctx = multiprocessing.get_context("fork")
            workers = []
            for _ in range(2):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker, args=(path, fresh.tokenizer_identity(), options, image_processor,
                                                         tokenizer, base, n, child))
                proc.start()
                workers.append((proc, parent))
            grow = [parent.recv() for proc, parent in workers]
            for proc, _ in workers:
                proc.join()
        rows.append(dict(n=n, texts=texts, first=first, restart=restart, disk=disk, steady=steady, workers=grow,
                         resolved=resolved))
        print(f"N={n:>7,} pages: {texts:,} texts, first start {first:.1f} CPU s, restart {restart * 1e3:.1f} CPU ms, "
              f"disk {disk / 2**20:.1f} MiB, main RSS growth {steady / 1024:.1f} MiB after resolving {resolved:,} ids, "
              f"workers' private growth {[round(g / 1024, 1) for g in grow]} MiB")
    print()
    print(f"{'N':>8} {'1st CPU ms/page':>16} {'restart CPU us/page':>20} {'disk KiB/page':>14} "
          f"{'main RSS KiB/page':>18} {'worker KiB/page':>16}")
    for r in rows:
        n = r["n"]
        print(f"{n:>8,} {r['first'] / n * 1e3:>16.2f} {r['restart'] / n * 1e6:>20.2f} {r['disk'] / n / 1024:>14.2f} "
              f"{r['steady'] / n:>18.3f} {max(r['workers']) / n:>16.3f}")
    last = rows[-1]
    n = last["n"]
    print(f"\nextrapolated to {FULL_PAGES:,} pages (linear from N={n:,}; labelled as an extrapolation):")
    print(f"  first start tokenisation: {last['first'] / n * FULL_PAGES / 3600:.2f} CPU-hours (one process; divides by num_proc)")
    print(f"  restart: {last['restart'] / n * FULL_PAGES / 60:.3f} CPU-minutes (store covers the table)")
    print(f"  disk: {last['disk'] / n * FULL_PAGES / 2**30:.2f} GiB")
    print(f"  main RSS growth: {last['steady'] / n * FULL_PAGES / 2**20:.2f} GiB (page cache of the mapped file excluded)")
    if len(rows) > 1:
        print("\nratios between consecutive N (per-page figure of the larger N / the smaller):")
        for a, b in zip(rows, rows[1:]):
            def per(r, key):
                return max(r[key]) / r["n"] if isinstance(r[key], list) else r[key] / r["n"]

            print(f"  {a['n']:,} -> {b['n']:,}: first {per(b, 'first') / per(a, 'first'):.2f}, "
                  f"restart {per(b, 'restart') / max(per(a, 'restart'), 1e-12):.2f}, disk {per(b, 'disk') / per(a, 'disk'):.2f}")


if __name__ == "__main__":
    main()
