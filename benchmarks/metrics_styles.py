"""How far mmgl's metrics are from the original MMGL code's on the same predictions (`--metrics_style`).

Scores every summarization sample of ``../shared/data/realwiki`` (real Wikipedia pages in the WikiWeb2M format)
with both styles (`processing.training.metrics.summarization_metrics` and `original_metrics`), for prediction
sets that need no model, so the numbers are reproducible anywhere:

* ``lead``: the first sentence of the section's input text (a real Wikipedia sentence about the same section);
* ``lead-2``: its first two sentences (the original code's first-'.' cut then keeps only the first);
* ``reference, lower-cased``: the reference itself, lower-cased and without its final full stop.

Prints one markdown table per prediction set (metric, mmgl, original, original - mmgl). Usage::

    python benchmarks/metrics_styles.py
"""
from __future__ import annotations

import re
from pathlib import Path

from processing.data.page_table import open_page_table
from processing.data.wikiweb2m import summarization_samples
from processing.data.sample_index import PageGraphIndex
from processing.training.metrics import original_metrics, summarization_metrics

REALWIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "realwiki" / "wikiweb2m-dev.tfrecord.gz"
METRICS = ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "cider")


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def main() -> None:
    pages = open_page_table(str(REALWIKI))
    index = PageGraphIndex(pages, samples=summarization_samples(pages))
    references, lead, lead2 = [], [], []
    for graph, section in index:
        rest = sentences(graph.rest_texts[section]) or [""]
        references.append(graph.summaries[section])
        lead.append(rest[0])
        lead2.append(" ".join(rest[:2]))
    sets = {"lead": lead, "lead-2": lead2,
            "reference, lower-cased": [r.lower().rstrip(".") for r in references]}
    print(f"{len(references)} samples of {REALWIKI.name}")
    for name, predictions in sets.items():
        mmgl, original = summarization_metrics(predictions, references), original_metrics(predictions, references)
        print(f"\n{name}\n\n| metric | mmgl | original | original - mmgl |\n|---|---:|---:|---:|")
        for key in METRICS:
            print(f"| {key} | {mmgl[key]:.4f} | {original[key]:.4f} | {original[key] - mmgl[key]:+.4f} |")


if __name__ == "__main__":
    main()
