"""A synthetic WikiWeb2M sample whose section summaries can only be written from the neighbours.

Each page describes a fictional place. Every section summarization target
(`section_clean_1st_sentence`) states one key fact -- a city, a colour, a year, a ruler, a
number, a shape or a product -- that appears nowhere in the section's own title or remaining text
(`section_rest_sentence`), only in a *neighbour*:

===========  ==========================================  ======================================
section      summary (target)                            where the fact is
===========  ==========================================  ======================================
Geography    `Kelvo lies close to Pessa.`              page description / lead section
Flag         `The flag of Kelvo is red.`               image caption + the image (solid red)
Founding     `Kelvo was founded in 1764.`              parent section (History)
Rulers       `The first ruler of Kelvo was King Doran.` parent section (History)
Castle       `The castle of Kelvo has five towers.`    image caption + the image (five bars)
Emblem       `The emblem of Kelvo is a triangle.`      image caption + the image (a triangle)
Market       `The market of Kelvo sells honey.`        parent section (Economy)
===========  ==========================================  ======================================

Page names repeat across pages with different facts, so a model cannot memorise "Kelvo -> red":
it has to read the description, the parent section, the caption or the pixels. Sentences are
templated over a small vocabulary, so a tiny model trained for minutes on CPU can learn the copy.

Structure exercised: a lead section (never a sample), parent / child sections (`History` ->
`Founding`, `Rulers`; `Economy` -> `Market`) with depth, heading level, parent and
subsection indices; sections with a table or list (`History`, `Economy`: not samples); sections
without images, with one, and with several (`Gallery`: images only, no text). Splits follow the
pattern train, val, test, then seven train pages (80/10/10, and val / test always have samples
once there are 3 pages). All fields of the WikiWeb2M schema are written with their real types.

Usage::

    python -m processing.data.sample_data data/sample --num_pages 200
    # -> data/sample/wikiweb2m-sample.tfrecord.gz and data/sample/images/*.png
"""
from __future__ import annotations

import argparse
import hashlib
import io
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .tfrecord_io import PathLike, write_tfrecord
from .wikiweb2m import serialize_page

# --------------------------------------------------------------------------------------------------
# Vocabulary. Fact words never occur in the filler sentences (tests check it word by word).
# --------------------------------------------------------------------------------------------------

# 48 names; they repeat across pages (with different facts) once there are more than 48 pages.
NAMES = tuple(
    start + end
    for start in ("Kel", "Mor", "Tal", "Bren", "Vor", "Lin", "Dar", "Sel")
    for end in ("vo", "dor", "ia", "mar", "ven", "ak")
)
KINDS = ("town", "village", "port")
CITIES = ("Orlan", "Pessa", "Drumel", "Kavos", "Teruna", "Balmor", "Quillan", "Ostrava")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 200),
    "yellow": (230, 210, 40),
    "purple": (130, 50, 160),
    "orange": (240, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
RULERS = (
    "King Doran",
    "Queen Amara",
    "King Benno",
    "Queen Lisel",
    "Lord Cato",
    "Lady Imre",
    "King Olek",
    "Queen Runa",
)
PRODUCTS = ("wool", "salt", "honey", "cheese", "glass", "tea", "copper", "rope")
YEARS = tuple(range(1700, 1900))

LEAD_FILLER = ("It lies in a quiet valley.", "Its streets are narrow and old.", "Many visitors come in summer.")
GEOGRAPHY_FILLER = (
    "The land around it is flat.",
    "A small river runs past the houses.",
    "Winters there are cold and long.",
    "Low hills rise to the north.",
)
FLAG_FILLER = (
    "It was first raised long ago.",
    "It flies above the hall.",
    "Children draw it at school.",
    "It is shown on every holiday.",
)
FOUNDING_FILLER = (
    "The first houses were built of wood.",
    "Farmers came from the hills.",
    "A well stood at its centre.",
    "The first road was made of stone.",
)
RULERS_FILLER = (
    "Later rulers built new roads.",
    "The rulers lived in a large house.",
    "Each ruler held a yearly feast.",
    "Their names are carved on a wall.",
)
CASTLE_FILLER = (
    "It stands on a rock above the houses.",
    "Its walls are thick and grey.",
    "Guards once kept watch there.",
    "Visitors may climb the walls.",
)
EMBLEM_FILLER = (
    "It is painted on the gates.",
    "It was chosen by the people.",
    "It appears on old coins.",
    "Every seal carries it.",
)
MARKET_FILLER = (
    "It opens every morning.",
    "Traders come from far away.",
    "It is held in the main street.",
    "Prices are written on boards.",
)
GALLERY_CAPTIONS = (
    "A street in the old part.",
    "The bridge over the river.",
    "Houses near the harbour.",
    "A path through the fields.",
    "The hall at night.",
)
LIST_ITEMS = ("The great fire", "The new bridge", "The long winter", "The first fair")
ECONOMY_ITEMS = ("Farming", "Fishing", "Crafts", "Boat building")

SPLIT_PATTERN = ("train", "val", "test") + ("train",) * 7  # 80/10/10 over every ten pages

OUTPUT_FILE = "wikiweb2m-sample.tfrecord.gz"
# Generated page URLs end in "_(sample_N)" (this generator) or "_(controlled_N)" (controlled_data.py).
GENERATED_URL_MARK = "_(sample_"
_GENERATED_URL = re.compile(r"_\((sample|controlled)_\d+\)$")
IMAGE_DIR = "images"


@dataclass
class SummaryFact:
    """The key fact of one summarization sample and where a model can find it.

    Attributes:
        value (`str`): the fact as it appears in the summary (e.g. `"red"`, `"1764"`).
        source (`str`): `"page_description"`, `"parent_section"` or `"image_caption"`
            (the image itself then shows it too).
        neighbour_text (`str`): the neighbour text that states it.
    """

    value: str
    source: str
    neighbour_text: str


@dataclass
class SamplePage:
    """One generated page: its row (the WikiWeb2M page-row schema), facts and images to draw.

    Attributes:
        row (`dict`): the page row, as `processing.data.wikiweb2m.parse_page` returns it.
        facts (`dict[int, SummaryFact]`): key fact of each summarization sample, by section index.
        images (`dict[str, tuple]`): image file name -> drawing spec for `render_image`.
    """

    row: dict[str, Any]
    facts: dict[int, SummaryFact] = field(default_factory=dict)
    images: dict[str, tuple] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def render_image(spec: tuple, image_size: int = 64) -> bytes:
    """PNG bytes of a simple drawing.

    Args:
        spec (`tuple`): `("solid", colour)`, `("towers", n)` (n dark bars on white),
            `("shape", shape)` (a dark shape on white) or `("grey", level)`.
        image_size (`int`, *optional*, defaults to 64): side in pixels.

    Returns:
        `bytes`: a PNG file.
    """
    from PIL import Image, ImageDraw

    s = image_size
    kind, arg = spec
    if kind == "solid":
        img = Image.new("RGB", (s, s), COLOURS[arg])
    elif kind == "grey":
        img = Image.new("RGB", (s, s), (arg, arg, arg))
        draw = ImageDraw.Draw(img)
        for y in range(0, s, max(s // 8, 1)):  # faint stripes: a "photo", but no colour or count cue
            draw.line([(0, y), (s, y)], fill=(arg - 20,) * 3)
    else:
        img = Image.new("RGB", (s, s), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        dark = (40, 40, 40)
        if kind == "towers":
            slot = s / (2 * arg + 1)  # n bars separated by gaps of the same width
            for k in range(arg):
                x0 = slot * (2 * k + 1)
                draw.rectangle([x0, s * 0.25, x0 + slot - 1, s * 0.9], fill=dark)
        elif kind == "shape":
            m, c = s * 0.15, s / 2
            if arg == "circle":
                draw.ellipse([m, m, s - m, s - m], fill=dark)
            elif arg == "square":
                draw.rectangle([m, m, s - m, s - m], fill=dark)
            elif arg == "triangle":
                draw.polygon([(c, m), (s - m, s - m), (m, s - m)], fill=dark)
            elif arg == "diamond":
                draw.polygon([(c, m), (s - m, c), (c, s - m), (m, c)], fill=dark)
            else:
                raise ValueError(f"unknown shape {arg!r}")
        else:
            raise ValueError(f"unknown image spec {spec!r}")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_url(file_name: str) -> str:
    """MediaWiki's hashed upload URL of a file name (`.../commons/<h>/<hh>/<name>`)."""
    digest = hashlib.md5(file_name.encode("utf-8")).hexdigest()
    return f"https://upload.wikimedia.org/wikipedia/commons/{digest[0]}/{digest[:2]}/{file_name}"


# --------------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------------


class _PageBuilder:
    """Collects sections and derives the schema's bookkeeping fields the way WikiWeb2M does."""

    def __init__(self, image_size: int):
        self.sections: list[dict[str, Any]] = []
        self.images: dict[str, tuple] = {}
        self.image_size = image_size

    def add(self, title, depth, parent, first="", rest="", table=False, images=()):
        """Append a section; returns its index. `images`: (file name, spec, caption) triples."""
        index = len(self.sections)
        if parent is not None:
            self.sections[parent]["children"].append(index)
        text = " ".join(t for t in (first, rest) if t)
        imgs = []
        for name, spec, caption in images:
            self.images[name] = spec
            imgs.append((name, caption))
        self.sections.append(
            dict(title=title, depth=depth, parent=-1 if parent is None else parent, first=first, rest=rest,
                 text=text, table=table, images=imgs, children=[])
        )
        return index

    def row(self, split, url, title, raw_desc, clean_desc) -> dict[str, Any]:
        secs = self.sections
        size = self.image_size

        def is_sample(i, s):
            # README rule: non-lead, no table or list, a first sentence and at least one more.
            return int(i > 0 and not s["table"] and bool(s["first"]) and bool(s["rest"]))

        content = sum(1 for s in secs if (s["text"] or s["images"]) and not s["table"])
        refs = [[cap for _, cap in s["images"]] for s in secs]
        return {
            "split": split,
            "page_url": url,
            "page_title": title,
            "raw_page_description": raw_desc,
            "clean_page_description": clean_desc,
            "page_contains_images": int(any(s["images"] for s in secs)),
            "page_content_sections_without_table_list": content,
            "is_page_description_sample": int(bool(clean_desc) and "list_of" not in url.lower() and content >= 2),
            "section_title": [s["title"] for s in secs],
            "section_text": [s["text"] for s in secs],
            "section_raw_1st_sentence": [s["first"] for s in secs],
            "section_clean_1st_sentence": [s["first"] for s in secs],
            "section_rest_sentence": [s["rest"] for s in secs],
            "section_index": list(range(len(secs))),
            "section_depth": [s["depth"] for s in secs],
            "section_heading_level": [0 if s["depth"] == 0 else s["depth"] + 1 for s in secs],
            "section_parent_index": [s["parent"] for s in secs],
            "section_contains_table_or_list": [int(s["table"]) for s in secs],
            "section_contains_images": [int(bool(s["images"])) for s in secs],
            "is_section_summarization_sample": [is_sample(i, s) for i, s in enumerate(secs)],
            "section_subsection_index": [list(s["children"]) for s in secs],
            "section_image_url": [[image_url(n) for n, _ in s["images"]] for s in secs],
            "section_image_mime_type": [["image/png"] * len(s["images"]) for s in secs],
            "section_image_alt_text": [[""] * len(s["images"]) for s in secs],
            "section_image_raw_ref_desc": refs,
            "section_image_clean_ref_desc": [list(r) for r in refs],
            "section_image_raw_attr_desc": [[""] * len(s["images"]) for s in secs],
            "section_image_clean_attr_desc": [[""] * len(s["images"]) for s in secs],
            # alt text, attribution and reference description joined with ", ", empty parts left out
            "section_image_captions": [list(r) for r in refs],
            "section_image_width": [[size] * len(s["images"]) for s in secs],
            "section_image_height": [[size] * len(s["images"]) for s in secs],
            "section_image_in_wit": [[1] * len(s["images"]) for s in secs],
            "is_image_caption_sample": [[int(len(c.split()) >= 3) for c in r] for r in refs],
        }


def make_page(index: int, seed: int = 0, image_size: int = 64) -> SamplePage:
    """Generate page number `index` of the sample (independent of how many pages are made).

    Args:
        index (`int`): page position; also fixes its split (`SPLIT_PATTERN`).
        seed (`int`, *optional*, defaults to 0): sample seed.
        image_size (`int`, *optional*, defaults to 64): declared image width and height.

    Returns:
        `SamplePage`
    """
    rng = random.Random((seed << 40) ^ index)  # one stream per page: pages do not depend on num_pages
    name = rng.choice(NAMES)
    kind = rng.choice(KINDS)
    city = rng.choice(CITIES)
    colour = rng.choice(tuple(COLOURS))
    shape = rng.choice(SHAPES)
    towers = rng.choice(tuple(NUMBERS))
    year = rng.choice(YEARS)
    ruler = rng.choice(RULERS)
    product = rng.choice(PRODUCTS)
    fname = f"Sample_{index:06d}_{name}"  # unique per page: the images folder is flat

    b = _PageBuilder(image_size)
    facts: dict[int, SummaryFact] = {}

    def add_sample(title, depth, parent, summary, pool, fact, source, neighbour, images=()):
        """A summarization sample: the summary states `fact`; the rest is 1-2 filler sentences."""
        rest = " ".join(rng.sample(pool, rng.randint(1, 2)))
        index = b.add(title, depth, parent, summary, rest, images=images)
        facts[index] = SummaryFact(fact, source, neighbour)

    desc = [f"{name} is a {kind} near the city of {city}.", rng.choice(LEAD_FILLER)]
    lead_images = []
    if rng.random() < 0.3:
        lead_images.append((f"{fname}_map.png", ("grey", 200), f"A map of {name}."))
    lead = b.add("Introduction", 0, None, desc[0], " ".join(desc[1:]), images=lead_images)
    clean_desc = " ".join(desc)
    raw_desc = "\n".join(desc) if index % 2 else clean_desc  # raw may keep newlines; clean never does

    # Always present, so that every page has at least one sample.
    summary = f"{name} lies close to {city}."
    add_sample("Geography", 1, lead, summary, GEOGRAPHY_FILLER, city, "page_description", clean_desc)

    if rng.random() < 0.8:
        cap = f"The {colour} flag of {name}."
        imgs = [(f"{fname}_flag.png", ("solid", colour), cap)]
        add_sample("Flag", 1, lead, f"The flag of {name} is {colour}.", FLAG_FILLER, colour, "image_caption", cap, imgs)

    if rng.random() < 0.7:
        hist_rest = f"The {kind} was founded in {year}. Its first ruler was {ruler}.\n"
        hist_rest += "\n".join(rng.sample(LIST_ITEMS, 2))
        hist = b.add("History", 1, lead, f"{name} has a long history.", hist_rest, table=True)
        hist_text = b.sections[hist]["text"]
        if rng.random() < 0.85:
            summary = f"{name} was founded in {year}."
            add_sample("Founding", 2, hist, summary, FOUNDING_FILLER, str(year), "parent_section", hist_text)
        if rng.random() < 0.85:
            summary = f"The first ruler of {name} was {ruler}."
            add_sample("Rulers", 2, hist, summary, RULERS_FILLER, ruler, "parent_section", hist_text)

    if rng.random() < 0.6:
        number = NUMBERS[towers]
        cap = f"A drawing of the castle with {number} towers."
        imgs = [(f"{fname}_castle.png", ("towers", towers), cap)]
        if rng.random() < 0.4:  # a second, fact-free image: sections with several images
            imgs.append((f"{fname}_gate.png", ("grey", 150), "The castle gate at dusk."))
        summary = f"The castle of {name} has {number} towers."
        add_sample("Castle", 1, lead, summary, CASTLE_FILLER, number, "image_caption", cap, imgs)

    if rng.random() < 0.6:
        cap = f"The emblem of {name} shows a {shape}."
        imgs = [(f"{fname}_emblem.png", ("shape", shape), cap)]
        summary = f"The emblem of {name} is a {shape}."
        add_sample("Emblem", 1, lead, summary, EMBLEM_FILLER, shape, "image_caption", cap, imgs)

    if rng.random() < 0.6:
        econ_rest = f"The economy of {name} is based on {product}.\n" + "\n".join(rng.sample(ECONOMY_ITEMS, 2))
        econ = b.add("Economy", 1, lead, f"{name} trades with many places.", econ_rest, table=True)
        if rng.random() < 0.85:
            summary = f"The market of {name} sells {product}."
            add_sample("Market", 2, econ, summary, MARKET_FILLER, product, "parent_section", b.sections[econ]["text"])

    if rng.random() < 0.25:  # images only, no text: not a sample
        caps = rng.sample(GALLERY_CAPTIONS, rng.randint(2, 3))
        imgs = [(f"{fname}_gallery{j}.png", ("grey", 120 + 30 * j), c) for j, c in enumerate(caps)]
        b.add("Gallery", 1, lead, images=imgs)

    url = f"https://en.wikipedia.org/wiki/{name}{GENERATED_URL_MARK}{index})"
    row = b.row(SPLIT_PATTERN[index % len(SPLIT_PATTERN)], url, name, raw_desc, clean_desc)
    return SamplePage(row=row, facts=facts, images=b.images)


def is_generated_page(url: str) -> bool:
    """Whether a page URL is one the bundled generators made (`..._(sample_N)`, `..._(controlled_N)`), not a real
    Wikipedia page."""
    return bool(_GENERATED_URL.search(url))


def iter_sample_pages(
    num_pages: int, seed: int = 0, image_size: int = 64, start: int = 0, page_factory: Callable | None = None
) -> Iterator[SamplePage]:
    """Yield pages `start .. start + num_pages - 1` of the sample (`page_factory`, defaults to `make_page`)."""
    page_factory = page_factory or make_page
    for index in range(start, start + num_pages):
        yield page_factory(index, seed, image_size)


def generate_sample(
    output_dir: PathLike,
    num_pages: int = 200,
    seed: int = 0,
    image_size: int = 64,
    with_images: bool = True,
    num_shards: int = 1,
    page_factory: Callable | None = None,
) -> dict[str, Any]:
    """Write the synthetic sample: a gzip TFRecord of WikiWeb2M pages and their PNG images.

    Args:
        output_dir (`str` or `os.PathLike`): created if needed.
        num_pages (`int`, *optional*, defaults to 200): pages to generate.
        seed (`int`, *optional*, defaults to 0): same seed, same bytes.
        image_size (`int`, *optional*, defaults to 64): image side in pixels.
        with_images (`bool`, *optional*, defaults to `True`): also write `images/<file name>` (the
            last path component of each `section_image_url`); turn off for fast, text-only
            benchmarks (the records are the same either way).
        num_shards (`int`, *optional*, defaults to 1): 1 writes `OUTPUT_FILE`; more writes
            `wikiweb2m-sample.tfrecord.gz-0000k-of-0000n` (like the official train files), pages
            dealt out in contiguous blocks so that file order is page order.
        page_factory (`Callable`, *optional*): `(index, seed, image_size) -> SamplePage`; defaults to
            `make_page`. Other generators (e.g. `processing.data.controlled_data`) reuse the writer with it.

    Returns:
        `dict`: `files` (TFRecord paths), `image_dir` (or `None`), `pages`, `sections`,
        `summarization_samples`, `images` (image occurrences), `pages_per_second`.
    """
    if num_pages < 0 or num_shards < 1:
        raise ValueError(f"need num_pages >= 0 and num_shards >= 1, got {num_pages} and {num_shards}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_dir = out / IMAGE_DIR
    if with_images:
        image_dir.mkdir(exist_ok=True)
    rendered: dict[tuple, bytes] = {}  # few distinct drawings: render each once
    counts = {"pages": 0, "sections": 0, "summarization_samples": 0, "images": 0}

    def records(start: int, stop: int) -> Iterator[bytes]:
        for page in iter_sample_pages(stop - start, seed, image_size, start=start, page_factory=page_factory):
            row = page.row
            counts["pages"] += 1
            counts["sections"] += len(row["section_title"])
            counts["summarization_samples"] += sum(row["is_section_summarization_sample"])
            counts["images"] += len(page.images)
            if with_images:
                for file_name, spec in page.images.items():
                    if spec not in rendered:
                        rendered[spec] = render_image(spec, image_size)
                    (image_dir / file_name).write_bytes(rendered[spec])
            yield serialize_page(row)

    start_time = time.perf_counter()
    files = []
    bounds = [num_pages * k // num_shards for k in range(num_shards + 1)]
    for k in range(num_shards):
        name = OUTPUT_FILE if num_shards == 1 else f"{OUTPUT_FILE}-{k:05d}-of-{num_shards:05d}"
        write_tfrecord(out / name, records(bounds[k], bounds[k + 1]), gzip=True)
        files.append(str(out / name))
    elapsed = time.perf_counter() - start_time
    return {
        "files": files,
        "image_dir": str(image_dir) if with_images else None,
        **counts,
        "pages_per_second": counts["pages"] / elapsed if elapsed > 0 else float("inf"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m processing.data.sample_data OUTPUT_DIR [--num_pages N] [--seed S] [--no_images]`."""
    from .cli import add_debug_argument

    parser = argparse.ArgumentParser(
        prog="python -m processing.data.sample_data",
        description="Write a synthetic WikiWeb2M sample whose summaries depend on neighbours.",
    )
    parser.add_argument("output_dir", help="folder for the TFRecord file(s) and the images (created if missing)")
    parser.add_argument("--num_pages", type=int, default=200, help="pages to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes")
    parser.add_argument("--image_size", type=int, default=64, help="width and height of each image in pixels "
                                                                  "(default: %(default)s)")
    parser.add_argument("--num_shards", type=int, default=1, help="TFRecord files to spread the pages over "
                                                                 "(default: %(default)s)")
    parser.add_argument("--no_images", action="store_true", help="write the TFRecord only")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    info = generate_sample(args.output_dir, args.num_pages, args.seed, args.image_size,
                           with_images=not args.no_images, num_shards=args.num_shards)
    print(f"wrote {info['pages']} pages, {info['sections']} sections, {info['summarization_samples']} "
          f"summarization samples, {info['images']} images ({info['pages_per_second']:.0f} pages/s)")
    for f in info["files"]:
        print(f"  {f}")
    if info["image_dir"]:
        print(f"  {info['image_dir']}/")
    return 0


__all__ = [
    "COLOURS",
    "GENERATED_URL_MARK",
    "OUTPUT_FILE",
    "SPLIT_PATTERN",
    "SamplePage",
    "SummaryFact",
    "generate_sample",
    "image_url",
    "is_generated_page",
    "iter_sample_pages",
    "main",
    "make_page",
    "render_image",
]

if __name__ == "__main__":
    # The imported module's `main`, so errors are the classes `processing.data.cli` knows.
    from processing.data.cli import run_command
    from processing.data.sample_data import main as _main

    sys.exit(run_command(_main))
