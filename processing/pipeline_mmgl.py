"""`mmgl-summarization`: a transformers pipeline that writes the summary (first sentence) of a section.

Usage, from a folder written by `processing.training.export.save_for_hub` (works offline, in a process that cannot import this
package)::

    from transformers import pipeline

    pipe = pipeline("mmgl-summarization", model="path/or/hub-id", trust_remote_code=True)
    pipe({"page": page, "section": 2})                    # -> {"summary_text": "..."}
    pipe(page, section=2, max_new_tokens=32, num_beams=4)
    pipe([{"page": p, "section": s} for p, s in todo], batch_size=8)   # -> a list of dicts

A page is what `PageGraph.coerce` accepts: a WikiWeb2M page row (feature names verbatim), a
`PageGraph`, or a plain dict `{"title", "description", "sections": [{"title", "text", "images":
[{"path" | "url" | "image", "caption"}]}]}`. In a plain dict an image may also be a `PIL.Image.Image`
(or the file's bytes) under `"image"`: the processor preprocesses it like a file (an embedding cache
finds it by its bytes, a PIL image by its PNG encoding). For a plain dict the summary of the target
section is unknown: unless that section gives `"summary"` or `"rest"` itself, its input text is its
FULL text (`PageGraph.from_dict` would otherwise split a first sentence off and drop it from the
input). For a WikiWeb2M row the input is `section_rest_sentence`, as in training. A `PageGraph` may
come from any copy of page_graph.py (the installed package's or a Hub folder's).

Neighbours: with `embedding_cache` (a path or an `EmbeddingCache`, or any object with
`get_text` / `get_image` / `embed_dim`) they are passed as precomputed embeddings; without it
as raw open_clip ids and pixels, which the model encodes with its frozen `neighbor_encoder` (a
model without one needs a cache: a clear error says so). Missing images (no file, no `image_dir`)
are masked, never replaced by blank pixels, with a warning counting them; an `image_dir` that is not a
folder is an error.

Batching uses the processor's own collator (left padding), so `batch_size=B` gives exactly
`model.generate(**processor(pages, sections, for_generation=True))`. Generation parameters
(`max_new_tokens`, `num_beams`, `do_sample`, ... or `generate_kwargs={...}`) go to
`generate`; `max_new_tokens` defaults to the processor's `max_target_length`.

`processing.training.export.save_for_hub` writes a flat, self-contained Hub folder: weights, tokenizer, processor
config, `custom_pipelines` in config.json, and the code: the files the entry points (the modeling files, the
processor and this file) import, following their relative imports; nothing else. This file imports installed packages and same-folder files only (`page_graph.py`, and
`embedding_cache.py` when a cache is given by path), never modeling code. Encoders of a cache that is not the
model's are refused (`EmbeddingCache.check_encoder`), as is a processor that disagrees with the model.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sized
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .page_graph import PageGraph, is_page_graph

logger = logging.getLogger(__name__)

TASK = "mmgl-summarization"
_GENERATION_KEYS = frozenset(k for k in vars(GenerationConfig()) if not k.startswith("_"))


class MMGLSummarizationPipeline(Pipeline):
    r"""Section summarization with an MMGL model (`MMGLForConditionalGeneration`) and its `MMGLProcessor`.

    Inputs (`__call__`): one input or a list of them, each `{"page": page, "section": int}`, or a bare
    page with `section=` given as a call parameter (see the module docstring for the page formats).

    Parameters (at construction or per call):
        section (`int`, *optional*): target section for inputs that are bare pages.
        max_new_tokens (`int`, *optional*): summary tokens to generate; defaults to the processor's
            `max_target_length` unless the model's generation config sets a length.
        num_beams (`int`, *optional*): beam search width (any other `generate` parameter is accepted
            too, by name or in `generate_kwargs`).
        image_dir (`str`, *optional*): folder of the image files that image URLs / relative paths refer to.
        embedding_cache (`str` or `EmbeddingCache`, *optional*): precomputed neighbour embeddings; without
            one, neighbours are encoded by the model's `neighbor_encoder`.

    Returns:
        `dict` `{"summary_text": str}` per input (a list of them for `num_return_sequences > 1`), or a
        list of those for a list of inputs.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    _pipeline_calls_generate = True

    def __init__(self, model, processor=None, **kwargs):
        if processor is None:
            # Built by hand rather than by `pipeline(...)`: the processor sits next to the weights.
            source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
            if not source:
                raise ValueError(
                    "MMGLSummarizationPipeline needs its MMGLProcessor: pass processor=..., or load the model from a "
                    "folder written by save_for_hub so that the processor can be loaded from it"
                )
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
        self._embedding_caches: dict[str, Any] = {}
        super().__init__(model=model, processor=processor, **kwargs)
        if self.tokenizer is None:
            self.tokenizer = getattr(self.processor, "tokenizer", None)
        self.processor.check_model_config(self.model.config)  # a mismatched pair would scatter garbage

    # ------------------------------------------------------------------ parameters

    def _sanitize_parameters(
        self,
        section: int | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        image_dir: str | os.PathLike | None = None,
        embedding_cache: Any = None,
        generate_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ):
        unknown = sorted(set(kwargs) - _GENERATION_KEYS - {"generation_config"})
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected parameter(s) {unknown}; it takes section, image_dir, "
                "embedding_cache, max_new_tokens, num_beams, generate_kwargs and generate() parameters"
            )
        preprocess_params: dict[str, Any] = {}
        if section is not None:
            preprocess_params["section"] = section
        if image_dir is not None:
            self.processor.image_folder(image_dir)  # a missing folder or a file: an error now, whatever the page
            preprocess_params["image_dir"] = image_dir
        if embedding_cache is not None:
            preprocess_params["embedding_cache"] = self._open_embedding_cache(embedding_cache)
        generation = dict(generate_kwargs or {})
        generation.update(kwargs)
        if max_new_tokens is not None:
            generation["max_new_tokens"] = max_new_tokens
        if num_beams is not None:
            generation["num_beams"] = num_beams
        forward_params = {"generate_kwargs": generation} if generation else {}
        return preprocess_params, forward_params, {}

    def _open_embedding_cache(self, cache: Any) -> Any:
        if not isinstance(cache, (str, os.PathLike)):
            missing = [name for name in ("get_text", "get_image", "embed_dim") if not hasattr(cache, name)]
            if missing:
                raise TypeError(
                    f"embedding_cache must be a cache folder or an EmbeddingCache-like object; "
                    f"{type(cache).__name__} lacks {missing}"
                )
            return cache
        key = os.path.abspath(os.fspath(cache))
        if key not in self._embedding_caches:
            from .embedding_cache import EmbeddingCache

            opened = EmbeddingCache(key)
            # Embeddings of another encoder of the same width would be read silently (cosine ~0 to the model's
            # own): refuse a cache whose encoder is not the model's, naming both.
            self.processor.check_model_config(self.model.config, embed_dim=opened.embed_dim,
                                              text_embed_dim=opened.text_embed_dim)
            encoder = self._neighbor_encoder()
            if encoder is not None:
                opened.check_encoder(encoder.identity(), owner="the model's neighbor_encoder",
                                     texts=self.processor.has_text_slots)
            self._embedding_caches[key] = opened
        return self._embedding_caches[key]

    def _neighbor_encoder(self):
        model = self.model
        if hasattr(model, "get_base_model"):  # a peft model
            model = model.get_base_model()
        return getattr(model, "neighbor_encoder", None)

    def _has_neighbor_encoder(self) -> bool:
        return self._neighbor_encoder() is not None

    # ------------------------------------------------------------------ the four stages

    def preprocess(
        self,
        inputs: Any,
        section: int | None = None,
        image_dir: str | os.PathLike | None = None,
        embedding_cache: Any = None,
    ) -> dict[str, torch.Tensor]:
        page, section = self._split_input(inputs, section)
        needs_slots = self.processor.has_text_slots or self.processor.has_image_slots
        if embedding_cache is None and needs_slots and not self._has_neighbor_encoder():
            raise ValueError(
                "this model has no neighbor_encoder (MMGLConfig.neighbor_encoder_name / neighbor_encoder_config), so "
                "it cannot encode raw neighbour texts and images: pass embedding_cache=<cache folder or "
                "EmbeddingCache> with the neighbours' precomputed embeddings"
            )
        graph = PageGraph.coerce(_full_text_target(page, section))
        graph.check_section(section)  # IndexError naming the page and its number of sections
        batch = self.processor(
            graph, section, embedding_cache=embedding_cache, image_dir=image_dir, for_generation=True
        )
        mask = batch.get("image_neighbor_mask")
        if mask is not None and not bool(mask.all()):
            masked, total = int((mask == 0).sum()), int(mask.numel())
            where = f"image_dir {os.fspath(image_dir)}" if image_dir is not None else "no image_dir given"
            logger.warning(f"page {graph.page_id!r}, section {section}: {masked} of {total} image neighbour(s) masked: "
                           f"no file ({where}), undecodable, or not in the embedding cache")
        return dict(batch)

    def _forward(self, model_inputs: dict[str, torch.Tensor], generate_kwargs: dict[str, Any] | None = None):
        generate_kwargs = self._prepare_generate_kwargs(dict(generate_kwargs or {}))
        already_set = self._get_set_generation_params(generate_kwargs)
        if "max_new_tokens" not in already_set and "max_length" not in already_set:
            generate_kwargs["max_new_tokens"] = self.processor.max_target_length
        if already_set.get("pad_token_id") is None:
            generate_kwargs["pad_token_id"] = self.processor.pad_token_id
        generate_kwargs["return_dict_in_generate"] = False  # the token ids, whatever the generation config says
        input_ids = model_inputs["input_ids"]
        output = self.model.generate(**model_inputs, **generate_kwargs)
        # generate(input_ids=...) returns prompt + new tokens (all rows share the left-padded prompt width).
        new_tokens = output[:, input_ids.shape[1] :]
        batch_size = input_ids.shape[0]
        return {"generated_ids": new_tokens.reshape(batch_size, -1, new_tokens.shape[-1])}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]):
        sequences = model_outputs["generated_ids"][0]  # (num_return_sequences, T)
        texts = [
            {"summary_text": self.tokenizer.decode(ids, skip_special_tokens=True).strip()} for ids in sequences
        ]
        return texts[0] if len(texts) == 1 else texts

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # The default collate only pads token keys; neighbour slots and graphs need the processor's collator.
        from torch.utils.data import DataLoader

        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:  # a generator: one worker keeps the order
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)
        collator = self.processor.data_collator(for_generation=True)

        def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            # Each item is a batch of one (no padding at all): unbatch, then pad the real batch.
            return collator([{key: value[0] for key, value in item.items()} for item in items])

        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def _split_input(inputs: Any, section: int | None):
        if isinstance(inputs, Mapping) and "page" in inputs:
            page = inputs["page"]
            section = inputs.get("section", section)
        elif is_page_graph(inputs) or (
            isinstance(inputs, Mapping) and ("sections" in inputs or "section_title" in inputs)
        ):
            page = inputs
        else:
            raise TypeError(
                "expected {'page': <page>, 'section': <int>} or a page (WikiWeb2M row, page dict or PageGraph) with "
                f"section=..., got {type(inputs).__name__}"
                + (f" with keys {sorted(inputs)}" if isinstance(inputs, Mapping) else "")
            )
        if section is None:
            raise ValueError(
                "no target section: pass {'page': page, 'section': i} or pipe(page, section=i)"
            )
        if isinstance(section, bool) or not isinstance(section, int):
            if isinstance(section, torch.Tensor) and section.numel() == 1 and not section.is_floating_point():
                section = int(section)
            else:
                raise TypeError(f"section must be an int (a section index), got {section!r}")
        return page, section


def _full_text_target(page: Any, section: int) -> Any:
    """A plain dict whose target section gives neither `summary` nor `rest` gets `summary=""`: its
    summary is unknown, so its whole text is the input (`PageGraph.from_dict` would split a first sentence
    off and drop it). Other pages are returned as they are."""
    if not (isinstance(page, Mapping) and "sections" in page and "section_title" not in page):
        return page
    sections = page["sections"]
    if not isinstance(sections, (list, tuple)):
        raise TypeError(f"page['sections'] must be a list of section dicts, got {type(sections).__name__}")
    target = sections[section] if 0 <= section < len(sections) else None  # out of range: check_section says so
    if not isinstance(target, Mapping) or target.get("summary") is not None or target.get("rest") is not None:
        return page
    sections = list(sections)
    sections[section] = {**target, "summary": ""}
    return {**page, "sections": sections}


# ---------------------------------------------------------------------------------------------------
# Registration and a self-contained Hub folder
# ---------------------------------------------------------------------------------------------------


def register_pipeline() -> None:
    """Register `"mmgl-summarization"` in this process, so that `pipeline("mmgl-summarization", model=<MMGL
    model object>, processor=...)` works and `save_for_hub` can record the pipeline in config.json."""
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=MMGLSummarizationPipeline, pt_model=AutoModelForCausalLM)


__all__ = ["TASK", "MMGLSummarizationPipeline", "register_pipeline"]
