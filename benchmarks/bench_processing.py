"""Processing throughput: token-cached `MMGLProcessor` vs naive per-sample tokenisation, and ingestion.

Generates a synthetic WikiWeb2M set (``processing.data.sample_data``, 10,000 pages, no image files),
trains a byte-level BPE (vocab ~8k) on its text, and prints side by side in one run:

* ingestion pages/s: ``processing.data.wikiweb2m.iter_pages`` over the TFRecord;
* page graphs/s: ``PageGraph.from_wikiweb2m`` over the rows;
* token cache build: unique texts tokenised once, batched; the cache file (`MMGLTokenCache.save` /
  `load_token_cache`): size, save and load times, and the time to resolve every text from it;
* examples/s for context ``all`` with a warm token cache, and for naive paths that tokenise, for
  each sample, its target section, its summary and every neighbour text it draws from: one
  tokenizer call per text (the original code's pattern), the original code's call, and one batched
  call per sample (the processor without a token cache); and the ratios. For SA-TE (neighbour
  texts as raw tokens, the most tokens per sample) and for SA-E with neighbour embeddings from an
  in-memory lookup (the training path: the frozen encoder ran once beforehand). Page graphs keep
  per-section neighbour orders once built; the first pass over freshly built graphs, which builds
  them, is reported too;
* the same comparison on the real Wikipedia pages of ``../shared/data/realwiki`` when present
  (real section lengths: tokenisation costs grow with text length, the cached path barely does);
* collated batches/s.

Throughputs are per second of this process's CPU time (`time.process_time`), and the paths are
timed in interleaved rounds (median per path), so that load from other processes on a shared
machine skews neither; each timed pass starts after a full garbage collection. Usage::

    python benchmarks/bench_processing.py [--pages 10000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processing.data.bpe_tokenizer import train_bpe_tokenizer  # noqa: E402
from processing.data.sample_index import PageGraphIndex  # noqa: E402
from processing.image_source import clip_image_processor  # noqa: E402
from processing.processing_mmgl import MMGLProcessor  # noqa: E402
from processing.data.token_store import build_token_cache
from processing.data.neighbor_inputs import processor_neighbor_inputs


class PerTextProcessor(MMGLProcessor):
    """The naive pattern of the original code: one tokenizer call per text of every sample (its
    target section, summary and each neighbour text). Same outputs as `MMGLProcessor`."""

    def _lm_ids_many(self, texts):
        return [self._encode_lm([text])[0] for text in texts]


class OriginalCallProcessor(MMGLProcessor):
    """Per-text tokenisation with the original code's call: ``tokenizer(text, max_length=...,
    truncation=True, return_tensors="pt")`` (PyTorch tensors per text). Same outputs on this data."""

    def _lm_ids_many(self, texts):
        return [
            self.tokenizer(" " + text, add_special_tokens=False, split_special_tokens=True,
                           max_length=self.max_source_length, truncation=True, return_tensors="pt").input_ids[0].numpy()
            for text in texts
        ]


def naive_processors(image_processor, tokenizer, options):
    """The naive paths, by label; the batched one is `MMGLProcessor` without a token cache."""
    return {
        "naive: one tokenizer call per text": PerTextProcessor(image_processor, tokenizer, **options),
        "naive: original code's call per text": OriginalCallProcessor(image_processor, tokenizer, **options),
        "naive: one batched call per sample": MMGLProcessor(image_processor, tokenizer, **options),
    }


class InMemoryEmbeddings:
    """Precomputed neighbour embeddings in a dict (the `EmbeddingCache` interface)."""

    def __init__(self, texts, embed_dim=512):
        self.embed_dim = embed_dim
        table = torch.randn(len(texts), embed_dim)
        self.text = {t: table[i] for i, t in enumerate(texts)}

    def get_text(self, text):
        return self.text.get(text)

    def get_image(self, path):
        return None


def rate(fn, items):
    """Items per second of this process's CPU time: other processes on a shared machine slow the
    wall clock of both paths unevenly, CPU time much less. Each pass starts after a full garbage
    collection, so that one triggered by earlier allocations (a second or more over this heap) does
    not land in whichever pass happens to be running (`timeit` goes further: it turns the collector off)."""
    gc.collect()
    start = time.process_time()
    for item in items:
        fn(item)
    return len(items) / (time.process_time() - start)


def compare(name, cached, naives, samples, naive_count, rounds, **kwargs):
    """Median examples/s of the cached path and of each naive path over interleaved rounds (so
    background load hits all alike); checks first that they build identical examples."""
    for graph, section in samples[:200]:
        a = cached.build_example(graph, section, **kwargs)
        for naive in naives.values():
            b = naive.build_example(graph, section, **kwargs)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, graph.page_id, section)
    step = max(1, len(samples) // naive_count)
    naive_items = samples[::step][:naive_count]
    rates = {"cached": [], **{label: [] for label in naives}}
    for _ in range(rounds):
        for label, naive in naives.items():
            rates[label].append(rate(lambda gs: naive.build_example(gs[0], gs[1], **kwargs), naive_items))
        rates["cached"].append(rate(lambda gs: cached.build_example(gs[0], gs[1], **kwargs), samples))
    medians = {label: statistics.median(values) for label, values in rates.items()}
    c = medians["cached"]
    print(f"{name}: examples/s (CPU time, median of {rounds} interleaved rounds)")
    print(f"  {'cached (warm token cache)':<40} {c:>9,.0f}")
    for label in naives:
        print(f"  {label:<40} {medians[label]:>9,.0f}   cached is {c / medians[label]:5.1f}x faster")
    return medians


def first_pass_rate(processor, rows, rounds):
    """Median examples/s of one pass over page graphs built just before (building them is not timed),
    so that each graph's derived data (neighbour orders, adjacency matrices) is built inside the pass."""
    values = []
    for _ in range(rounds):
        index = PageGraphIndex(rows)
        items = [index[i] for i in range(len(index))]
        values.append(rate(lambda gs: processor.build_example(gs[0], gs[1]), items))
    return statistics.median(values)


def token_cache_file(processor, index, samples, options, image_processor, tokenizer):
    """Save the processor's token cache, load it into a new processor and resolve every text from it;
    check that the loaded cache builds the same examples."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.bin"
        t = time.perf_counter()
        processor.token_cache.save(path)
        saved = time.perf_counter() - t
        size = path.stat().st_size
        loaded = MMGLProcessor(image_processor, tokenizer, **options)
        t = time.perf_counter()
        cache = loaded.load_token_cache(path)
        load = time.perf_counter() - t
        t = time.perf_counter()
        build_token_cache(loaded, index, show_progress=False)  # every text found in the file, none tokenised
        resolve = time.perf_counter() - t
    assert not cache.dirty, "texts missing from the saved token cache"
    for graph, section in samples[:500]:
        a, b = processor.build_example(graph, section), loaded.build_example(graph, section)
        assert all(torch.equal(a[k], b[k]) for k in a)
    print(f"{'token cache file (mmap)':<34} {len(cache):>9,} texts, {size / 2**20:.1f} MiB: saved in {saved:.2f} s, "
          f"loaded in {load:.2f} s, every text resolved from it in {resolve:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive_samples", type=int, default=3000)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    from processing.data.sample_data import generate_sample
    from processing.data.wikiweb2m import iter_pages

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        info = generate_sample(tmp, num_pages=args.pages, seed=0, with_images=False)
        print(f"sample data: {info['pages']:,} pages, {info['sections']:,} sections, "
              f"{info['summarization_samples']:,} samples, {info['images']:,} image refs "
              f"(generated in {time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        rows = list(iter_pages(info["files"]))
        ingest = len(rows) / (time.perf_counter() - t)
    print(f"{'ingestion (iter_pages)':<34} {ingest:>9,.0f} pages/s")

    t = time.perf_counter()
    index = PageGraphIndex(rows)
    graphs = [index.graph(p) for p in range(len(rows))]
    print(f"{'page graphs (from_wikiweb2m)':<34} {len(graphs) / (time.perf_counter() - t):>9,.0f} pages/s "
          f"(+ sample index: {len(index):,} samples)")
    samples = [index[i] for i in range(len(index))]

    t = time.perf_counter()
    corpus = [text for g in graphs for text in [g.description] + [n.text for n in g.nodes[1:]]]
    # The synthetic pages are templated (about 1k distinct words): add the real Wikipedia text of
    # ../shared when present so that the vocabulary reaches ~8k like a real (if small) tokenizer.
    realwiki = Path(__file__).resolve().parents[2] / "shared" / "data" / "realwiki" / "wikiweb2m-dev.tfrecord.gz"
    if realwiki.exists():
        corpus += [text for row in iter_pages(str(realwiki)) for text in row["section_text"]]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=8000)
    print(f"tokenizer: byte-level BPE, {len(tokenizer):,} tokens, trained on the sample"
          f"{' + realwiki' if realwiki.exists() else ''} text in {time.perf_counter() - t:.1f} s")
    image_processor = clip_image_processor("ViT-B-32")

    # ---- SA-TE, context all: neighbour texts are raw tokens (most tokenisation per sample).
    options = dict(context="all", neighbor_encoding="sa_te")
    cached = MMGLProcessor(image_processor, tokenizer, **options)
    naives = naive_processors(image_processor, tokenizer, options)
    t = time.perf_counter()
    cache = build_token_cache(cached, index, show_progress=False)
    elapsed = time.perf_counter() - t
    print(f"{'token cache build (sa_te, all)':<34} {cache.count('lm'):>9,} texts in {elapsed:.1f} s "
          f"({cache.count('lm') / elapsed:,.0f} texts/s)")
    token_cache_file(cached, index, samples, options, image_processor, tokenizer)
    main_rates = compare("examples, all, sa_te", cached, naives, samples, args.naive_samples, args.rounds)
    fresh = first_pass_rate(cached, rows, args.rounds)
    naive = main_rates["naive: one tokenizer call per text"]
    print(f"  {'cached, first pass over fresh graphs':<40} {fresh:>9,.0f}   {fresh / naive:5.1f}x the one call per text path")

    # ---- The same on real Wikipedia text (much longer sections than the synthetic ones).
    if realwiki.exists():
        real_index = PageGraphIndex(list(iter_pages(str(realwiki))))
        real_samples = [real_index[i] for i in range(len(real_index))] * 20
        build_token_cache(cached, real_index, show_progress=False)
        compare(f"realwiki ({len(real_index)} samples x 20), all, sa_te", cached, naives, real_samples,
                len(real_samples), args.rounds)

    # ---- SA-E, context all, neighbour embeddings precomputed (training path).
    options = dict(context="all", neighbor_encoding="sa_e")
    cached_e = MMGLProcessor(image_processor, tokenizer, **options)
    naives_e = naive_processors(image_processor, tokenizer, options)
    texts = processor_neighbor_inputs(cached_e, samples).texts
    embeddings = InMemoryEmbeddings(texts)
    build_token_cache(cached_e, index, neighbor_input_ids=False, show_progress=False)
    compare("examples, all, sa_e + embeddings", cached_e, naives_e, samples, args.naive_samples, args.rounds,
            embedding_cache=embeddings)

    # ---- Collation (embedding path; raw pixels would make every batch (32, 5, 3, 224, 224) floats).
    collator = cached_e.data_collator()
    batches = [
        [cached_e.build_example(g, s, embedding_cache=embeddings) for g, s in samples[i : i + 32]]
        for i in range(0, 32 * 200, 32)
    ]
    print(f"{'collator (sa_e+embeds, batch 32)':<34} {rate(collator, batches):>9,.0f} batches/s")
    c = main_rates["cached"]
    ratios = ", ".join(f"{c / v:.1f}x vs {k[7:]}" for k, v in main_rates.items() if k != "cached")
    print(f"summary: context=all sa_te with a warm token cache {c:,.0f} examples/s: {ratios} "
          f"(target >= 20x); ingestion {ingest:,.0f} pages/s")


if __name__ == "__main__":
    main()
