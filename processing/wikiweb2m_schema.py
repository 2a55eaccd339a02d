"""The WikiWeb2M schema: the features of a page record and the columns of a page row, in one place (standard
library only, so that a Hub folder ships it beside the page graph).

WikiWeb2M (google-research-datasets/wit, `wikiweb2m.md`) stores one Wikipedia page per record as a
`tf.train.SequenceExample`: page-level *context* features and per-section *feature lists* (one step per section, in
page order). The reader (`processing.data.wikiweb2m`) turns a record into one page row, a plain `dict` keyed by the
feature names:

| feature | row value | if the feature is missing |
|---|---|---|
| `split`, `page_url`, `page_title` | `str` | required (error) |
| `raw_page_description`, `clean_page_description` | `str` | `""` |
| `page_contains_images`, `page_content_sections_without_table_list`, `is_page_description_sample` | `int` | `0` |
| `section_title`, `section_text`, `section_clean_1st_sentence`, `section_rest_sentence` | `list[str]`, one per section | required (error) |
| `section_raw_1st_sentence` | `list[str]` | `""` per section |
| `section_parent_index`, `is_section_summarization_sample` | `list[int]` | required (error) |
| `section_index` | `list[int]` | the section's position |
| `section_depth`, `section_heading_level` | `list[int]` | `-1` (unknown) per section |
| `section_contains_table_or_list`, `section_contains_images` | `list[int]` | `0` per section |
| `section_subsection_index` | `list[list[int]]` | `[]` per section |
| `section_image_url` and the other `section_image_*` text features | `list[list[str]]` | `""` per image of the section (`[]` without images) |
| `section_image_width`, `_height`, `_in_wit`, `is_image_caption_sample` | `list[list[int]]` | `0` per image (likewise) |

All image lists of a section are aligned (the j-th caption belongs to the j-th URL), so a missing
image feature is filled with one empty value per image rather than an empty list, and a present one
whose length differs from the others is an error. Text is decoded as UTF-8.

"""
from __future__ import annotations

#: Page-level features holding one UTF-8 string.
CONTEXT_BYTES_FEATURES = (
    "split",
    "page_url",
    "page_title",
    "raw_page_description",
    "clean_page_description",
)
#: Page-level features holding one int64.
CONTEXT_INT_FEATURES = (
    "page_contains_images",
    "page_content_sections_without_table_list",
    "is_page_description_sample",
)
#: Per-section features holding one string per section.
SECTION_BYTES_FEATURES = (
    "section_title",
    "section_text",
    "section_raw_1st_sentence",
    "section_clean_1st_sentence",
    "section_rest_sentence",
)
#: Per-section features holding one int64 per section.
SECTION_INT_FEATURES = (
    "section_index",
    "section_depth",
    "section_heading_level",
    "section_parent_index",
    "section_contains_table_or_list",
    "section_contains_images",
    "is_section_summarization_sample",
)
#: Per-section features holding a list of int64 per section (not aligned with the images).
SECTION_LIST_INT_FEATURES = ("section_subsection_index",)
#: Per-image string features: one list per section, one value per image of that section.
IMAGE_BYTES_FEATURES = (
    "section_image_url",
    "section_image_mime_type",
    "section_image_alt_text",
    "section_image_raw_ref_desc",
    "section_image_clean_ref_desc",
    "section_image_raw_attr_desc",
    "section_image_clean_attr_desc",
    "section_image_captions",
)
#: Per-image int64 features, aligned with `IMAGE_BYTES_FEATURES`.
IMAGE_INT_FEATURES = (
    "section_image_width",
    "section_image_height",
    "section_image_in_wit",
    "is_image_caption_sample",
)
CONTEXT_FEATURES = CONTEXT_BYTES_FEATURES + CONTEXT_INT_FEATURES
SEQUENCE_FEATURES = (
    SECTION_BYTES_FEATURES
    + SECTION_INT_FEATURES
    + SECTION_LIST_INT_FEATURES
    + IMAGE_BYTES_FEATURES
    + IMAGE_INT_FEATURES
)
#: Every column of a page row, in order.
PAGE_COLUMNS = CONTEXT_FEATURES + SEQUENCE_FEATURES
#: Per-section features a page graph is built from (`processing.page_graph.PageGraph.from_wikiweb2m`).
PAGE_GRAPH_FEATURES = (
    "section_title",
    "section_text",
    "section_clean_1st_sentence",
    "section_rest_sentence",
    "section_parent_index",
)
#: Features without which a page (with at least one section) cannot be used for summarization: the page's identity
#: and split, what the graph is built from, and the summarization-sample flag.
REQUIRED_FEATURES = ("page_title", "page_url", "split", *PAGE_GRAPH_FEATURES, "is_section_summarization_sample")

#: Values of the page-level features that may be missing (`CONTEXT_FEATURES` not in `REQUIRED_FEATURES`).
CONTEXT_DEFAULTS = {"raw_page_description": "", "clean_page_description": "", **dict.fromkeys(CONTEXT_INT_FEATURES, 0)}
#: Per-section values of the optional scalar section features; `None` means "the section's position".
SECTION_DEFAULTS = {
    "section_raw_1st_sentence": "",
    "section_index": None,
    "section_depth": -1,
    "section_heading_level": -1,
    "section_contains_table_or_list": 0,
    "section_contains_images": 0,
}


__all__ = [
    "CONTEXT_BYTES_FEATURES",
    "CONTEXT_DEFAULTS",
    "CONTEXT_FEATURES",
    "CONTEXT_INT_FEATURES",
    "IMAGE_BYTES_FEATURES",
    "IMAGE_INT_FEATURES",
    "PAGE_COLUMNS",
    "PAGE_GRAPH_FEATURES",
    "REQUIRED_FEATURES",
    "SECTION_BYTES_FEATURES",
    "SECTION_DEFAULTS",
    "SECTION_INT_FEATURES",
    "SECTION_LIST_INT_FEATURES",
    "SEQUENCE_FEATURES",
]
