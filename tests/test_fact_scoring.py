"""Fact-level scoring of study generations (studies/fact_scoring.py) on hand-made generations."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "studies"))

import fact_scoring  # noqa: E402
from fact_scoring import fact_outcome, mask_name, page_facts, score_records  # noqa: E402

from processing.data.controlled_data import make_controlled_page  # noqa: E402
from processing.errors import MMGLInputError  # noqa: E402


@pytest.mark.parametrize(
    "prediction, outcome",
    [
        ("The flag of Kelvo is red.", "right"),
        ("The flag of Kelvo is blue.", "decoy"),
        ("The flag of Kelvo is red or blue.", "decoy"),  # both: hedging is not knowing the fact
        ("The flag of Kelvo is old.", "neither"),
        ("The flag of Kelvo is reddish.", "neither"),  # whole words only
        ("THE FLAG IS RED", "right"),  # case-insensitive
    ],
)
def test_outcome_of_hand_made_generations(prediction, outcome):
    assert fact_outcome(prediction, "red", name="Kelvo") == outcome


def test_page_name_is_masked_before_matching():
    # A page named like a city: its name in the generation is not a decoy city once masked.
    assert fact_outcome("Orlan lies close to Pessa.", "Pessa", name="Orlan") == "right"
    assert fact_outcome("Orlan lies close to Pessa.", "Pessa") == "decoy"  # unmasked, the name reads as a city
    assert fact_outcome("Orlan lies close to the sea.", "Pessa", name="Orlan") == "neither"
    assert mask_name("Kelvo lies close to Kelvo's hill; kelvo.", "Kelvo") == "lies close to 's hill; ."
    assert mask_name("Kelvoria is not Kelvo", "Kelvo") == "Kelvoria is not"  # whole words only


def test_multi_word_and_number_facts():
    assert fact_outcome("The first ruler of Kelvo was King Doran.", "King Doran", "Kelvo") == "right"
    assert fact_outcome("The first ruler of Kelvo was King Benno.", "King Doran", "Kelvo") == "decoy"
    assert fact_outcome("The first ruler of Kelvo was King.", "King Doran", "Kelvo") == "neither"
    assert fact_outcome("Kelvo was founded in 1764.", "1764", "Kelvo") == "right"
    assert fact_outcome("Kelvo was founded in 1765.", "1764", "Kelvo") == "decoy"
    assert fact_outcome("Kelvo was founded in 17645.", "1764", "Kelvo") == "neither"
    assert fact_outcome("It is something else.", "not a vocabulary word") == "neither"  # no kind, no decoys


def _records_of_page(index):
    page = make_controlled_page(index)
    url, name = page.row["page_url"], page.row["page_title"]
    return url, name, page.facts


def test_page_facts_regenerates_the_page_from_its_url():
    url, name, facts = _records_of_page(7)
    assert page_facts(url) == (name, facts)
    with pytest.raises(fact_scoring.FactScoringError, match="page 'https://en.wikipedia.org/wiki/Paris', field "
                       "'page_url': not a generated page") as caught:
        page_facts("https://en.wikipedia.org/wiki/Paris")
    assert isinstance(caught.value, MMGLInputError) and isinstance(caught.value, ValueError)


def test_score_records_counts_outcomes_per_source_and_masks_the_name_in_rouge():
    url, name, facts = _records_of_page(3)
    by_source = {}
    for section, fact in facts.items():
        by_source.setdefault(fact.source, []).append((section, fact))
    (pixel_a, flag), (pixel_b, emblem) = by_source["image_pixels"]
    (child, market), = by_source["child_section"]
    decoy_product = next(p for p in fact_scoring.PRODUCTS if p != market.value)
    records = [
        {"page_url": url, "section": pixel_a, "prediction": f"{name} is {flag.value}.", "reference": f"{name} is {flag.value}."},
        {"page_url": url, "section": pixel_b, "prediction": f"{name}.", "reference": f"{name} is a {emblem.value}."},
        {"page_url": url, "section": child, "prediction": f"{name} sells {decoy_product}.",
         "reference": f"{name} sells {market.value}."},
        {"page_url": url, "section": child, "prediction": f"{name} sells {market.value}.",
         "reference": f"{name} sells {market.value}."},
    ]
    scores = score_records(records)
    assert scores["facts_n"] == 4
    assert scores["facts_right"] == pytest.approx(2 / 4)
    assert scores["facts_decoy"] == pytest.approx(1 / 4)
    assert scores["facts_neither"] == pytest.approx(1 / 4)
    assert (scores["facts_right_image_pixels"], scores["facts_neither_image_pixels"]) == (0.5, 0.5)
    assert (scores["facts_right_child_section"], scores["facts_decoy_child_section"]) == (0.5, 0.5)
    assert scores["facts_n_child_section"] == 2
    # The name-only generation scores 0 once the name is masked (it would share the name with the reference).
    from processing.training.metrics import rouge_l

    masked = [mask_name(r[k], name) for r in records for k in ("prediction",)]
    refs = [mask_name(r["reference"], name) for r in records]
    assert scores["rougeL_name_masked"] == pytest.approx(rouge_l(masked, refs))
    assert scores["rougeL_name_masked"] < rouge_l([r["prediction"] for r in records], [r["reference"] for r in records])


def test_score_run_reads_the_predictions_file_and_names_bad_sections(tmp_path):
    url, name, facts = _records_of_page(5)
    assert fact_scoring.score_run(tmp_path) == {}  # no predictions: nothing scored
    section = next(iter(facts))
    good = {"page_url": url, "section": section, "prediction": "x", "reference": "y"}
    (tmp_path / "predict_predictions.jsonl").write_text(json.dumps(good) + "\n")
    assert fact_scoring.score_run(tmp_path)["facts_neither"] == 1.0
    bad = dict(good, section=0)  # the lead section has no planted fact
    with pytest.raises(fact_scoring.FactScoringError, match="section 0: no planted fact"):
        score_records([bad])
