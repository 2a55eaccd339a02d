"""Processor for Multimodal Graph Learning (MMGL) section summarization.

`MMGLProcessor` turns (page, target section) into the model inputs of docs/INTERFACE.md: an OPT prompt with
`<neighbor>` placeholders and labels on the summary only, the neighbours (raw or as cached embeddings) with masks,
and the graph between the neighbours. It holds the options and the tokenizers, tokenises one example's texts and
saves / loads itself; the rules it applies live in their own files:

* which neighbours: `neighbor_selection` (ranking, budgets, leakage);
* which slots and which model mode an (encoding, context) pair has: `design_space`;
* where each piece goes in the sequence, truncation, and SA-TE's groups: `token_layout` (from ids);
* the neighbour tensors (cached embeddings or pixels) and their masks: `neighbor_payload`;
* which image file and which pixels: `image_source` (the one resolver and the one preprocessing);
* the graph over the slots: `graph_projection`;
* token ids of every text, on disk: `token_cache` (read here; built by `processing/data/token_store.py` through
  `encode_texts`).

Every text segment is tokenised on its own as `" " + text` (no special tokens, special-token strings inside text
are split as plain text), so an example is a concatenation of per-text id arrays: a token store holds each unique
text's ids once and building an example is slicing and concatenating.

Images: an image whose file is not in the image folder (or, with an embedding cache, not in it), or cannot be
decoded, keeps its slot with mask 0 and gets no placeholders. Page dicts may hold the image itself (a PIL image or
the file's bytes): it is preprocessed like a file, and an embedding cache is asked for its bytes (a PIL image's
PNG). An embedding cache is asked for exactly these keys: each text neighbour's text (as in
`NeighborSelection.texts`, see `processing.data.neighbor_inputs`) and each image's resolved file path (or, for an
in-memory image, its bytes).

Options are plain attributes saved in `processor_config.json`; prompt ids are tokenised at first use, so build a
new processor (or `from_pretrained`) rather than editing the prompts afterwards.

With a bridge (`neighbor_bridge` `"perceiver"` / `"qformer"`) an SA-E or SA-TE example with any real bridged
neighbour holds `bridge_num_latents` placeholders in all, whatever its neighbour count (placed by `token_layout`).

This file is Hub-loadable: it imports installed packages and same-folder files only, and never modeling code.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import AddedToken, BatchFeature
from transformers.processing_utils import ProcessorMixin

from .collator import (
    ADJACENCY_KEY,
    EIGENVECTORS_KEY,
    IMAGE_SLOT_KEYS,
    TARGET_DISTANCES_KEY,
    TEXT_SLOT_KEYS,
    MMGLDataCollator,
)
from .design_space import (
    DESIGN_DEFAULTS,
    GRAPH_TARGET_FEATURES,
    check_design,
    check_neighbor_bridge,
    check_text_neighbor_encoder,
    has_image_slots,
    has_text_slots,
    neighbor_mode,
)
from .graph_projection import neighbor_adjacency, target_distances
from .laplacian_encoding import slot_laplacian_eigenvectors
from .image_source import ImageFolder, clip_image_processor
from .neighbor_payload import image_embeddings, image_pixels, image_sources, pixel_size, text_embeddings
from .neighbor_selection import NeighborSelection, select_neighbors, target_input
from .page_graph import PageGraph, is_page_graph
from .token_layout import layout_ids, sa_te_groups
from .text_neighbor_tokens import (
    TEXT_NEIGHBOR_TOKENIZER_DIR,
    clip_text_ids,
    load_text_neighbor_tokenizer,
    text_neighbor_ids,
)
from .token_cache import MMGLTokenCache, tokenizer_fingerprint

NEIGHBOR_TOKEN = "<neighbor>"
class _RuntimeState:
    """Caches that must not be serialised nor deep-copied with the processor config (`to_dict`)."""

    def __init__(self):
        self.token_cache: MMGLTokenCache | None = None
        self.clip_tokenizer = None
        self.text_neighbor_tokenizer = None
        self.prompt_ids: dict[str, np.ndarray] | None = None
        self.identity: dict[str, str] | None = None
        self.pixel_size = None
        self.placeholders: dict[int, np.ndarray] = {}
        self.zero_pixels: dict[tuple[int, int, int], torch.Tensor] = {}
        self.image_folders: dict[str | None, ImageFolder] = {}

    def __deepcopy__(self, memo):
        return self


class MMGLProcessor(ProcessorMixin):
    r"""Builds MMGL model inputs from a page graph and a target section.

    Args:
        image_processor (`CLIPImageProcessor`, *optional*): preprocessing of raw neighbour images, as
            the CLIP image encoder's; defaults to `clip_image_processor(neighbor_encoder_name)`.
        tokenizer (`PreTrainedTokenizerBase`): the OPT tokenizer. `<neighbor>` is added to it as a
            special token when missing; its id is the model's `neighbor_token_id`.
        context (`str`, *optional*, defaults to `"all"`): `section_only` (target section text),
            `section_all` (+ its images and captions), `text_only` (all text of the page) or
            `all` (all text and images of the page).
        neighbor_encoding (`str`, *optional*, defaults to `"sa_e"`): `sa_te` (neighbour texts as raw
            tokens, images as embeddings: the target text, then each section's texts, each followed by the
            placeholders of that section's images; see the module docstring), `sa_e` (every neighbour as
            embeddings in the sequence, after the target text) or `ca_e` (neighbours through
            cross-attention; no placeholders).
        text_neighbor_num_tokens (`int`, *optional*, defaults to 4): placeholders per text neighbour.
        image_neighbor_num_tokens (`int`, *optional*, defaults to 4): placeholders per image neighbour.
        max_text_neighbors (`int`, *optional*, defaults to 11): text neighbour budget.
        max_image_neighbors (`int`, *optional*, defaults to 5): image neighbour budget.
        max_source_length (`int`, *optional*, defaults to 512): tokens before the summary (prompt,
            texts and placeholders); only texts are truncated (see the module docstring).
        max_target_length (`int`, *optional*, defaults to 128): summary tokens including eos.
        neighbor_encoder_name (`str`, *optional*, defaults to `"ViT-B-32"`): open_clip model name whose
            tokenizer makes `text_neighbor_input_ids` (works offline).
        neighbor_context_length (`int`, *optional*): open_clip context length `Lc`; defaults to the
            model's (77 for CLIP).
        text_neighbor_encoder (`str`, *optional*): a Hugging Face text model (hub id or folder) whose tokenizer
            makes `text_neighbor_input_ids` instead of open_clip's (`MMGLConfig.text_neighbor_encoder`); saved
            with the processor in `text_neighbor_tokenizer/`. Refused for designs without text slots (SA-TE,
            `section_only`).
        text_neighbor_max_length (`int`, *optional*, defaults to 512): ids per text neighbour with
            `text_neighbor_encoder` (`Lc`): special tokens added, truncated and padded to this length.
        include_section_title (`bool`, *optional*, defaults to `True`): prefix the target text with
            its section title.
        lpe_k (`int`, *optional*): for a model with `position_encoding="laplacian"`: each example then holds
            `neighbor_laplacian_eigenvectors` `(Nt + Ni, lpe_k)`, the slot graph's eigenvectors, computed once
            here (`laplacian_encoding`) rather than in every forward pass.
        graph_target_feature (`str`, *optional*, defaults to `"none"`): for a model with the same
            `MMGLConfig.graph_target_feature`: `"distance"` adds `neighbor_target_distances` `(Nt + Ni,)`, the
            hops from the target to each slot's node in the page's tree (`graph_projection.target_distances`),
            so LPE and GNN can tell which node is the target's child; `"none"` adds nothing.
        context_prompt / section_prompt / summary_prompt (`str`, *optional*): the fixed prompt words,
            `"Context:"`, `"Section:"` and `"Summary:"`.
        neighbor_bridge (`str`, *optional*, defaults to `"linear"`): the model's `neighbor_bridge`. `"linear"`:
            placeholders per neighbour as above. `"perceiver"` / `"qformer"`: the model compresses an example's
            neighbour embeddings into `bridge_num_latents` tokens, so SA-E and SA-TE write that many placeholders
            (SA-E after the target text; SA-TE after the last section group, since the latents mix every image), and
            none for an example without any real bridged neighbour.
        bridge_num_latents (`int`, *optional*, defaults to 32): placeholders of a bridged example.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        context: str = DESIGN_DEFAULTS["context"],
        neighbor_encoding: str = DESIGN_DEFAULTS["neighbor_encoding"],
        text_neighbor_num_tokens: int = DESIGN_DEFAULTS["text_neighbor_num_tokens"],
        image_neighbor_num_tokens: int = DESIGN_DEFAULTS["image_neighbor_num_tokens"],
        max_text_neighbors: int = DESIGN_DEFAULTS["max_text_neighbors"],
        max_image_neighbors: int = DESIGN_DEFAULTS["max_image_neighbors"],
        max_source_length: int = 512,
        max_target_length: int = 128,
        neighbor_encoder_name: str = "ViT-B-32",
        neighbor_context_length: int | None = None,
        text_neighbor_encoder: str | None = None,
        text_neighbor_max_length: int = 512,
        include_section_title: bool = True,
        lpe_k: int | None = None,
        graph_target_feature: str = DESIGN_DEFAULTS["graph_target_feature"],
        context_prompt: str = "Context:",
        section_prompt: str = "Section:",
        summary_prompt: str = "Summary:",
        neighbor_bridge: str = DESIGN_DEFAULTS["neighbor_bridge"],
        bridge_num_latents: int = DESIGN_DEFAULTS["bridge_num_latents"],
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("MMGLProcessor needs a tokenizer (the OPT tokenizer of the model)")
        check_design(context, neighbor_encoding)
        check_text_neighbor_encoder(neighbor_encoding, context, text_neighbor_encoder)
        check_neighbor_bridge(neighbor_bridge, neighbor_encoding, context)
        for name, value, low in (
            ("bridge_num_latents", bridge_num_latents, 1),
            ("text_neighbor_num_tokens", text_neighbor_num_tokens, 1),
            ("image_neighbor_num_tokens", image_neighbor_num_tokens, 1),
            ("max_text_neighbors", max_text_neighbors, 0),
            ("max_image_neighbors", max_image_neighbors, 0),
            ("max_source_length", max_source_length, 1),
            ("max_target_length", max_target_length, 2),
            *((("lpe_k", lpe_k, 1),) if lpe_k is not None else ()),
            ("text_neighbor_max_length", text_neighbor_max_length, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if graph_target_feature not in GRAPH_TARGET_FEATURES:
            raise ValueError(f"graph_target_feature must be one of {GRAPH_TARGET_FEATURES}, got {graph_target_feature!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; the summary must end with one")
        if image_processor is None:
            image_processor = clip_image_processor(neighbor_encoder_name)
        if NEIGHBOR_TOKEN not in tokenizer.get_vocab():
            # Added as a special token so it is never split nor produced from ordinary text.
            tokenizer.add_tokens([AddedToken(NEIGHBOR_TOKEN, special=True, normalized=False)], special_tokens=True)

        self.context = context
        self.neighbor_encoding = neighbor_encoding
        self.text_neighbor_num_tokens = text_neighbor_num_tokens
        self.image_neighbor_num_tokens = image_neighbor_num_tokens
        self.max_text_neighbors = max_text_neighbors
        self.max_image_neighbors = max_image_neighbors
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.neighbor_encoder_name = neighbor_encoder_name
        self.neighbor_context_length = neighbor_context_length
        self.text_neighbor_encoder = text_neighbor_encoder
        self.text_neighbor_max_length = text_neighbor_max_length
        self.include_section_title = include_section_title
        self.lpe_k = lpe_k
        self.graph_target_feature = graph_target_feature
        self.context_prompt = context_prompt
        self.section_prompt = section_prompt
        self.summary_prompt = summary_prompt
        self.neighbor_bridge = neighbor_bridge
        self.bridge_num_latents = bridge_num_latents
        self._state = _RuntimeState()
        super().__init__(image_processor, tokenizer, **kwargs)
        self.neighbor_token_id = int(tokenizer.convert_tokens_to_ids(NEIGHBOR_TOKEN))

    # ------------------------------------------------------------------ configuration queries

    @property
    def has_text_slots(self) -> bool:
        """Text neighbours are passed as slots (embeddings / CLIP ids), not raw tokens (`design_space`)."""
        return has_text_slots(self.neighbor_encoding, self.context)

    @property
    def has_image_slots(self) -> bool:
        return has_image_slots(self.context)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def model_input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask", "labels"]
        # The collator's key names: one spelling (tests/test_neighbor_keys.py checks the model's forward agrees).
        if self.has_text_slots:
            names += TEXT_SLOT_KEYS
        if self.has_image_slots:
            names += IMAGE_SLOT_KEYS
        if self.has_text_slots or self.has_image_slots:
            names.append(ADJACENCY_KEY)
            if self.lpe_k:
                names.append(EIGENVECTORS_KEY)
            if self.graph_target_feature == "distance":
                names.append(TARGET_DISTANCES_KEY)
        return names

    @property
    def clip_tokenizer(self):
        """The open_clip tokenizer of `neighbor_encoder_name` (imported lazily: it is heavy)."""
        if self._state.clip_tokenizer is None:
            import open_clip

            kwargs = {"context_length": self.neighbor_context_length} if self.neighbor_context_length else {}
            self._state.clip_tokenizer = open_clip.get_tokenizer(self.neighbor_encoder_name, **kwargs)
        return self._state.clip_tokenizer

    @property
    def text_neighbor_tokenizer(self):
        """The tokenizer of `text_neighbor_encoder` (loaded at first use, or the one saved with the processor),
        `None` when open_clip encodes the text neighbours."""
        if self.text_neighbor_encoder is None:
            return None
        if self._state.text_neighbor_tokenizer is None:
            self._state.text_neighbor_tokenizer = load_text_neighbor_tokenizer(self.text_neighbor_encoder)
        return self._state.text_neighbor_tokenizer

    @property
    def neighbor_context_size(self) -> int:
        if self.text_neighbor_encoder is not None:
            return self.text_neighbor_max_length
        return int(getattr(self.clip_tokenizer, "context_length", self.neighbor_context_length or 77))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `ProcessorMixin.save_pretrained`, plus the text neighbour tokenizer in `text_neighbor_tokenizer/`
        (so the folder tokenises text neighbours offline)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.text_neighbor_encoder is not None:
            self.text_neighbor_tokenizer.save_pretrained(os.path.join(save_directory, TEXT_NEIGHBOR_TOKENIZER_DIR))
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `ProcessorMixin.from_pretrained`; a processor saved with a text neighbour encoder takes its tokenizer
        from `text_neighbor_tokenizer/` of the same folder (or hub repository)."""
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if processor.text_neighbor_encoder is not None:
            hub_kwargs = {k: v for k, v in kwargs.items()
                          if k in ("cache_dir", "force_download", "local_files_only", "token", "revision")}
            subfolder = os.path.join(kwargs.get("subfolder") or "", TEXT_NEIGHBOR_TOKENIZER_DIR)
            processor._state.text_neighbor_tokenizer = load_text_neighbor_tokenizer(
                pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs
            )
        return processor

    def check_model_config(self, config, embed_dim: int | None = None, text_embed_dim: int | None = None) -> None:
        """Refuse a model whose configuration disagrees with this processor, naming both values: the neighbour mode
        this design needs, the text neighbour encoder, tokens per neighbour, neighbour budgets, the placeholder id
        and, when given, the width `embed_dim` of the neighbour embeddings (an embedding cache's;
        `text_embed_dim` that of its text embeddings when it differs). Reads `config` by attribute name only
        (this file never imports modeling code)."""
        wanted_mode = neighbor_mode(self.neighbor_encoding, self.context)
        mode = getattr(config, "neighbor_mode", "none")
        problems = []
        if mode != wanted_mode:
            problems.append(f"neighbor_mode: processor ({self.neighbor_encoding}, {self.context}) needs {wanted_mode!r}, "
                            f"model has {mode!r}")
        if wanted_mode != "none" and mode == wanted_mode:
            pairs = [("max_text_neighbors", self.max_text_neighbors), ("max_image_neighbors", self.max_image_neighbors)]
            if self.has_text_slots:
                pairs += [("text_neighbor_encoder", self.text_neighbor_encoder)]
                if self.text_neighbor_encoder is not None:
                    pairs += [("text_neighbor_max_length", self.text_neighbor_max_length)]
            pairs.append(("neighbor_bridge", self.neighbor_bridge))
            if self.neighbor_bridge != "linear":
                pairs.append(("bridge_num_latents", self.bridge_num_latents))
            if wanted_mode == "self_attention":
                pairs += [("text_neighbor_num_tokens", self.text_neighbor_num_tokens),
                          ("image_neighbor_num_tokens", self.image_neighbor_num_tokens),
                          ("neighbor_token_id", self.neighbor_token_id)]
            if embed_dim is not None:
                if self.has_text_slots:
                    pairs.append(("text_neighbor_embed_dim", text_embed_dim or embed_dim))
                if self.has_image_slots:
                    pairs.append(("image_neighbor_embed_dim", embed_dim))
            problems += [f"{name}: processor {value!r}, model {getattr(config, name, None)!r}"
                         for name, value in pairs if getattr(config, name, None) != value]
        # The model projects the eigenvectors the processor computes: both must agree on whether and how many.
        model_lpe_k = getattr(config, "lpe_k", None) if getattr(config, "position_encoding", "none") == "laplacian" else None
        if (self.lpe_k or None) != model_lpe_k:
            problems.append(f"lpe_k: processor {self.lpe_k!r}, model {model_lpe_k!r} "
                            f"(position_encoding={getattr(config, 'position_encoding', 'none')!r})")
        model_target = getattr(config, "graph_target_feature", "none")
        if self.graph_target_feature != model_target:
            problems.append(f"graph_target_feature: processor {self.graph_target_feature!r}, model {model_target!r}")
        if problems:
            raise ValueError("the processor and the model disagree: " + "; ".join(problems))

    def data_collator(self, for_generation: bool = False, pad_to_multiple_of: int | None = None) -> MMGLDataCollator:
        """The collator matching this processor's pad id."""
        return MMGLDataCollator(self.pad_token_id, for_generation=for_generation, pad_to_multiple_of=pad_to_multiple_of)

    # ------------------------------------------------------------------ neighbour selection

    def select_neighbors(self, page: Any, section_idx: int) -> NeighborSelection:
        """The text and image neighbours of `section_idx` under this processor's budgets (`select_neighbors`)."""
        return self._select(PageGraph.coerce(page), section_idx)

    def _select(self, graph: PageGraph, section_idx: int) -> NeighborSelection:
        return select_neighbors(graph, section_idx, self.context, self.max_text_neighbors, self.max_image_neighbors)

    def target_text(self, graph: PageGraph, section_idx: int) -> str:
        """The target's input text: `"<title>: <rest>"`, summary cut out (`target_input`)."""
        return target_input(graph, section_idx, self.include_section_title)

    # ------------------------------------------------------------------ tokenisation (cached or not)

    def tokenizer_identity(self) -> dict[str, str]:
        """What token cache ids depend on: the OPT tokenizer's fingerprint and the text neighbour tokenizer (open_clip's
        name and context length, or the Hugging Face tokenizer's fingerprint and max length)."""
        if self._state.identity is None:
            if self.text_neighbor_encoder is not None:
                clip = f"hf:{tokenizer_fingerprint(self.text_neighbor_tokenizer)}:{self.text_neighbor_max_length}"
            else:
                clip = f"{self.neighbor_encoder_name}:{self.neighbor_context_length}"
            self._state.identity = {"lm": tokenizer_fingerprint(self.tokenizer), "neighbor_text": clip}
        return self._state.identity

    def _encode_lm(self, texts: Sequence[str]) -> list[np.ndarray]:
        # " " + text: segments then join like words of one running text under byte-level BPE.
        # split_special_tokens: a literal "<neighbor>" or "</s>" in page text stays plain text.
        prefixed = [" " + t for t in texts]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            # The Rust tokenizer directly, without the offsets `tokenizer(...)` computes and drops: the same
            # ids (what `tokenizer(...)` itself calls, as it sets encode_special_tokens for
            # split_special_tokens) for ~20% less CPU, the bulk of building a token store.
            backend.encode_special_tokens = True
            encoded = [e.ids for e in backend.encode_batch_fast(prefixed, add_special_tokens=False)]
        else:
            encoded = self.tokenizer(prefixed, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [np.asarray(ids, dtype=np.int64) for ids in encoded]

    def _encode_clip(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Text neighbour encoder ids (open_clip's, or the Hugging Face encoder's: `text_neighbor_ids`)."""
        if self.text_neighbor_encoder is not None:
            return list(text_neighbor_ids(self.text_neighbor_tokenizer, texts, self.text_neighbor_max_length))
        return list(clip_text_ids(self.clip_tokenizer, texts))

    def encode_texts(self, kind: str, texts: Sequence[str]) -> list:
        """Token ids of each text, tokenised now (no token store): `"lm"`, the language model's ids of `" " + text`
        (`np.ndarray`); `"neighbor_text"` (formerly `"clip"`), the text neighbour encoder's ids (`torch.Tensor`). What a
        token store holds
        (`processing.data.token_store.build_token_cache` calls this)."""
        if kind == "lm":
            return self._encode_lm(texts)
        if kind in ("neighbor_text", "clip"):
            return self._encode_clip(texts)
        raise ValueError(f"unknown token kind {kind!r}: expected 'lm' or 'neighbor_text'")

    def _lm_ids_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """OPT ids of several texts (each as `" " + text`)."""
        return self._ids_many("lm", self._encode_lm, texts)

    def _clip_ids_many(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """open_clip ids of several texts."""
        return self._ids_many("neighbor_text", self._encode_clip, texts)

    def _ids_many(self, kind: str, encode, texts: Sequence[str]) -> list:
        """Ids of several texts: one hash and binary search each in the token store when there is one, one
        batched `encode` call for the texts it lacks (or for all of them without a store)."""
        cache = self._state.token_cache
        if cache is None:
            return encode(texts) if texts else []
        ids = cache.lookup(kind, texts)
        absent = [i for i, found in enumerate(ids) if found is None]
        if absent:  # texts not met yet (e.g. summary-scrubbed ones): tokenise once, remember a bounded number
            missing = list(dict.fromkeys(texts[i] for i in absent))
            encoded = dict(zip(missing, encode(missing)))
            cache.remember(kind, missing, [encoded[t] for t in missing])
            for i in absent:
                ids[i] = encoded[texts[i]]
        return ids

    def _prompt_ids(self) -> dict[str, Any]:
        """Ids of the fixed prompt pieces, tokenised once; `fixed_length` counts the pieces every
        example has (bos, section and summary prompts)."""
        if self._state.prompt_ids is None:
            bos = self.tokenizer.bos_token_id
            prompts: dict[str, Any] = {
                "bos": np.asarray([] if bos is None else [bos], dtype=np.int64),
                "eos": np.asarray([self.tokenizer.eos_token_id], dtype=np.int64),
                "context": self._encode_lm([self.context_prompt])[0],
                "section": self._encode_lm([self.section_prompt])[0],
                "summary": self._encode_lm([self.summary_prompt])[0],
            }
            prompts["fixed_length"] = len(prompts["bos"]) + len(prompts["section"]) + len(prompts["summary"])
            self._state.prompt_ids = prompts
        return self._state.prompt_ids

    @property
    def token_cache(self) -> MMGLTokenCache | None:
        return self._state.token_cache

    def set_token_cache(self, cache: MMGLTokenCache | None) -> None:
        """Use `cache` (or none); refuses a cache built with other tokenizers."""
        if cache is not None and cache.identity != self.tokenizer_identity():
            source = f" ({cache.path!r})" if cache.path else ""
            raise ValueError(
                f"token cache{source} was built with tokenizers {cache.identity}, this processor uses "
                f"{self.tokenizer_identity()}"
            )
        self._state.token_cache = cache

    def load_token_cache(self, path: str | os.PathLike) -> MMGLTokenCache:
        """Load a token cache file (`MMGLTokenCache.save`) and use it; a file of other tokenizers, or a
        damaged one, raises `ValueError` naming the file. Save one with `processor.token_cache.save(path)`."""
        cache = MMGLTokenCache.load(path, identity=self.tokenizer_identity())
        self._state.token_cache = cache
        return cache

    # ------------------------------------------------------------------ neighbour payloads

    def _text_payload(self, graph: PageGraph, section_idx: int, selection: NeighborSelection, embedding_cache) -> dict[str, torch.Tensor]:
        if embedding_cache is not None:
            return text_embeddings(selection.texts, embedding_cache, f"page {graph.page_id!r}, section {section_idx}")
        ids = self._clip_ids_many(selection.texts)
        values = torch.stack(ids) if ids else torch.zeros((0, self.neighbor_context_size), dtype=torch.long)
        return {"text_neighbor_input_ids": values, "text_neighbor_mask": torch.from_numpy(np.ones(len(ids), dtype=np.int64))}

    def image_folder(self, image_dir: ImageFolder | str | os.PathLike | None) -> ImageFolder:
        """The `ImageFolder` of `image_dir` (its manifest read once per folder and kept)."""
        if isinstance(image_dir, ImageFolder):
            return image_dir
        key = None if image_dir is None else os.fspath(image_dir)
        folder = self._state.image_folders.get(key)
        if folder is None:
            folder = self._state.image_folders[key] = ImageFolder(key)
        return folder

    def _image_payload(
        self, selection: NeighborSelection, embedding_cache, image_dir
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Image slot tensors and the mask as a list (`neighbor_payload`)."""
        sources = image_sources(selection.image_refs, self.image_folder(image_dir))
        if embedding_cache is not None:
            return image_embeddings(sources, len(selection.image_refs), embedding_cache)
        if self._state.pixel_size is None or self._state.pixel_size[0] is not self.image_processor:
            self._state.pixel_size = (self.image_processor, pixel_size(self.image_processor))
        return image_pixels(sources, len(selection.image_refs), self.image_processor, self._state.pixel_size[1],
                            self._state.zero_pixels)

    # ------------------------------------------------------------------ examples

    def build_example(
        self,
        page: Any,
        section_idx: int,
        embedding_cache=None,
        image_dir: str | os.PathLike | None = None,
        for_generation: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The model inputs of one example (unbatched; see docs/INTERFACE.md and the module docstring).

        Args:
            page: a `PageGraph`, a WikiWeb2M page row or a page dict.
            section_idx (`int`): the target section.
            embedding_cache (*optional*): an object with `get_text(text)`, `get_image(path)` and
                `embed_dim` (`processing.embedding_cache.EmbeddingCache`); when given, neighbours are
                passed as embeddings, otherwise as raw CLIP ids / pixels.
            image_dir (`str`, *optional*): folder of the image files (`image_source.ImageFolder`).
            for_generation (`bool`, *optional*, defaults to `False`): stop after the prompt; no labels.

        Returns:
            `dict[str, torch.Tensor]`: `input_ids` / `attention_mask` / `labels` `(L,)`; with text
            slots `text_neighbor_embeds` `(Nt, Dt)` or `text_neighbor_input_ids` `(Nt, Lc)` and
            `text_neighbor_mask` `(Nt,)`; with image slots `image_neighbor_embeds` `(Ni, Di)` or
            `image_neighbor_pixel_values` `(Ni, 3, H, W)` and `image_neighbor_mask` `(Ni,)`; and
            `neighbor_adjacency` `(Nt + Ni, Nt + Ni)` when there are slots.
        """
        graph = PageGraph.coerce(page)
        selection = self._select(graph, section_idx)
        summary = graph.summaries[section_idx]
        if not for_generation and not summary.strip():
            raise ValueError(
                f"page {graph.page_id!r}, section {section_idx}: empty summary (section_clean_1st_sentence); "
                "it cannot be a training example"
            )
        example: dict[str, torch.Tensor] = {}
        text_slots, image_slots = self.has_text_slots, self.has_image_slots
        slot_nodes: list[int] = []
        slot_mask: list[int] = []
        num_placeholders = 0
        image_mask: list[int] = []
        if text_slots:
            example.update(self._text_payload(graph, section_idx, selection, embedding_cache))
            slot_nodes += selection.text_nodes
            slot_mask += [1] * len(selection.text_nodes)
            if self.neighbor_encoding == "sa_e":
                num_placeholders += self.text_neighbor_num_tokens * len(selection.texts)
        if image_slots:
            payload, image_mask = self._image_payload(selection, embedding_cache, image_dir)
            example.update(payload)
            slot_nodes += selection.image_nodes
            slot_mask += image_mask
            if self.neighbor_encoding != "ca_e":
                num_placeholders += self.image_neighbor_num_tokens * sum(image_mask)
        if self.neighbor_bridge != "linear" and self.neighbor_encoding != "ca_e":
            # The bridge's latents replace every neighbour's placeholders; no real neighbour, no latents (the model's
            # rule: it reads rows without any as plain OPT).
            has_real = (text_slots and len(selection.texts) > 0) or sum(image_mask) > 0
            num_placeholders = self.bridge_num_latents if has_real else 0
        if text_slots or image_slots:
            # Without text slots (SA-TE) each image slot stands for its section (`graph_projection`).
            example["neighbor_adjacency"] = adjacency = neighbor_adjacency(
                graph, selection.target_node, slot_nodes, slot_mask, images_stand_for_sections=not text_slots
            )
            if self.lpe_k:
                example["neighbor_laplacian_eigenvectors"] = slot_laplacian_eigenvectors(adjacency, slot_mask, self.lpe_k)
            if self.graph_target_feature == "distance":
                example["neighbor_target_distances"] = target_distances(
                    graph, selection.target_node, slot_nodes, slot_mask, images_stand_for_sections=not text_slots
                )

        input_ids, source_length = self._token_layout(
            graph, section_idx, selection, num_placeholders, image_mask, for_generation
        )
        example["input_ids"] = ids = torch.from_numpy(input_ids)
        example["attention_mask"] = torch.ones_like(ids)  # ones_like: faster than torch.ones(L, dtype=...)
        if not for_generation:
            labels = input_ids.copy()
            labels[:source_length] = -100  # supervise the summary and its eos only
            example["labels"] = torch.from_numpy(labels)
        return example

    def _token_layout(
        self, graph: PageGraph, section_idx: int, selection: NeighborSelection, num_placeholders: int,
        image_mask: Sequence[int], for_generation: bool,
    ) -> tuple[np.ndarray, int]:
        """`input_ids` and the source length (`token_layout.layout_ids`), from this processor's ids."""
        sa_te = self.neighbor_encoding == "sa_te"
        raw_texts = selection.texts if sa_te else ()
        target_text = self.target_text(graph, section_idx)
        if for_generation:  # no summary: the naive (uncached) path must not tokenise it for nothing
            ids = self._lm_ids_many([target_text, *raw_texts])
            target, summary, neighbor_texts = ids[0], None, ids[1:]
        else:
            ids = self._lm_ids_many([target_text, graph.summaries[section_idx], *raw_texts])
            target, summary, neighbor_texts = ids[0], ids[1], ids[2:]
        return layout_ids(
            self._prompt_ids(), target, summary, neighbor_texts, num_placeholders, self._placeholders,
            self.max_source_length, self.max_target_length,
            groups=sa_te_groups(graph, section_idx, selection) if sa_te else None, image_mask=image_mask,
            image_tokens=self.image_neighbor_num_tokens, bridged=self.neighbor_bridge != "linear",
            where=f"page {graph.page_id!r}, section {section_idx}",
        )

    def _placeholders(self, count: int) -> np.ndarray:
        """`count` placeholder ids: one read-only array per count, reused by every example."""
        placeholders = self._state.placeholders.get(count)
        if placeholders is None:
            placeholders = np.full(count, self.neighbor_token_id, dtype=np.int64)
            placeholders.flags.writeable = False
            self._state.placeholders[count] = placeholders
        return placeholders

    def __call__(
        self,
        pages: Any = None,
        section_indices: int | Sequence[int] | None = None,
        embedding_cache=None,
        image_dir: str | os.PathLike | None = None,
        for_generation: bool = False,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Build and collate examples.

        Args:
            pages: one page (graph, WikiWeb2M row or dict) or a list, one per section index.
            section_indices (`int` or `list[int]`): target section(s).
            embedding_cache, image_dir, for_generation: as in `build_example`.
            return_tensors (`str`, *optional*, defaults to `"pt"`): only PyTorch tensors are produced.

        Returns:
            `BatchFeature` with the batched keys of docs/INTERFACE.md.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"MMGLProcessor returns PyTorch tensors only, got return_tensors={return_tensors!r}")
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if section_indices is None:
            raise ValueError("section_indices is required (the target section of each page)")
        if isinstance(section_indices, int):
            pages, section_indices = [pages], [section_indices]
        elif isinstance(pages, Mapping) or is_page_graph(pages):
            pages = [pages] * len(section_indices)
        if len(pages) != len(section_indices):
            raise ValueError(f"got {len(pages)} pages for {len(section_indices)} section indices")
        examples = [
            self.build_example(page, s, embedding_cache=embedding_cache, image_dir=image_dir, for_generation=for_generation)
            for page, s in zip(pages, section_indices)
        ]
        return BatchFeature(self.data_collator(for_generation)(examples))


__all__ = ["NEIGHBOR_TOKEN", "MMGLProcessor"]
