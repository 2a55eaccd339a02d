"""Fact-level scoring of a study run's generations on generated pages (`processing.data.sample_data` /
`processing.data.controlled_data`): did the summary state the planted fact, a decoy, or neither?

ROUGE-L and friends mostly measure how well a model copies the page name, which is in every summary and every
neighbour; a fully solved fact moves them by about one percent. The generators know each sample's fact and where
it comes from (`SummaryFact`), so a generation can be scored on the fact itself:

* `right`: the fact's value is stated and no other value of its kind;
* `decoy`: another value of the same kind is stated (another colour, product, year, ...), with or without the
  right one: hedging between the right fact and a decoy is not knowing the fact;
* `neither`: no value of that kind.

The page name is masked (removed) from the generation before matching, so copying the name scores nothing; the
same masking gives `rougeL_name_masked` (ROUGE-L with the name removed from prediction and reference).

A generated page is identified by its URL (`..._(controlled_N)` / `..._(sample_N)`) and regenerated from
its index and the generator's seed, so scoring needs no side file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from processing.data.sample_data import CITIES, COLOURS, NUMBERS, PRODUCTS, RULERS, SHAPES, YEARS
from processing.errors import MMGLInputError

OUTCOMES = ("right", "decoy", "neither")


class FactScoringError(MMGLInputError, ValueError):
    """A generation that cannot be scored: its page is not a generated one, or its section holds no planted fact."""


# Every vocabulary a planted fact is drawn from; a decoy is another member of the fact's own vocabulary.
KINDS = {
    "city": CITIES,
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "ruler": RULERS,
    "product": PRODUCTS,
    "year": tuple(str(y) for y in YEARS),
    "number": tuple(NUMBERS.values()),
}
GENERATED_URL = re.compile(r"_\((sample|controlled)_(\d+)\)$")
PREDICTIONS_FILE = "predict_predictions.jsonl"


def _stated(text: str, value: str) -> bool:
    """Whether `value` appears in `text` as whole words (case-insensitive)."""
    return re.search(rf"(?<![\w]){re.escape(value)}(?![\w])", text, flags=re.IGNORECASE) is not None


def mask_name(text: str, name: str) -> str:
    """`text` with every whole-word occurrence of the page name removed (spaces squeezed)."""
    if not name:
        return text
    masked = re.sub(rf"(?<![\w]){re.escape(name)}(?![\w])", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", masked).strip()


def kind_of(value: str) -> str | None:
    """The vocabulary `value` belongs to, `None` when none does (then no decoy exists)."""
    return next((kind for kind, words in KINDS.items() if value in words), None)


def fact_outcome(prediction: str, value: str, name: str = "") -> str:
    """`right` / `decoy` / `neither` for one generation (rules in the module docstring).

    Args:
        prediction (`str`): the generated summary.
        value (`str`): the planted fact (`SummaryFact.value`).
        name (`str`, *optional*): the page name, masked before matching.
    """
    text = mask_name(prediction, name)
    kind = kind_of(value)
    decoys = [w for w in KINDS[kind] if w != value] if kind else []
    if any(_stated(text, d) for d in decoys):
        return "decoy"
    return "right" if _stated(text, value) else "neither"


@lru_cache(maxsize=4096)
def page_facts(page_url: str, seed: int = 0) -> tuple[str, dict]:
    """`(page name, {section index: SummaryFact})` of a generated page, regenerated from its URL and `seed`."""
    match = GENERATED_URL.search(page_url or "")
    if match is None:
        raise FactScoringError("not a generated page's URL (expected '..._(controlled_N)' or '..._(sample_N)'): "
                               "fact scoring needs the generator's pages.", page=page_url, field="page_url")
    generator, index = match.group(1), int(match.group(2))
    if generator == "controlled":
        from processing.data.controlled_data import make_controlled_page as make
    else:
        from processing.data.sample_data import make_page as make
    page = make(index, seed)
    return page.row["page_title"], page.facts


def score_records(records: Iterable[dict], seed: int = 0) -> dict[str, float]:
    """Fact scores of a run's generations (`*_predictions.jsonl` records with `page_url`, `section`,
    `prediction` and `reference`).

    Returns:
        `dict`: `facts_<outcome>` (fractions over every scored generation), `facts_<outcome>_<source>` per
        fact source (`image_pixels`, `child_section`, ...), `facts_n` / `facts_n_<source>` (counts) and
        `rougeL_name_masked`.
    """
    from processing.training.metrics import rouge_l

    counts: dict[str, dict[str, int]] = {}
    predictions, references = [], []
    for record in records:
        name, facts = page_facts(record["page_url"], seed)
        fact = facts.get(int(record["section"]))
        if fact is None:
            raise FactScoringError(f"no planted fact there (sections with facts: {sorted(facts)}).",
                                   page=record["page_url"], section=int(record["section"]))
        outcome = fact_outcome(record["prediction"], fact.value, name)
        for group in ("", fact.source):
            counts.setdefault(group, dict.fromkeys(OUTCOMES, 0))[outcome] += 1
        predictions.append(mask_name(record["prediction"], name))
        references.append(mask_name(record["reference"], name))
    scores: dict[str, float] = {}
    for group, by_outcome in sorted(counts.items()):
        suffix = f"_{group}" if group else ""
        total = sum(by_outcome.values())
        scores[f"facts_n{suffix}"] = total
        for outcome, n in by_outcome.items():
            scores[f"facts_{outcome}{suffix}"] = n / total
    if predictions:
        scores["rougeL_name_masked"] = rouge_l(predictions, references)
    return scores


def score_run(run_dir: str | Path, seed: int = 0, file_name: str = PREDICTIONS_FILE) -> dict[str, float]:
    """`score_records` of `<run_dir>/<file_name>`; empty when the run wrote no predictions."""
    path = Path(run_dir) / file_name
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return score_records((json.loads(line) for line in lines), seed)


def fact_columns(sources: Sequence[str]) -> list[str]:
    """The `results.csv` columns of `score_records` for these fact sources."""
    columns = [f"facts_{o}" for o in OUTCOMES] + ["facts_n"]
    for source in sources:
        columns += [f"facts_{o}_{source}" for o in OUTCOMES] + [f"facts_n_{source}"]
    return columns + ["rougeL_name_masked"]


__all__ = ["KINDS", "OUTCOMES", "FactScoringError", "fact_columns", "fact_outcome", "kind_of", "mask_name",
           "page_facts", "score_records", "score_run"]
