"""BLEU-4 / ROUGE-L / CIDEr against values derived by hand."""
import math

import pytest

from processing.training.metrics import bleu4, cider, rouge_l, summarization_metrics

# Lower-case words without punctuation: sacrebleu's 13a tokeniser and rouge_score's tokeniser both
# reduce to a whitespace split, so the n-gram counts below can be done by hand.
PREDICTIONS = ["the cat sat on the mat", "a dog runs in the park"]
REFERENCES = ["the cat sat on a mat", "a dog runs in a big park"]


def test_identical_texts_score_one():
    texts = ["the cat sat on a mat", "a dog runs in a big park", "Birds fly south in winter."]
    scores = summarization_metrics(texts, texts)
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["rougeL"] == pytest.approx(1.0)
    # Identical tf-idf vectors: cosine 1 for every n, no length penalty, x10.
    assert scores["cider"] == pytest.approx(10.0)


def test_bleu4_by_hand():
    # Clipped n-gram matches / hypothesis n-grams, summed over the corpus:
    #   sentence 1 "the cat sat on the mat" vs "the cat sat on a mat":
    #     1-grams 5/6 (second "the" clipped), 2-grams 3/5 (the cat, cat sat, sat on),
    #     3-grams 2/4 (the cat sat, cat sat on), 4-grams 1/3 (the cat sat on)
    #   sentence 2 "a dog runs in the park" vs "a dog runs in a big park":
    #     1-grams 5/6 ("the" unmatched), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    #   corpus: p1 = 10/12, p2 = 6/10, p3 = 4/8, p4 = 2/6; product = 1/12.
    # Lengths: hypothesis c = 12, reference r = 13 -> brevity penalty exp(1 - 13/12).
    expected = math.exp(1 - 13 / 12) * (10 / 12 * 6 / 10 * 4 / 8 * 2 / 6) ** 0.25
    assert expected == pytest.approx(0.494326, abs=1e-6)
    assert bleu4(PREDICTIONS, REFERENCES) == pytest.approx(expected, abs=1e-9)


def test_bleu4_brevity_and_zero():
    # A hypothesis with no 4-gram match at all scores 0 (no effective order).
    assert bleu4(["the cat"], ["the cat sat on a mat"]) == pytest.approx(0.0)
    # Same 4-gram precisions, shorter hypothesis: penalised exactly by exp(1 - r/c).
    full = bleu4(["a b c d e f"], ["a b c d e f"])
    short = bleu4(["a b c d e"], ["a b c d e f"])
    assert full == pytest.approx(1.0)
    assert short == pytest.approx(math.exp(1 - 6 / 5))


def test_rouge_l_by_hand():
    # Sentence 1: LCS "the cat sat on mat" = 5; P = 5/6, R = 5/6, F = 5/6.
    # Sentence 2: LCS "a dog run in park" = 5 ("runs" stems to "run" on both sides);
    #   P = 5/6, R = 5/7, F = 2PR / (P + R) = 10/13.
    expected = (5 / 6 + 10 / 13) / 2
    assert rouge_l(PREDICTIONS, REFERENCES) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_stems_and_ignores_case_and_punctuation():
    # "Running" / "runs" stem to "run"; case and the full stop are dropped: a perfect LCS.
    assert rouge_l(["The dog runs."], ["the dog running"]) == pytest.approx(1.0)


def test_cider_perfect_beats_mismatch_and_single_example_is_zero():
    perfect = cider(REFERENCES, REFERENCES)
    partial = cider(PREDICTIONS, REFERENCES)
    unrelated = cider(["x y z w", "q r s t"], REFERENCES)
    assert perfect == pytest.approx(10.0)
    assert perfect > partial > unrelated == 0.0
    # IDF over a one-example set: every n-gram is in every reference -> weight log(1) - log(1) = 0.
    assert cider([REFERENCES[0]], [REFERENCES[0]]) == 0.0
    # Lower-cased and whitespace-tokenised before scoring.
    assert cider(["THE  cat sat on a mat", "A dog runs in a big park"], REFERENCES) == pytest.approx(10.0)


def test_metric_keys_and_ranges():
    scores = summarization_metrics(PREDICTIONS, REFERENCES)
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL", "cider"}
    assert all(0.0 <= scores[name] <= 1.0 for name in scores if name != "cider")
    assert all(isinstance(v, float) for v in scores.values())


@pytest.mark.parametrize(
    "predictions, references, error, match",
    [
        (["a"], ["a", "b"], ValueError, "1 predictions for 2 references"),
        ([], [], ValueError, "empty"),
        ("a b", "a b", TypeError, "single string"),
        (["a", None], ["a", "b"], TypeError, r"predictions\[1\]"),
    ],
)
def test_validation(predictions, references, error, match):
    with pytest.raises(error, match=match):
        summarization_metrics(predictions, references)
