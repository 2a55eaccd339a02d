"""The path a researcher walks, end to end, on real Wikipedia pages in WikiWeb2M format whose images are URLs:

    convert (python -m processing.data.wikiweb2m)  ->  fetch (python -m processing.data.image_fetcher)
    ->  embed (python -m processing.data.build_embedding_cache)  ->  train + export (run_summarization.py)
    ->  pipeline("mmgl-summarization") in a fresh process on a held-out page

with nothing renamed by hand between the steps. The image URLs are rewritten to a local HTTP server on 127.0.0.1
that serves ``../shared/data/realwiki/images``; everything else is the real records.
"""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP_JSON = REPO / "demo" / "tiny_clip.json"
ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
DESIGN = ["--context", "all", "--neighbor_encoding", "sa_e"]
ENCODER = ["--neighbor_encoder_config", str(TINY_CLIP_JSON), "--neighbor_encoder_pretrained", "none"]

pytestmark = pytest.mark.timeout(600)


def run(*args, timeout=300):
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


class ImageServer:
    """Serves the files of one folder by the last component of the request path, on 127.0.0.1 only, for at most
    `max_requests` requests."""

    def __init__(self, folder: Path, max_requests: int = 500):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                # As stored (realwiki names files by the URL's last component verbatim), else decoded.
                raw = self.path.rsplit("/", 1)[-1]
                name = next((n for n in (raw, unquote(raw)) if "/" not in n and (folder / n).is_file()), None)
                path = folder / name if name else None
                if server.requests > max_requests or path is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def walked(realwiki_dir, tmp_path_factory):
    """Runs every step once; returns the folders each step wrote and the rewritten records."""
    from processing.data.tfrecord_io import write_tfrecord
    from processing.data.wikiweb2m import iter_pages, serialize_page

    root = tmp_path_factory.mktemp("path")
    server = ImageServer(realwiki_dir / "images")
    try:
        rows = []
        for row in iter_pages(str(realwiki_dir / "wikiweb2m-dev.tfrecord.gz")):
            # The record's file name is kept: the server (like upload.wikimedia.org) serves it under that name.
            row["section_image_url"] = [
                [f"{server.base}/wikipedia/commons/x/xy/{url.rsplit('/', 1)[-1]}" for url in urls]
                for urls in row["section_image_url"]
            ]
            rows.append(row)
        records = root / "records.tfrecord.gz"
        write_tfrecord(records, (serialize_page(row) for row in rows))
        data, images, cache, out = root / "data", root / "images", root / "cache", root / "model"

        run("-m", "processing.data.wikiweb2m", str(records), str(data))
        run("-m", "processing.data.image_fetcher", "--from_dataset", str(data), str(images), "--no_progress")
        embed = run("-m", "processing.data.build_embedding_cache", str(data), str(cache), "--image_dir", str(images),
                    *DESIGN, *ENCODER, "--no_progress")
        shards_after_embed = sorted(p.name for p in cache.rglob("shard-*.safetensors"))
        train = run(
            "run_summarization.py", "--train_files", str(data), "--image_dir", str(images),
            "--embedding_cache_dir", str(cache), *DESIGN, *ENCODER, "--position_encoding", "laplacian",
            "--config_overrides", "hidden_size=32,num_hidden_layers=2,ffn_dim=64,num_attention_heads=4,"
            "max_position_embeddings=512", "--tokenizer_vocab_size", "600", "--output_dir", str(out),
            "--do_train", "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_source_length", "256",
            "--max_target_length", "32", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "--seed", "0",
            timeout=500,
        )
    finally:
        server.close()
    return {
        "rows": rows, "data": data, "images": images, "cache": cache, "out": out, "embed_log": embed.stdout,
        "train_log": train.stdout + train.stderr, "shards_after_embed": shards_after_embed,
        "requests": server.requests,
    }


def test_every_image_the_pages_reference_reaches_the_processor(walked):
    from processing.embedding_cache import EmbeddingCache
    from processing.image_source import ImageFolder
    from processing.neighbor_selection import select_neighbors
    from processing.page_graph import PageGraph
    from processing.data.sample_index import PageGraphIndex
    from processing.processing_mmgl import MMGLProcessor
    from processing.data.page_table import open_page_table

    folder = ImageFolder(walked["images"])
    assert folder.manifest is not None  # the fetcher's content-addressed folder, read through its manifest
    urls = {url for row in walked["rows"] for urls in row["section_image_url"] for url in urls}
    fetched = {url for url in urls if folder.resolve(url) is not None}
    assert fetched == urls and len(urls) >= 40  # every image of the records was fetched and resolves

    # The embedding command embedded exactly what training asks for: training added no shard.
    assert sorted(p.name for p in walked["cache"].rglob("shard-*.safetensors")) == walked["shards_after_embed"]

    processor = MMGLProcessor.from_pretrained(walked["out"])
    cache = EmbeddingCache(walked["cache"])
    index = PageGraphIndex(open_page_table(str(walked["data"])))
    referenced = unmasked = 0
    for graph, section in index:  # every sample of every split: no cache lookup may miss
        example = processor.build_example(graph, section, embedding_cache=cache, image_dir=walked["images"])
        selection = select_neighbors(PageGraph.coerce(graph), section, "all", processor.max_text_neighbors,
                                     processor.max_image_neighbors)
        referenced += sum(ref is not None for ref in selection.image_refs)
        unmasked += int(example["image_neighbor_mask"].sum())
    assert referenced > 0 and unmasked == referenced


def test_export_folder_holds_only_what_inference_imports(walked):
    files = {p.name for p in walked["out"].glob("*.py")}
    assert "image_fetcher.py" not in files and "build_embedding_cache.py" not in files
    assert {"processing_mmgl.py", "image_source.py", "neighbor_selection.py", "embedding_cache.py"} <= files


def test_pipeline_in_a_fresh_process_equals_generate(walked, tmp_path):
    """On a held-out (test split) page: the pipeline, loaded as Hub remote code in a process that cannot import
    this package, gives what `generate` gives on the processor's inputs, with the cache and from raw pixels."""
    from processing.data.page_table import open_page_table
    from processing.data.wikiweb2m import summarization_samples

    pages = open_page_table(str(walked["data"]))
    # A held-out page with images (context "all" gives each of its sections the page's images).
    page_idx, section = next((p, s) for p, s in summarization_samples(pages, split="test")
                             if any(pages[p]["section_image_url"]))
    row = pages[page_idx]
    (tmp_path / "page.json").write_text(json.dumps({"row": row, "section": section}))
    script = tmp_path / "serve.py"
    script.write_text(
        "import json, sys, torch\n"
        "sys.path = [p for p in sys.path if p not in ('', " + repr(str(REPO)) + ")]  # no package: Hub code only\n"
        "from transformers import AutoModelForCausalLM, AutoProcessor, pipeline\n"
        "folder, images, cache, case = sys.argv[1:5]\n"
        "case = json.load(open(case))\n"
        "pipe = pipeline('mmgl-summarization', model=folder, trust_remote_code=True)\n"
        "model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "out = {}\n"
        "for name, kwargs in (('cache', {'embedding_cache': cache}), ('raw', {})):\n"
        "    got = pipe(case['row'], section=case['section'], image_dir=images, max_new_tokens=8, **kwargs)\n"
        "    opened = pipe._open_embedding_cache(cache) if kwargs else None\n"
        "    batch = processor(case['row'], case['section'], image_dir=images, embedding_cache=opened, for_generation=True)\n"
        "    ids = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=processor.pad_token_id)\n"
        "    text = processor.tokenizer.decode(ids[0, batch['input_ids'].shape[1]:], skip_special_tokens=True).strip()\n"
        "    out[name] = [got['summary_text'], text, int(batch['image_neighbor_mask'].sum())]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script), str(walked["out"]), str(walked["images"]), str(walked["cache"]),
         str(tmp_path / "page.json")], cwd=tmp_path, env=dict(ENV, PYTHONPATH=""), capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("cache", "raw"):
        piped, generated, _ = out[name]
        assert piped == generated, name
    assert out["cache"][2] == out["raw"][2] > 0  # the same images are real on both paths


def test_cached_embeddings_equal_the_in_model_encoder(walked):
    """For the same image file and the same text, the cache command's embedding equals the exported model's own
    encoder on the processor's raw inputs (float16 storage: within its rounding)."""
    from transformers import AutoModelForCausalLM

    from processing.embedding_cache import EmbeddingCache
    from processing.data.sample_index import PageGraphIndex
    from processing.processing_mmgl import MMGLProcessor
    from processing.data.page_table import open_page_table

    model = AutoModelForCausalLM.from_pretrained(walked["out"], trust_remote_code=True).eval()
    processor = MMGLProcessor.from_pretrained(walked["out"])
    cache = EmbeddingCache(walked["cache"])
    index = PageGraphIndex(open_page_table(str(walked["data"])))
    graph, section = next((g, s) for g, s in index if g.image_nodes[s])
    raw = processor.build_example(graph, section, image_dir=walked["images"])
    selection = processor.select_neighbors(graph, section)
    with torch.no_grad():
        texts = model.neighbor_encoder.encode_text(raw["text_neighbor_input_ids"])
        images = model.neighbor_encoder.encode_image(raw["image_neighbor_pixel_values"])
    for text, embedding in zip(selection.texts, texts):
        torch.testing.assert_close(cache.get_text(text).float(), embedding, atol=2e-3, rtol=0)
    folder = processor.image_folder(walked["images"])
    for ref, embedding, real in zip(selection.image_refs, images, raw["image_neighbor_mask"]):
        assert real
        torch.testing.assert_close(cache.get_image(folder.resolve(ref)).float(), embedding, atol=2e-3, rtol=0)
