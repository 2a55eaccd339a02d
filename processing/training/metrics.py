"""Summarization metrics of the MMGL paper: BLEU-4, ROUGE-L and CIDEr, computed offline.

The metric libraries are called directly (``evaluate.load(...)`` fetches its scripts from the Hub and
fails offline):

* ``bleu4``: `sacrebleu.corpus_bleu` with its defaults (``13a`` tokenisation, case-sensitive, 4-gram,
  ``exp`` smoothing, no effective order), i.e. corpus BLEU = brevity penalty x geometric mean of the
  corpus-level modified n-gram precisions, **divided by 100** so it lies in ``[0, 1]``.
* ``rougeL``: `rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)`, the mean over
  examples of the ROUGE-L F-measure (LCS-based; lower-cased, non-alphanumerics dropped, Porter
  stemming), in ``[0, 1]``.
* ``cider``: `pycocoevalcap.cider.Cider` (the CIDEr-D variant of pycocoevalcap: clipped tf-idf
  n-gram cosine, n = 1..4, Gaussian length penalty sigma = 6) on lower-cased, whitespace-tokenised
  text (no Java PTB tokeniser; punctuation stays attached to its word). The raw pycocoevalcap value
  is returned: a perfect match scores 10 per example at most; papers usually print it x100 like
  COCO's, e.g. 0.74 -> "74". **CIDEr's IDF is computed over the set being scored**, so an n-gram
  present in every reference weighs nothing and a one-example set always scores 0.0, even when the
  prediction equals its reference. Score a whole evaluation split at once, never example by example.

This file imports only installed packages, so it can sit in a flat Hub folder.
"""
from __future__ import annotations

from collections.abc import Sequence


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    for name, values in (("predictions", predictions), ("references", references)):
        if isinstance(values, str):
            raise TypeError(f"{name} must be a list of strings, got a single string")
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(f"{name}[{i}] must be a str, got {type(value).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions for {len(references)} references; they must pair up one to one"
        )
    if len(predictions) == 0:
        raise ValueError("cannot score an empty list of predictions")


def bleu4(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 of sacrebleu (default settings), in ``[0, 1]``."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score) / 100.0


def bleu_n(predictions: Sequence[str], references: Sequence[str], n: int) -> float:
    """Corpus BLEU-n of sacrebleu (default settings, n-gram order ``n``), in ``[0, 1]``."""
    from sacrebleu.metrics import BLEU

    _check(predictions, references)
    return float(BLEU(max_ngram_order=n).corpus_score(list(predictions), [list(references)]).score) / 100.0


def rouge(predictions: Sequence[str], references: Sequence[str], kinds=("rouge1", "rouge2", "rougeL")) -> dict[str, float]:
    """Mean ROUGE F-measures (rouge_score, Porter stemmer) of each kind, in ``[0, 1]``."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # the reference comes first
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: total / len(predictions) for kind, total in totals.items()}


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge_score, Porter stemmer), in ``[0, 1]``."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = 0.0
    for prediction, reference in zip(predictions, references):
        # score(target, prediction): the reference comes first.
        total += scorer.score(reference, prediction)["rougeL"].fmeasure
    return total / len(predictions)


def _cider_tokens(text: str) -> str:
    return " ".join(text.lower().split())


def cider(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CIDEr (pycocoevalcap, raw scale; IDF over this set: one example scores 0.0)."""
    from pycocoevalcap.cider.cider import Cider

    _check(predictions, references)
    gts = {i: [_cider_tokens(reference)] for i, reference in enumerate(references)}
    res = {i: [_cider_tokens(prediction)] for i, prediction in enumerate(predictions)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def summarization_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU-4, ROUGE-L and CIDEr of generated summaries against one reference each.

    Args:
        predictions (`list[str]`): generated summaries.
        references (`list[str]`): the reference summary of each prediction, same order and length.

    Returns:
        `dict[str, float]`: ``bleu1`` .. ``bleu3`` (the same at lower n-gram orders), ``rouge1`` / ``rouge2``
        (mean unigram / bigram ROUGE F-measure), ``bleu4`` (sacrebleu corpus BLEU / 100, in ``[0, 1]``), ``rougeL`` (mean
        F-measure, in ``[0, 1]``) and ``cider`` (pycocoevalcap's raw corpus CIDEr, ``0`` to ``10``; its
        IDF comes from this set, so a one-example set scores 0.0). See the module docstring.

    Raises:
        `ValueError`: the lists differ in length or are empty. `TypeError`: an item is not a string.
    """
    _check(predictions, references)
    metrics = {f"bleu{n}": bleu_n(predictions, references, n) for n in (1, 2, 3)}
    metrics["bleu4"] = bleu4(predictions, references)
    metrics.update(rouge(predictions, references))
    metrics["cider"] = cider(predictions, references)
    return metrics


__all__ = ["bleu4", "bleu_n", "cider", "rouge", "rouge_l", "summarization_metrics"]
