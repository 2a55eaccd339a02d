"""Summarize one held-out page section through pipeline("mmgl-summarization"), offline, from the exported folder."""

import sys

from transformers import pipeline

from processing.data.wikiweb2m import iter_pages, summarization_samples

model_dir, records, image_dir = sys.argv[1:4]
pages = list(iter_pages(records))
page_idx, section = summarization_samples(pages, split="test")[0]
summarize = pipeline("mmgl-summarization", model=model_dir, trust_remote_code=True)
result = summarize({"page": pages[page_idx], "section": section}, image_dir=image_dir, max_new_tokens=24)
print(f"page: {pages[page_idx]['page_title']} / section: {pages[page_idx]['section_title'][section]}")
print(f"reference: {pages[page_idx]['section_clean_1st_sentence'][section]}")
print(f"pipeline : {result['summary_text'] if isinstance(result, dict) else result[0]['summary_text']}")
