"""A hostile page: thousands of copies of one section, through the converter, the embedding-cache builder and
the processor (issue 20: neighbour cleaning was quadratic in the sections of a page: 117 s at 1,000 sections,
more than 900 s at 20,000).

The page repeats one real section of ``../shared/data/realwiki`` (its text, summary and first image; a
generated section where that folder is absent) ``N`` times, every section a summarization sample whose parent
is the lead section, plus one new text at the far end of the page. Each stage runs in this process and is timed
in CPU seconds of this process (`time.process_time`, so other load on a shared machine does not count):

* convert: ``python -m processing.data.wikiweb2m`` (TFRecord -> Arrow, staged and swapped in);
* cache: ``python -m processing.data.build_embedding_cache`` (neighbour selection of every sample, image
  resolution, the tiny random CLIP of ``demo/tiny_clip.json`` over the few distinct inputs);
* token store: `prepare_token_cache` over the page (BPE trained on the page);
* examples: `MMGLProcessor.build_example` of every sample (context ``all``, SA-E, Laplacian position encoding,
  embeddings from the cache).

Usage::

    python benchmarks/bench_hostile_page.py [--sections 1000 20000]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REALWIKI = ROOT.parent / "shared" / "data" / "realwiki"


def base_section() -> tuple[dict, bytes | None]:
    """One real section (the longest sample of the first real page) and its first image's bytes, or a generated
    one without image."""
    from processing.data.wikiweb2m import iter_pages

    files = sorted(REALWIKI.glob("*.tfrecord*")) if REALWIKI.is_dir() else []
    if not files:
        return {"title": "History", "text": "The town was founded in 1200. It grew slowly. " * 20,
                "first": "The town was founded in 1200.", "rest": "It grew slowly. " * 20, "url": ""}, None
    page = next(iter_pages(files[0]))
    samples = [i for i, flag in enumerate(page["is_section_summarization_sample"]) if flag] or [0]
    i = max(samples, key=lambda s: len(page["section_text"][s]))
    urls = [url for section in page["section_image_url"] for url in section]
    image = None
    for url in urls:
        candidate = REALWIKI / "images" / url.rsplit("/", 1)[-1]
        if candidate.is_file():
            image = (url, candidate.read_bytes())
            break
    return {"title": page["section_title"][i], "text": page["section_text"][i],
            "first": page["section_clean_1st_sentence"][i], "rest": page["section_rest_sentence"][i],
            "url": image[0] if image else ""}, (image[1] if image else None)


def hostile_row(n: int, section: dict) -> dict:
    """A WikiWeb2M page row of ``n`` copies of ``section`` (the lead first, the last one with a new text)."""
    from tests.test_wikiweb2m import make_row

    row = make_row(n, url=f"https://en.wikipedia.org/wiki/Hostile_{n}", images_per_section=[1] * n)
    row["section_title"] = [section["title"]] * n
    row["section_text"] = [section["text"]] * (n - 1) + ["A far text. Only here."]
    row["section_raw_1st_sentence"] = row["section_clean_1st_sentence"] = [section["first"]] * n
    row["section_rest_sentence"] = [section["rest"]] * n
    row["section_image_url"] = [[section["url"] or "https://upload.wikimedia.org/x/same.png"]] * n
    row["is_section_summarization_sample"] = [0] + [1] * (n - 1)
    return row


def timed(name: str, results: dict, fn, *args, **kwargs):
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        value = fn(*args, **kwargs)
    results[name] = time.process_time() - start
    return value


def run(n: int, work: Path) -> dict:
    import datasets

    from processing.data import build_embedding_cache, wikiweb2m
    from processing.data.bpe_tokenizer import train_bpe_tokenizer, wikiweb2m_texts
    from processing.embedding_cache import EmbeddingCache
    from processing.image_source import clip_image_processor
    from processing.data.sample_index import PageGraphIndex
    from processing.processing_mmgl import MMGLProcessor
    from processing.data.token_store import prepare_token_cache

    datasets.disable_progress_bars()
    section, image = base_section()
    images = work / "images"
    images.mkdir()
    if image is not None:
        (images / section["url"].rsplit("/", 1)[-1]).write_bytes(image)
    else:
        from PIL import Image

        Image.new("RGB", (40, 30), (200, 30, 60)).save(images / "same.png")
    row = hostile_row(n, section)
    tfrecord = work / "page.tfrecord"
    from processing.data.tfrecord_io import write_tfrecord

    write_tfrecord(tfrecord, [wikiweb2m.serialize_page(row)])
    results: dict = {}
    timed("convert", results, wikiweb2m.main, [str(tfrecord), str(work / "data")])
    encoder = ["--neighbor_encoder_name", "tiny", "--neighbor_encoder_pretrained", "none",
               "--neighbor_encoder_config", str(ROOT / "demo" / "tiny_clip.json")]
    timed("cache", results, build_embedding_cache.main,
          [str(work / "data"), str(work / "cache"), "--image_dir", str(images), "--context", "all",
           "--neighbor_encoding", "sa_e", "--no_progress", *encoder])
    pages = datasets.load_from_disk(str(work / "data"))
    tokenizer = train_bpe_tokenizer(wikiweb2m_texts(pages), 2000)
    import json

    processor = MMGLProcessor(
        image_processor=clip_image_processor("tiny", json.loads((ROOT / "demo" / "tiny_clip.json").read_text())),
        tokenizer=tokenizer, context="all", neighbor_encoding="sa_e", lpe_k=4, neighbor_encoder_name="tiny")
    timed("token store", results, prepare_token_cache, processor, pages, None, show_progress=False)
    cache = EmbeddingCache(work / "cache")
    index = PageGraphIndex(pages)

    def build_all():
        for graph, s in index:
            processor.build_example(graph, s, embedding_cache=cache, image_dir=images)
        return len(index)

    results["samples"] = timed("examples", results, build_all)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", type=int, nargs="+", default=[1000, 20000])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"{'sections':>8} | {'convert s':>9} | {'cache s':>7} | {'token store s':>13} | {'examples s':>10} | "
          f"{'samples':>7} | {'ms/sample':>9}")
    for n in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(n, Path(tmp))
        print(f"{n:>8} | {r['convert']:>9.2f} | {r['cache']:>7.2f} | {r['token store']:>13.2f} | {r['examples']:>10.2f} | "
              f"{r['samples']:>7} | {1000 * r['examples'] / r['samples']:>9.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
