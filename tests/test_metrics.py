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


# ------------------------------------------------------------------ --metrics_style original

ORIGINAL_PREDICTIONS = ["the cat sat on the mat. It purred loudly", "a dog runs in the park", "Oh. birds fly south"]
ORIGINAL_REFERENCES = ["the cat sat on a mat", "a dog runs in a big park", "birds fly south in winter"]


def test_original_style_cuts_at_the_first_full_stop_past_index_5():
    from processing.training.metrics import first_sentence_cut

    assert [first_sentence_cut(p) for p in ORIGINAL_PREDICTIONS] == [
        "the cat sat on the mat", "a dog runs in the park", "Oh. birds fly south"]  # "Oh." ends at index 2: kept


def test_original_style_bleu_and_rouge_by_hand():
    from processing.training.metrics import original_metrics

    scores = original_metrics(ORIGINAL_PREDICTIONS, ORIGINAL_REFERENCES)
    # Whitespace tokens, case kept ("Oh." is one token), clipped n-gram matches summed over the corpus:
    #   1-grams 5/6 + 5/6 + 3/4 -> 13/16; 2-grams 3/5 + 3/5 + 2/3 -> 8/13;
    #   3-grams 2/4 + 2/4 + 1/2 -> 5/10;  4-grams 1/3 + 1/3 + 0/1 -> 2/7.
    # Lengths: hypotheses 6 + 6 + 4 = 16, references 6 + 7 + 5 = 18: brevity penalty exp(1 - 18/16).
    penalty = math.exp(1 - 18 / 16)
    precisions = [13 / 16, 8 / 13, 5 / 10, 2 / 7]
    for n in (1, 2, 3, 4):
        expected = penalty * math.prod(precisions[:n]) ** (1 / n)
        assert scores[f"bleu{n}"] == pytest.approx(expected, abs=1e-9), n
    # ROUGE-L without stemming: LCS 5 of 6/6, 5 of 6/7, 3 of 4/5 ("oh birds fly south" vs "birds fly south in winter").
    f3 = 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5)
    assert scores["rougeL"] == pytest.approx((5 / 6 + 10 / 13 + f3) / 3, abs=1e-12)
    # The same predictions score differently under mmgl's conventions (no cut, 13a tokens, stemming).
    assert summarization_metrics(ORIGINAL_PREDICTIONS, ORIGINAL_REFERENCES)["bleu4"] != pytest.approx(scores["bleu4"])


def test_original_style_keeps_case_and_stems_nothing():
    from processing.training.metrics import original_metrics

    upper = ["THE CAT SAT ON A MAT", "A DOG RUNS IN A BIG PARK", "BIRDS FLY SOUTH IN WINTER"]
    assert summarization_metrics(upper, ORIGINAL_REFERENCES)["cider"] == pytest.approx(10.0)  # lower-cased
    assert original_metrics(upper, ORIGINAL_REFERENCES)["cider"] == 0.0  # raw tokens: nothing in common
    assert original_metrics(["the dog running"], ["the dog runs"])["rougeL"] == pytest.approx(2 / 3)
    assert rouge_l(["the dog running"], ["the dog runs"]) == pytest.approx(1.0)  # mmgl: Porter stemming


def test_teacher_forced_predictions_take_the_argmax_before_each_summary_token():
    from types import SimpleNamespace

    from processing.training.metrics import teacher_forced_predictions

    words = {1: "the", 2: "cat", 3: "sat", 4: "dog"}
    tokenizer = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: " ".join(words[i] for i in ids))
    labels = [[-100, -100, 1, 2, 3]]  # the summary "the cat sat" at positions 2..4
    argmax = [[9, 1, 1, 4, 9]]  # position t predicts token t + 1: "the dog" + the last position's (ignored)
    assert teacher_forced_predictions(argmax, labels, tokenizer) == (["the the dog"], ["the cat sat"])
