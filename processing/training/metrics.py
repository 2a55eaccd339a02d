"""Summarization metrics of the MMGL paper: BLEU-4, ROUGE-L and CIDEr, computed offline.

The metric libraries are called directly (`evaluate.load(...)` fetches its scripts from the Hub and
fails offline):

* `bleu4`: `sacrebleu.corpus_bleu` with its defaults (`13a` tokenisation, case-sensitive, 4-gram,
  `exp` smoothing, no effective order), i.e. corpus BLEU = brevity penalty x geometric mean of the
  corpus-level modified n-gram precisions, **divided by 100** so it lies in `[0, 1]`.
* `rougeL`: `rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)`, the mean over
  examples of the ROUGE-L F-measure (LCS-based; lower-cased, non-alphanumerics dropped, Porter
  stemming), in `[0, 1]`.
* `cider`: `pycocoevalcap.cider.Cider` (the CIDEr-D variant of pycocoevalcap: clipped tf-idf
  n-gram cosine, n = 1..4, Gaussian length penalty sigma = 6) on lower-cased, whitespace-tokenised
  text (no Java PTB tokeniser; punctuation stays attached to its word). The raw pycocoevalcap value
  is returned: a perfect match scores 10 per example at most; papers usually print it x100 like
  COCO's, e.g. 0.74 -> "74". **CIDEr's IDF is computed over the set being scored**, so an n-gram
  present in every reference weighs nothing and a one-example set always scores 0.0, even when the
  prediction equals its reference. Score a whole evaluation split at once, never example by example.

`metrics_style="original"` reproduces the original MMGL code's scoring (minjiyoon/MMGL,
`language_modelling/run_generation.py`) on the same predictions, so numbers can sit beside the paper's:

* predictions are cut before their first `'.'` when it comes after the 5th character
  (`first_sentence_cut`; references are not cut);
* BLEU-n as torchmetrics' `BLEUScore(n_gram=n)`: whitespace tokens, case kept, no smoothing, corpus
  brevity penalty (here `sacrebleu` with `tokenize="none"` and `smooth_method="none"`, which computes the
  same quantity), in `[0, 1]`;
* ROUGE as torchmetrics' `ROUGEScore()`: no stemming (lower-cased, non-alphanumerics dropped), mean
  F-measure over examples (here `rouge_score` without stemmer: the same tokenisation);
* CIDEr: the same CIDEr-D (the original copies vrama91's scorer, which pycocoevalcap ships) on the raw
  whitespace tokens (no lower-casing). The original script's own CIDEr call cannot run as published (it
  wraps each reference in a second list and indexes the score with a ROUGE key);
* its validation score was computed from the teacher-forced logits (argmax at every summary position), not
  from generation: `teacher_forced_predictions` rebuilds those texts, reported as `eval_teacher_forced_*`.

This file imports only installed packages, so it can sit in a flat Hub folder.
"""
from __future__ import annotations

from collections.abc import Sequence

METRICS_STYLES = ("mmgl", "original")


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
    """Corpus BLEU-4 of sacrebleu (default settings), in `[0, 1]`."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score) / 100.0


def bleu_n(predictions: Sequence[str], references: Sequence[str], n: int) -> float:
    """Corpus BLEU-n of sacrebleu (default settings, n-gram order `n`), in `[0, 1]`."""
    from sacrebleu.metrics import BLEU

    _check(predictions, references)
    return float(BLEU(max_ngram_order=n).corpus_score(list(predictions), [list(references)]).score) / 100.0


def rouge(predictions: Sequence[str], references: Sequence[str], kinds=("rouge1", "rouge2", "rougeL")) -> dict[str, float]:
    """Mean ROUGE F-measures (rouge_score, Porter stemmer) of each kind, in `[0, 1]`."""
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
    """Mean ROUGE-L F-measure (rouge_score, Porter stemmer), in `[0, 1]`."""
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
        `dict[str, float]`: `bleu1` .. `bleu3` (the same at lower n-gram orders), `rouge1` / `rouge2`
        (mean unigram / bigram ROUGE F-measure), `bleu4` (sacrebleu corpus BLEU / 100, in `[0, 1]`), `rougeL` (mean
        F-measure, in `[0, 1]`) and `cider` (pycocoevalcap's raw corpus CIDEr, `0` to `10`; its
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


def first_sentence_cut(text: str) -> str:
    """The original MMGL code's cut of a generated summary: before the first `'.'` if it is past index 5."""
    stop = text.find(".")
    return text[:stop] if stop > 5 else text


def original_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The original MMGL code's BLEU-1..4, ROUGE-1/2/L and CIDEr (see the module docstring), same keys as
    `summarization_metrics`."""
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    _check(predictions, references)
    cut = [first_sentence_cut(p) for p in predictions]
    refs = [list(references)]
    metrics = {f"bleu{n}": float(BLEU(max_ngram_order=n, tokenize="none", smooth_method="none")
                                 .corpus_score(cut, refs).score) / 100.0 for n in (1, 2, 3, 4)}
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=False)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(cut, references):
        scores = scorer.score(reference, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    metrics.update({kind: total / len(cut) for kind, total in totals.items()})
    score, _ = Cider().compute_score({i: [r] for i, r in enumerate(references)}, {i: [p] for i, p in enumerate(cut)})
    metrics["cider"] = float(score)
    return metrics


def score(predictions: Sequence[str], references: Sequence[str], style: str = "mmgl") -> dict[str, float]:
    """`summarization_metrics` (`style="mmgl"`) or `original_metrics` (`style="original"`)."""
    if style not in METRICS_STYLES:
        raise ValueError(f"metrics style must be one of {METRICS_STYLES}, got {style!r}")
    return summarization_metrics(predictions, references) if style == "mmgl" else original_metrics(predictions,
                                                                                                  references)


def teacher_forced_predictions(predicted_ids, label_ids, tokenizer) -> tuple[list[str], list[str]]:
    """The texts the original code scored at validation: at every summary position (label != -100) the argmax
    of the logits of the position before it, and the label tokens themselves, decoded.

    Args:
        predicted_ids (`np.ndarray` or `torch.Tensor` of shape `(N, L)`): argmax of the teacher-forced logits.
        label_ids (same shape): the labels, -100 outside the summary.
    """
    predictions, references = [], []
    for predicted, labels in zip(predicted_ids, label_ids):
        positions = [i for i in range(1, len(labels)) if labels[i] != -100]
        predictions.append(tokenizer.decode([int(predicted[i - 1]) for i in positions], skip_special_tokens=True))
        references.append(tokenizer.decode([int(labels[i]) for i in positions], skip_special_tokens=True))
    return [p.strip() for p in predictions], [r.strip() for r in references]


def teacher_forced_metrics(tokenizer):
    """`Trainer(compute_metrics=..., preprocess_logits_for_metrics=...)` pair that adds the original code's
    validation score to the loss evaluation: `eval_teacher_forced_bleu4` etc. (`original_metrics` of the
    teacher-forced argmax texts against the label texts)."""

    def argmax_logits(logits, labels):
        if labels is None:  # generated tokens (no labels): nothing to reduce
            return logits
        logits = logits[0] if isinstance(logits, tuple) else logits
        # peft prompt tuning returns logits for its virtual tokens too: keep those aligned with the labels.
        return logits[:, -labels.shape[1]:].argmax(-1)

    def compute_metrics(eval_prediction):
        predictions, references = teacher_forced_predictions(eval_prediction.predictions, eval_prediction.label_ids,
                                                             tokenizer)
        return {f"teacher_forced_{k}": v for k, v in original_metrics(predictions, references).items()}

    return compute_metrics, argmax_logits


def metrics_implementation(style: str = "mmgl") -> dict:
    """What produced a set of metrics, recorded in every metrics file and the model card."""
    from importlib.metadata import version

    versions = {name: version(name) for name in ("sacrebleu", "rouge-score", "pycocoevalcap")}
    if style == "mmgl":
        return {
            "style": "mmgl",
            "description": "BLEU: sacrebleu corpus BLEU (13a tokenisation, exp smoothing) / 100; ROUGE: rouge_score "
                           "mean F-measure with Porter stemming; CIDEr: pycocoevalcap CIDEr-D on lower-cased "
                           "whitespace tokens, IDF over the scored set.",
            "versions": versions,
        }
    return {
        "style": "original",
        "description": "the original MMGL code's scoring: predictions cut before the first '.' (past its 5th "
                       "character); BLEU as torchmetrics BLEUScore (whitespace tokens, no smoothing; computed with "
                       "sacrebleu tokenize='none', smooth_method='none') / 1; ROUGE as torchmetrics ROUGEScore (no "
                       "stemming); CIDEr-D on raw whitespace tokens; eval_teacher_forced_*: the original validation "
                       "score, from the argmax of the teacher-forced logits.",
        "versions": versions,
    }


__all__ = ["METRICS_STYLES", "bleu4", "bleu_n", "cider", "first_sentence_cut", "metrics_implementation",
           "original_metrics", "rouge", "rouge_l", "score", "summarization_metrics", "teacher_forced_metrics",
           "teacher_forced_predictions"]
