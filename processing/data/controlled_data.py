"""A controlled WikiWeb2M sample: each finding of the MMGL study has one known, planted cause.

It extends the bundled generator (`processing.data.sample_data`: same vocabulary, page builder, row
schema, image drawings and TFRecord writer) with pages whose six summarization samples each depend
on exactly one kind of neighbour information:

===========  ==========================================  ==============================================
section      summary (target)                            where the fact is (`SummaryFact.source`)
===========  ==========================================  ==============================================
Geography    `Kelvo lies close to Pessa.`              `page_description` (text context helps)
Flag         `The flag of Kelvo is red.`               `image_pixels`: the caption says only "The
                                                         flag of Kelvo."; the colour is in the pixels
Emblem       `The emblem of Kelvo is a triangle.`      `image_pixels` (the drawn shape)
Founding     `Kelvo was founded in 1764.`              `long_parent_text`: the parent (History) is
Rulers       `The first ruler of Kelvo was King Doran.` a long text whose facts sit past its first
                                                         ~70 tokens, where a text encoder truncates or
                                                         dilutes them but raw tokens keep them
Market       `The market of Kelvo sells honey.`        `child_section`: three sections say "Most
                                                         stalls there sell <product>." with different
                                                         products; only the one whose parent is the
                                                         Market section is right
===========  ==========================================  ==============================================

The structure task (Market) must not be solvable from the neighbour ORDER: the processor ranks the
target's parent first and then the other sections by distance in page order, so the non-lead
sections are shuffled (parent indices follow them), which puts the right `Stalls` section and the
two distractor `Stalls` sections (children of the `Harbour` and `Old town` sections, of the same
template) at random ranks. Only the graph (the right one is the target's child) tells them apart.

Usage::

    python -m processing.data.controlled_data out/controlled --num_pages 600
    # -> out/controlled/wikiweb2m-sample.tfrecord.gz and out/controlled/images/*.png
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from typing import Any

from .sample_data import (
    CITIES,
    COLOURS,
    EMBLEM_FILLER,
    FLAG_FILLER,
    FOUNDING_FILLER,
    GEOGRAPHY_FILLER,
    KINDS,
    LEAD_FILLER,
    MARKET_FILLER,
    NAMES,
    PRODUCTS,
    RULERS,
    RULERS_FILLER,
    SHAPES,
    SPLIT_PATTERN,
    YEARS,
    SamplePage,
    SummaryFact,
    _PageBuilder,
    generate_sample,
)

# Long, fact-free history text: about 80 words (~90 tokens) before the facts.
HISTORY_FILLER = (
    "In the early days the people lived from the land and from the river.",
    "The old roads were narrow and the winters were hard for everyone.",
    "Many families moved there from the hills and built houses of wood and stone.",
    "Over the years the place grew slowly, with new streets around the old square.",
    "Travellers wrote that the people were friendly and the food was simple.",
    "A great storm once broke many roofs, and the houses were built again.",
    "Later a school and a small hall were added near the main street.",
    "The records of those years are kept in a wooden chest in the hall.",
)
HISTORY_FILLER_SENTENCES = 6  # ~80 words of filler before the first fact
STALLS_SENTENCE = "Most stalls there sell {product}."  # one template: the right one and the distractors
STALLS_FILLER = ("The stalls are small and close together.", "Some stalls are open on Sundays.")
DISTRACTOR_PARENTS = (("Harbour", "Boats are tied up along the stone quay."),
                      ("Old town", "The old town has narrow lanes and small squares."))


def _permute_sections(b: _PageBuilder, facts: dict[int, SummaryFact], rng: random.Random) -> dict[int, SummaryFact]:
    """Shuffles every section but the lead (index 0) in place, remapping parents, children and `facts`."""
    order = [0] + rng.sample(range(1, len(b.sections)), len(b.sections) - 1)  # order[new] = old
    new_of = {old: new for new, old in enumerate(order)}
    sections = [b.sections[old] for old in order]
    for s in sections:
        s["parent"] = -1 if s["parent"] < 0 else new_of[s["parent"]]
        s["children"] = sorted(new_of[c] for c in s["children"])
    b.sections[:] = sections
    return {new_of[old]: fact for old, fact in facts.items()}


def make_controlled_page(index: int, seed: int = 0, image_size: int = 64) -> SamplePage:
    """Generate page number `index` of the controlled sample (independent of how many pages are made).

    Args:
        index (`int`): page position; also fixes its split (`SPLIT_PATTERN`).
        seed (`int`, *optional*, defaults to 0): sample seed.
        image_size (`int`, *optional*, defaults to 64): declared image width and height.

    Returns:
        `SamplePage`: `facts` gives, per sample section, the fact and its source (see the module table).
    """
    rng = random.Random((seed << 40) ^ index ^ 0x5EED)  # a different stream from sample_data's pages
    name, kind, city = rng.choice(NAMES), rng.choice(KINDS), rng.choice(CITIES)
    colour, shape = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
    year, ruler = rng.choice(YEARS), rng.choice(RULERS)
    product, *decoys = rng.sample(PRODUCTS, 1 + len(DISTRACTOR_PARENTS))
    fname = f"Controlled_{index:06d}_{name}"
    b = _PageBuilder(image_size)
    facts: dict[int, SummaryFact] = {}

    def add_sample(title, depth, parent, summary, pool, fact, source, neighbour, images=()):
        rest = " ".join(rng.sample(pool, rng.randint(1, 2)))
        i = b.add(title, depth, parent, summary, rest, images=images)
        facts[i] = SummaryFact(fact, source, neighbour)
        return i

    desc = [f"{name} is a {kind} near the city of {city}.", rng.choice(LEAD_FILLER)]
    clean_desc = " ".join(desc)
    lead = b.add("Introduction", 0, None, desc[0], desc[1])
    add_sample("Geography", 1, lead, f"{name} lies close to {city}.", GEOGRAPHY_FILLER, city, "page_description",
               clean_desc)

    # Pixels only: the captions name the object, never its colour or shape.
    cap = f"The flag of {name}."
    add_sample("Flag", 1, lead, f"The flag of {name} is {colour}.", FLAG_FILLER, colour, "image_pixels", cap,
               [(f"{fname}_flag.png", ("solid", colour), cap)])
    cap = f"The emblem of {name}."
    add_sample("Emblem", 1, lead, f"The emblem of {name} is a {shape}.", EMBLEM_FILLER, shape, "image_pixels", cap,
               [(f"{fname}_emblem.png", ("shape", shape), cap)])

    # A long parent text, its facts after ~80 words of filler (a table section: not a sample itself).
    filler = " ".join(rng.sample(HISTORY_FILLER, HISTORY_FILLER_SENTENCES))
    hist_rest = f"{filler} The {kind} was founded in {year}. Its first ruler was {ruler}."
    hist = b.add("History", 1, lead, f"{name} has a long history.", hist_rest, table=True)
    hist_text = b.sections[hist]["text"]
    add_sample("Founding", 2, hist, f"{name} was founded in {year}.", FOUNDING_FILLER, str(year),
               "long_parent_text", hist_text)
    add_sample("Rulers", 2, hist, f"The first ruler of {name} was {ruler}.", RULERS_FILLER, ruler,
               "long_parent_text", hist_text)

    # Structure: the right "Stalls" is the Market's child; two decoys of the same template hang elsewhere.
    stalls = STALLS_SENTENCE.format(product=product)
    market = add_sample("Market", 1, lead, f"The market of {name} sells {product}.", MARKET_FILLER, product,
                        "child_section", stalls)
    # Stalls texts go in the rest field with no first sentence: they are neighbours, never samples.
    b.add("Stalls", 2, market, "", f"{stalls} {rng.choice(STALLS_FILLER)}")
    for (title, text), decoy in zip(DISTRACTOR_PARENTS, decoys):
        parent = b.add(title, 1, lead, "", text)
        b.add("Stalls", 2, parent, "", f"{STALLS_SENTENCE.format(product=decoy)} {rng.choice(STALLS_FILLER)}")

    facts = _permute_sections(b, facts, rng)
    url = f"https://en.wikipedia.org/wiki/{name}_(controlled_{index})"
    row = b.row(SPLIT_PATTERN[index % len(SPLIT_PATTERN)], url, name, clean_desc, clean_desc)
    return SamplePage(row=row, facts=facts, images=b.images)


def generate_controlled(output_dir, num_pages: int = 600, seed: int = 0, image_size: int = 64) -> dict[str, Any]:
    """Write the controlled sample (`make_controlled_page`) with `processing.data.sample_data.generate_sample`'s
    writer: `<output_dir>/wikiweb2m-sample.tfrecord.gz` and `<output_dir>/images/`. Returns its summary dict."""
    return generate_sample(output_dir, num_pages, seed, image_size, page_factory=make_controlled_page)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m processing.data.controlled_data OUTPUT_DIR [--num_pages N] [--seed S]`."""
    parser = argparse.ArgumentParser(prog="python -m processing.data.controlled_data",
                                     description="Write the controlled WikiWeb2M sample of the MMGL study.")
    parser.add_argument("output_dir")
    parser.add_argument("--num_pages", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args(argv)
    info = generate_controlled(args.output_dir, args.num_pages, args.seed, args.image_size)
    print(f"wrote {info['pages']} pages, {info['summarization_samples']} summarization samples, "
          f"{info['images']} images to {info['files'][0]}")
    return 0


__all__ = ["generate_controlled", "main", "make_controlled_page"]

if __name__ == "__main__":
    sys.exit(main())
