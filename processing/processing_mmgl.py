"""Processor for Multimodal Graph Learning (MMGL) section summarization.

`MMGLProcessor` turns (page, target section) into the model inputs of docs/INTERFACE.md: an OPT
prompt with ``<neighbor>`` placeholders and labels on the summary only, the neighbours (raw or as
cached embeddings) with masks, and the graph between the neighbours.

Example layout (one example, training; ``|`` separates token segments)::

    </s> | [SA-TE, if any text neighbour] " Context:" | " <text neighbour 1>" | " <text neighbour 2>" | ...
         | " Section:" | " <section title>: <section text after its first sentence>"
         | <neighbor> x text_neighbor_num_tokens per text slot        (SA-E only)
         | <neighbor> x image_neighbor_num_tokens per real image slot (SA-TE and SA-E)
         | " Summary:" | " <summary>" </s>
    labels: -100 everywhere except " <summary>" </s>

for generation the example stops after " Summary:". Every text segment is tokenised on its own as
``" " + text`` (no special tokens, special-token strings inside text are split as plain text), so
an example is a concatenation of per-text id arrays: the token cache (`build_token_cache`) stores
each unique text's ids once and building an example is slicing and concatenating. A token cache is
saved to and loaded from one pickle-free ``.npz`` file keyed by the tokenizers' fingerprint and by
text digests (`MMGLTokenCache`, `load_token_cache`). Truncation
(``max_source_length``) cuts texts only, from their end, never placeholders or prompts: the target
text keeps what the SA-TE neighbour texts leave free and at least half of the text budget, the
neighbour texts share the rest in slot order; the summary (``max_target_length`` with eos) is last.

Neighbour selection (deterministic; `select_neighbors`). Sections are ranked for target ``t`` as:
its parent section first, then the other sections by ``(|s - t|, s)`` (nearest first, the earlier
one on ties). The page graph keeps these candidate orders per section once built
(`PageGraph.neighbor_order`); a selection is a prefix of them.

* text slots, at most ``max_text_neighbors``, blank texts skipped:
  ``section_only``: none. ``section_all``: the captions of the target's images.
  ``text_only`` / ``all``: the page description, the captions of the target's images, then for each
  ranked section its text followed by its images' captions.
* image slots, at most ``max_image_neighbors``: ``section_all``: the target's images; ``all``: the
  target's images, then each ranked section's images; none otherwise. An image whose file is not
  on disk (or, with an embedding cache, not in it) keeps its slot with mask 0 and gets no
  placeholders. Page dicts may hold the image itself (a PIL image or the file's bytes): it is
  preprocessed like a file, and an embedding cache is asked for its bytes (a PIL image's PNG). With raw pixels, an example with no image file at all gets a zero-stride zero view
  for ``image_neighbor_pixel_values`` (no 3 MB memset per example at 224 px; treat it as read-only).

An embedding cache is asked for exactly these keys: each text neighbour's text (as in
`NeighborSelection.texts`, see `collect_neighbor_inputs`) and each image's resolved file path (or,
for an in-memory image, its bytes).

Which keys an example has depends only on the configuration: text slots exist in SA-E and CA-E for
every context but ``section_only`` (in SA-TE texts are raw tokens); image slots for ``section_all``
and ``all``; ``neighbor_adjacency`` whenever there are slots.

Graph projection (`neighbor_adjacency`, nodes ``[text slots..., image slots...]``). Each slot stands
for a page-graph node: the page node (description), a section node (its text) or an image node
(its caption as a text slot, its pixels as an image slot). Two real slots ``a != b`` are adjacent
when their nodes are (1) the same node (an image's caption slot and its image slot), (2) adjacent
in the page graph, or (3) both adjacent to the target section node. The target is the node being
summarised: it is the prompt, not a slot, so it is contracted and its graph neighbours become
pairwise adjacent (otherwise the target's own images, in SA-TE the only slots, would be
disconnected). Masked (missing) and padding slots are isolated; there are no self loops.

Leakage: the target's summary (clean and raw first sentence) never enters any input. The target
contributes only ``section_rest_sentence``; any neighbour text, caption, title or the target text
that still contains the summary verbatim has it cut out before tokenisation or embedding lookup.

Options are plain attributes saved in ``processor_config.json``; prompt ids are tokenised at first
use, so build a new processor (or `from_pretrained`) rather than editing the prompts afterwards.

This file is Hub-loadable: it imports installed packages and same-folder files (``page_graph.py``,
``collator.py``) only, and never modeling code.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import unquote

import numpy as np
import torch
from transformers import AddedToken, BatchFeature, CLIPImageProcessor
from transformers.processing_utils import ProcessorMixin

from .collator import MMGLDataCollator
from .page_graph import PageGraph, PageGraphIndex, is_page_graph, scrub_summary

CONTEXTS = ("section_only", "section_all", "text_only", "all")
NEIGHBOR_ENCODINGS = ("sa_te", "sa_e", "ca_e")
NEIGHBOR_TOKEN = "<neighbor>"
# open_clip's default preprocessing statistics (OPENAI_DATASET_MEAN / _STD).
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Shared zero scalar behind the broadcast pixel block of examples without any image file.
_ZERO = torch.zeros(())


def clip_image_processor(model_name: str = "ViT-B-32", image_size: Optional[int] = None) -> CLIPImageProcessor:
    """A `CLIPImageProcessor` that reproduces open_clip's eval preprocessing for ``model_name``.

    open_clip resizes the shortest edge to ``image_size`` (bicubic), centre-crops ``image_size`` and
    normalises with the model's mean/std (OpenAI CLIP statistics unless the config says otherwise).
    Works offline: only the bundled model config is read.
    """
    mean, std = _OPENAI_CLIP_MEAN, _OPENAI_CLIP_STD
    if image_size is None:
        import open_clip

        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(f"open_clip has no model config named {model_name!r}")
        vision = config.get("vision_cfg", {})
        image_size = vision.get("image_size", 224)
        mean = tuple(vision.get("image_mean", mean))
        std = tuple(vision.get("image_std", std))
        if isinstance(image_size, (list, tuple)):
            image_size = image_size[0]
    return CLIPImageProcessor(
        size={"shortest_edge": int(image_size)},
        crop_size={"height": int(image_size), "width": int(image_size)},
        do_center_crop=True,
        resample=3,  # PIL.Image.BICUBIC, as open_clip
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


def _long_tensor(values: List[int]) -> torch.Tensor:
    # Through numpy: about twice as fast as torch.tensor(list) for the few values of a mask.
    return torch.from_numpy(np.array(values, dtype=np.int64))


def _png_bytes(image) -> bytes:
    """A PIL image as PNG bytes (lossless, so an embedding cache keyed by bytes sees the same pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb_image(source):
    """An RGB PIL image from a file path, encoded bytes or a PIL image."""
    from PIL import Image

    if isinstance(source, (str, bytes)):
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
            return image.convert("RGB")
    return source.convert("RGB")


@dataclass
class NeighborSelection:
    """The neighbours of one example, in slot order.

    Args:
        target_node (`int`): page-graph node of the target section.
        text_nodes (`list[int]`): node of each text neighbour (page, section or image-caption node).
        texts (`list[str]`): the text of each text neighbour, summary-free.
        image_nodes (`list[int]`): node of each image neighbour.
        image_refs (`list`): path or URL of each image neighbour (`None` if it has none), or the image
            itself (a PIL image or the file's bytes) for images given in memory in a page dict.
    """

    target_node: int
    text_nodes: List[int]
    texts: List[str]
    image_nodes: List[int]
    image_refs: List[Any]


def tokenizer_fingerprint(tokenizer) -> str:
    """``sha256:<hex>`` of what decides a fast tokenizer's ids: its JSON (model, vocab, merges, normaliser,
    pre-tokeniser and added tokens). Its truncation and padding settings are left out: each call
    switches them, and the token cache tokenises without either. A slow tokenizer is fingerprinted by
    its class and full vocabulary (added tokens included)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items())}
    return "sha256:" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def _text_digests(texts: Sequence[str]) -> np.ndarray:
    """128-bit BLAKE2b digest of each text's UTF-8 bytes, as 16-byte void scalars (they sort and
    binary-search bytewise): the on-disk key of a text, so the file holds no text at all."""
    blob = b"".join(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest() for text in texts)
    return np.frombuffer(blob, dtype="V16")


class _IdTable:
    """The ids of many texts in three flat arrays: text ``i`` has digest ``keys[i]`` (sorted) and ids
    ``ids[offsets[i] : offsets[i + 1]]``. No Python object per text, so it loads and searches fast."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, ids: np.ndarray):
        self.keys, self.offsets, self.ids = keys, offsets, ids

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(cls, base: Optional["_IdTable"], keys: np.ndarray, arrays: Sequence[np.ndarray]) -> "_IdTable":
        """``base``'s entries plus new ones (``keys[j]`` has ids ``arrays[j]``), sorted by key."""
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.int64)
        starts = np.cumsum(lengths) - lengths
        if base is not None:
            keys = np.concatenate([base.keys, keys])
            starts = np.concatenate([base.offsets[:-1], starts + len(base.ids)])
            lengths = np.concatenate([np.diff(base.offsets), lengths])
            flat = np.concatenate([base.ids, flat])
        order = np.argsort(keys, kind="stable")
        keys, starts, lengths = keys[order], starts[order], lengths[order]
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Gather every entry's ids in key order at once (entry j's run, shifted to its new place).
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        fits = flat.size == 0 or (flat.min() >= -(2**31) and flat.max() < 2**31)
        return cls(keys, offsets, flat[gather].astype(np.int32 if fits else np.int64))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[rows] == keys, rows, -1)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)


class MMGLTokenCache:
    """Token ids of every unique text of a data set, tokenised once.

    In memory, ``lm`` maps a text to its OPT ids (``" " + text``, int64 array) and ``clip`` maps a
    neighbour text to its open_clip ids (`(Lc,)` long tensor): a dict lookup per text while building
    examples. ``identity`` records the tokenizers the ids came from (`tokenizer_fingerprint`); a
    processor refuses a cache made by other tokenizers.

    On disk (`save` / `load`) a cache is one ``.npz`` file without pickled objects: a JSON header
    (format, version, identity, counts) and, per kind, the 128-bit digests of the texts (sorted), the
    ids of all texts as one flat int32 array and their offsets. `save` writes a temporary file beside
    the target, fsyncs it and renames it over the target (`os.replace`), so a crash leaves the old
    file or the new one, never a partial file under the final name; `load` refuses a truncated or
    inconsistent file, and a file of other tokenizers, naming the file. The texts of a loaded file
    move into ``lm`` / ``clip`` when first asked for (the file stores only their digests); new texts
    go in through `add` (as `build_token_cache` and the processor do), so that the next `save` keeps them.
    """

    FORMAT = "mmgl-token-cache"
    VERSION = 1
    KINDS = ("lm", "clip")

    def __init__(self, identity: Mapping[str, str], path: Optional[str] = None):
        self.identity = dict(identity)
        self.path = path  # the file it was loaded from or last saved to, for error messages
        self.lm: Dict[str, np.ndarray] = {}
        self.clip: Dict[str, torch.Tensor] = {}
        self._stored: Dict[str, _IdTable] = {}  # from the file, by kind
        self._added: Dict[str, Dict[str, None]] = {kind: {} for kind in self.KINDS}  # not in the file yet

    def __len__(self) -> int:
        return sum(len(self._stored.get(kind, ())) + len(self._added[kind]) for kind in self.KINDS)

    def missing(self, kind: str, texts: Iterable[str]) -> List[str]:
        """The texts (unique, in order) with no ids yet; ids found in the loaded file are moved to memory."""
        table = getattr(self, kind)
        missing = [text for text in dict.fromkeys(texts) if text not in table]
        stored = self._stored.get(kind)
        if stored is None or not missing:
            return missing
        rows = stored.find(_text_digests(missing))
        for text, row in zip(missing, rows.tolist()):
            if row >= 0:
                ids = stored.row(row)
                table[text] = ids if kind == "lm" else torch.from_numpy(ids)
        return [text for text, row in zip(missing, rows.tolist()) if row < 0]

    def add(self, kind: str, texts: Sequence[str], ids: Sequence[Any]) -> None:
        """Remember freshly tokenised ``texts`` (saved by the next `save`)."""
        getattr(self, kind).update(zip(texts, ids))
        self._added[kind].update(dict.fromkeys(texts))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the cache to ``path`` (an ``.npz`` file), atomically; see the class docstring."""
        path = os.fspath(path)
        tables = {}
        for kind in self.KINDS:
            added = list(self._added[kind])
            table = getattr(self, kind)
            arrays = [np.asarray(table[text]) for text in added]
            tables[kind] = _IdTable.build(self._stored.get(kind), _text_digests(added), arrays)
        header = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "identity": self.identity,
            "counts": {kind: len(table) for kind, table in tables.items()},
        }
        arrays = {"header": np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)}
        for kind, table in tables.items():
            arrays.update({f"{kind}_keys": table.keys, f"{kind}_offsets": table.offsets, f"{kind}_ids": table.ids})
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._stored, self._added, self.path = tables, {kind: {} for kind in self.KINDS}, path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], identity: Optional[Mapping[str, str]] = None) -> "MMGLTokenCache":
        """Read a cache written by `save`.

        Args:
            path (`str` or `os.PathLike`): the ``.npz`` file.
            identity (`dict`, *optional*): the tokenizers' identity the cache must have (a processor
                passes its own); a file of other tokenizers raises `ValueError` naming the file.

        Raises:
            `ValueError`: the file is truncated, corrupt, not a token cache, or of other tokenizers.
        """
        path = os.fspath(path)
        names = ["header"] + [f"{kind}_{part}" for kind in cls.KINDS for part in ("keys", "offsets", "ids")]
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in names}
            header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:  # truncated, corrupt, foreign
            raise ValueError(f"token cache {path!r} cannot be read (truncated, corrupt or not a token cache): {err}") from err
        if header.get("format") != cls.FORMAT or header.get("version") != cls.VERSION:
            raise ValueError(
                f"token cache {path!r} has format {header.get('format')!r} version {header.get('version')!r}, "
                f"expected {cls.FORMAT!r} version {cls.VERSION}"
            )
        if identity is not None and header["identity"] != dict(identity):
            raise ValueError(
                f"token cache {path!r} was built with tokenizers {header['identity']}, this processor uses "
                f"{dict(identity)}; rebuild it (build_token_cache) or remove the file"
            )
        cache = cls(header["identity"], path=path)
        counts = header.get("counts") or {}
        for kind in cls.KINDS:
            keys, offsets, ids = (arrays[f"{kind}_{part}"] for part in ("keys", "offsets", "ids"))
            consistent = (
                keys.dtype == np.dtype("V16")
                and keys.shape == (counts.get(kind),)
                and offsets.shape == (len(keys) + 1,)
                and offsets[0] == 0
                and offsets[-1] == len(ids)
                and bool(np.all(np.diff(offsets) >= 0))
            )
            if not consistent:
                raise ValueError(f"token cache {path!r}: the {kind!r} tables are inconsistent (a damaged file)")
            cache._stored[kind] = _IdTable(keys, offsets, ids)
        return cache


class _RuntimeState:
    """Caches that must not be serialised nor deep-copied with the processor config (`to_dict`)."""

    def __init__(self):
        self.token_cache: Optional[MMGLTokenCache] = None
        self.clip_tokenizer = None
        self.prompt_ids: Optional[Dict[str, np.ndarray]] = None
        self.identity: Optional[Dict[str, str]] = None
        self.pixel_size = None
        self.placeholders: Dict[int, np.ndarray] = {}
        self.zero_pixels: Dict[Tuple[int, int, int], torch.Tensor] = {}

    def __deepcopy__(self, memo):
        return self


class MMGLProcessor(ProcessorMixin):
    r"""Builds MMGL model inputs from a page graph and a target section.

    Args:
        image_processor (`CLIPImageProcessor`, *optional*): preprocessing of raw neighbour images, as
            the CLIP image encoder's; defaults to `clip_image_processor(neighbor_encoder_name)`.
        tokenizer (`PreTrainedTokenizerBase`): the OPT tokenizer. ``<neighbor>`` is added to it as a
            special token when missing; its id is the model's ``neighbor_token_id``.
        context (`str`, *optional*, defaults to `"all"`): ``section_only`` (target section text),
            ``section_all`` (+ its images and captions), ``text_only`` (all text of the page) or
            ``all`` (all text and images of the page).
        neighbor_encoding (`str`, *optional*, defaults to `"sa_e"`): ``sa_te`` (neighbour texts as raw
            tokens, images as embeddings), ``sa_e`` (every neighbour as embeddings in the sequence) or
            ``ca_e`` (neighbours through cross-attention; no placeholders).
        text_neighbor_num_tokens (`int`, *optional*, defaults to 4): placeholders per text neighbour.
        image_neighbor_num_tokens (`int`, *optional*, defaults to 4): placeholders per image neighbour.
        max_text_neighbors (`int`, *optional*, defaults to 11): text neighbour budget.
        max_image_neighbors (`int`, *optional*, defaults to 5): image neighbour budget.
        max_source_length (`int`, *optional*, defaults to 512): tokens before the summary (prompt,
            texts and placeholders); only texts are truncated (see the module docstring).
        max_target_length (`int`, *optional*, defaults to 128): summary tokens including eos.
        neighbor_encoder_name (`str`, *optional*, defaults to `"ViT-B-32"`): open_clip model name whose
            tokenizer makes ``text_neighbor_input_ids`` (works offline).
        neighbor_context_length (`int`, *optional*): open_clip context length ``Lc``; defaults to the
            model's (77 for CLIP).
        include_section_title (`bool`, *optional*, defaults to `True`): prefix the target text with
            its section title.
        context_prompt / section_prompt / summary_prompt (`str`, *optional*): the fixed prompt words,
            ``"Context:"``, ``"Section:"`` and ``"Summary:"``.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        context: str = "all",
        neighbor_encoding: str = "sa_e",
        text_neighbor_num_tokens: int = 4,
        image_neighbor_num_tokens: int = 4,
        max_text_neighbors: int = 11,
        max_image_neighbors: int = 5,
        max_source_length: int = 512,
        max_target_length: int = 128,
        neighbor_encoder_name: str = "ViT-B-32",
        neighbor_context_length: Optional[int] = None,
        include_section_title: bool = True,
        context_prompt: str = "Context:",
        section_prompt: str = "Section:",
        summary_prompt: str = "Summary:",
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("MMGLProcessor needs a tokenizer (the OPT tokenizer of the model)")
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if neighbor_encoding not in NEIGHBOR_ENCODINGS:
            raise ValueError(f"neighbor_encoding must be one of {NEIGHBOR_ENCODINGS}, got {neighbor_encoding!r}")
        for name, value, low in (
            ("text_neighbor_num_tokens", text_neighbor_num_tokens, 1),
            ("image_neighbor_num_tokens", image_neighbor_num_tokens, 1),
            ("max_text_neighbors", max_text_neighbors, 0),
            ("max_image_neighbors", max_image_neighbors, 0),
            ("max_source_length", max_source_length, 1),
            ("max_target_length", max_target_length, 2),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
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
        self.include_section_title = include_section_title
        self.context_prompt = context_prompt
        self.section_prompt = section_prompt
        self.summary_prompt = summary_prompt
        self._state = _RuntimeState()
        super().__init__(image_processor, tokenizer, **kwargs)
        self.neighbor_token_id = int(tokenizer.convert_tokens_to_ids(NEIGHBOR_TOKEN))

    # ------------------------------------------------------------------ configuration queries

    @property
    def has_text_slots(self) -> bool:
        """Text neighbours are passed as slots (embeddings / CLIP ids), not raw tokens."""
        return self.neighbor_encoding != "sa_te" and self.context != "section_only"

    @property
    def has_image_slots(self) -> bool:
        return self.context in ("section_all", "all")

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def model_input_names(self) -> List[str]:
        names = ["input_ids", "attention_mask", "labels"]
        if self.has_text_slots:
            names += ["text_neighbor_embeds", "text_neighbor_input_ids", "text_neighbor_mask"]
        if self.has_image_slots:
            names += ["image_neighbor_embeds", "image_neighbor_pixel_values", "image_neighbor_mask"]
        if self.has_text_slots or self.has_image_slots:
            names.append("neighbor_adjacency")
        return names

    @property
    def clip_tokenizer(self):
        """The open_clip tokenizer of ``neighbor_encoder_name`` (imported lazily: it is heavy)."""
        if self._state.clip_tokenizer is None:
            import open_clip

            kwargs = {"context_length": self.neighbor_context_length} if self.neighbor_context_length else {}
            self._state.clip_tokenizer = open_clip.get_tokenizer(self.neighbor_encoder_name, **kwargs)
        return self._state.clip_tokenizer

    @property
    def neighbor_context_size(self) -> int:
        return int(getattr(self.clip_tokenizer, "context_length", self.neighbor_context_length or 77))

    def data_collator(self, for_generation: bool = False, pad_to_multiple_of: Optional[int] = None) -> MMGLDataCollator:
        """The collator matching this processor's pad id."""
        return MMGLDataCollator(self.pad_token_id, for_generation=for_generation, pad_to_multiple_of=pad_to_multiple_of)

    # ------------------------------------------------------------------ neighbour selection

    @staticmethod
    def section_ranking(graph: PageGraph, section_idx: int) -> List[int]:
        """Other sections in neighbour order: the parent, then by ``(|s - t|, s)``, i.e.
        ``t-1, t+1, t-2, t+2, ...`` (nearest first, the earlier one on ties)."""
        return list(PageGraph.coerce(graph).neighbor_order(section_idx).ranking)

    def select_neighbors(self, page: Any, section_idx: int) -> NeighborSelection:
        """Choose the text and image neighbours of ``section_idx`` under the budgets (module docstring)."""
        return self._select(PageGraph.coerce(page), section_idx)

    def _select(self, graph: PageGraph, section_idx: int) -> NeighborSelection:
        # The graph keeps each section's candidates nearest first (`PageGraph.neighbor_order`): a
        # selection is a prefix of them, sliced rather than rebuilt for every example.
        order = graph.neighbor_order(section_idx)
        context = self.context
        target_node = graph.section_nodes[section_idx]
        if context == "section_only":
            return NeighborSelection(target_node, [], [], [], [])
        text_budget, image_budget = self.max_text_neighbors, self.max_image_neighbors
        if context == "section_all":
            text_nodes = graph.caption_blocks[section_idx][:text_budget]
            texts = [graph.usable_texts[node] for node in text_nodes]
            summary, raw_summary = graph.summaries[section_idx], graph.raw_summaries[section_idx]
            # One substring test over all chosen texts ("\0" never occurs in a summary, so no match
            # can straddle two texts).
            joined = "\0".join(texts)
            clean = not ((summary and summary in joined) or (raw_summary and raw_summary in joined))
            image_nodes = graph.image_nodes[section_idx][:image_budget]
            image_refs = [graph.nodes[node].image for node in image_nodes]
        else:
            text_nodes, texts = list(order.text_nodes[:text_budget]), list(order.texts[:text_budget])
            clean = graph.summary_free(section_idx, text_budget)  # searched once per section, then memoised
            if context == "all":
                image_nodes, image_refs = list(order.image_nodes[:image_budget]), list(order.image_refs[:image_budget])
            else:
                image_nodes, image_refs = [], []
        if not clean:  # only pages that repeat the summary take the slow path
            text_nodes, texts = self._scrubbed_texts(graph, section_idx)
        return NeighborSelection(target_node, text_nodes, texts, image_nodes, image_refs)

    def _scrubbed_texts(self, graph: PageGraph, section_idx: int) -> Tuple[List[int], List[str]]:
        """Text neighbours with the summary cut out; texts left empty give their slot to the next."""
        forbidden = (graph.summaries[section_idx], graph.raw_summaries[section_idx])
        if self.context == "section_all":
            candidates = graph.caption_blocks[section_idx]
        else:
            candidates = graph.neighbor_order(section_idx).text_nodes
        text_nodes: List[int] = []
        texts: List[str] = []
        for node in candidates:
            if len(texts) == self.max_text_neighbors:
                break
            text = scrub_summary(graph.usable_texts[node], forbidden)
            if text:
                text_nodes.append(node)
                texts.append(text)
        return text_nodes, texts

    def target_text(self, graph: PageGraph, section_idx: int) -> str:
        """The target's input text: ``"<title>: <rest>"``, summary cut out (`PageGraph.target_input`)."""
        return graph.target_input(section_idx, self.include_section_title)

    @staticmethod
    def neighbor_adjacency(
        graph: PageGraph, target_node: int, slot_nodes: Sequence[int], slot_mask: Sequence[int]
    ) -> torch.Tensor:
        """Project the page graph onto the neighbour slots (rules in the module docstring).

        Args:
            graph (`PageGraph`): the page.
            target_node (`int`): the target section's node (contracted).
            slot_nodes (`list[int]`): the node of each slot, text slots then image slots.
            slot_mask (`list[int]`): 1 for a real slot, 0 for a missing one (kept isolated).

        Returns:
            `torch.FloatTensor` of shape `(N, N)`, symmetric 0/1, zero diagonal.
        """
        n = len(slot_nodes)
        if not any(slot_mask):
            return torch.from_numpy(np.zeros((n, n), dtype=np.float32))
        # Masked slots look at the padding node, adjacent to nothing, so their rows and columns come out
        # empty without a masking pass.
        dead = graph.num_nodes
        if not all(slot_mask):
            slot_nodes = [node if real else dead for node, real in zip(slot_nodes, slot_mask)]
        nodes = np.array(slot_nodes, dtype=np.intp)
        closed = graph.padded_closed_adjacency
        # Rules 1 and 2 at once: the page graph's adjacency with self loops, so two slots of one node
        # come out adjacent (`take` twice: several times faster than fancy indexing on small matrices).
        adjacency = closed.take(nodes, 0).take(nodes, 1)
        # Rule 3, the contracted target. The target node is never a slot, so its closed row is its
        # neighbourhood.
        around_target = closed[target_node].take(nodes)
        adjacency |= around_target[:, None] & around_target
        adjacency.flat[:: n + 1] = False  # no self loops
        return torch.from_numpy(adjacency.astype(np.float32))

    # ------------------------------------------------------------------ tokenisation (cached or not)

    def _tokenizer_identity(self) -> Dict[str, str]:
        """What token cache ids depend on: the OPT tokenizer's fingerprint and the open_clip tokenizer."""
        if self._state.identity is None:
            self._state.identity = {
                "lm": tokenizer_fingerprint(self.tokenizer),
                "clip": f"{self.neighbor_encoder_name}:{self.neighbor_context_length}",
            }
        return self._state.identity

    def _encode_lm(self, texts: Sequence[str]) -> List[np.ndarray]:
        # " " + text: segments then join like words of one running text under byte-level BPE.
        # split_special_tokens: a literal "<neighbor>" or "</s>" in page text stays plain text.
        encoded = self.tokenizer(
            [" " + t for t in texts], add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        return [np.asarray(ids, dtype=np.int64) for ids in encoded]

    def _encode_clip(self, texts: Sequence[str]) -> List[torch.Tensor]:
        return list(self.clip_tokenizer(list(texts)).long())

    def _lm_ids_many(self, texts: Sequence[str]) -> List[np.ndarray]:
        """OPT ids of several texts (each as ``" " + text``)."""
        return self._ids_many("lm", self._encode_lm, texts)

    def _clip_ids_many(self, texts: Sequence[str]) -> List[torch.Tensor]:
        """open_clip ids of several texts."""
        return self._ids_many("clip", self._encode_clip, texts)

    def _ids_many(self, kind: str, encode, texts: Sequence[str]) -> list:
        """Ids of several texts: one dict lookup each when cached, one batched ``encode`` call for the texts
        not cached yet (or for all of them without a cache)."""
        cache = self._state.token_cache
        if cache is None:
            return encode(texts) if texts else []
        table = getattr(cache, kind)
        try:
            return [table[text] for text in texts]
        except KeyError:  # texts not met yet (e.g. summary-scrubbed ones): from the file, or tokenise once
            missing = cache.missing(kind, texts)
            if missing:
                cache.add(kind, missing, encode(missing))
            return [table[text] for text in texts]
        except KeyError:
            missing = cache.missing("clip", texts)
            if missing:
                cache.add("clip", missing, self._encode_clip(missing))
            return [table[text] for text in texts]

    def _prompt_ids(self) -> Dict[str, Any]:
        """Ids of the fixed prompt pieces, tokenised once; ``fixed_length`` counts the pieces every
        example has (bos, section and summary prompts)."""
        if self._state.prompt_ids is None:
            bos = self.tokenizer.bos_token_id
            prompts: Dict[str, Any] = {
                "bos": np.asarray([] if bos is None else [bos], dtype=np.int64),
                "eos": np.asarray([self.tokenizer.eos_token_id], dtype=np.int64),
                "context": self._encode_lm([self.context_prompt])[0],
                "section": self._encode_lm([self.section_prompt])[0],
                "summary": self._encode_lm([self.summary_prompt])[0],
            }
            prompts["bos_context"] = np.concatenate([prompts["bos"], prompts["context"]])
            prompts["fixed_length"] = len(prompts["bos"]) + len(prompts["section"]) + len(prompts["summary"])
            self._state.prompt_ids = prompts
        return self._state.prompt_ids

    @property
    def token_cache(self) -> Optional[MMGLTokenCache]:
        return self._state.token_cache

    def set_token_cache(self, cache: Optional[MMGLTokenCache]) -> None:
        """Use ``cache`` (or none); refuses a cache built with other tokenizers."""
        if cache is not None and cache.identity != self._tokenizer_identity():
            source = f" ({cache.path!r})" if cache.path else ""
            raise ValueError(
                f"token cache{source} was built with tokenizers {cache.identity}, this processor uses "
                f"{self._tokenizer_identity()}"
            )
        self._state.token_cache = cache

    def load_token_cache(self, path: Union[str, os.PathLike]) -> MMGLTokenCache:
        """Load a token cache file (`MMGLTokenCache.save`) and use it; a file of other tokenizers, or a
        damaged one, raises `ValueError` naming the file. Save one with ``processor.token_cache.save(path)``."""
        cache = MMGLTokenCache.load(path, identity=self._tokenizer_identity())
        self._state.token_cache = cache
        return cache

    def build_token_cache(
        self,
        pages: Any,
        neighbor_input_ids: Optional[bool] = None,
        batch_size: int = 2048,
        show_progress: bool = True,
    ) -> MMGLTokenCache:
        """Tokenise every unique text of ``pages`` once (batched) and use the ids from now on.

        Collects, per page: the target text and summary of every section with a summary, and (for
        SA-TE) every node text that can be a neighbour; with ``neighbor_input_ids`` also the open_clip
        ids of the node texts. Texts met later (e.g. summary-scrubbed ones) are added on first use.

        Args:
            pages: a `PageGraphIndex` (its pages with samples), or an iterable of page graphs, WikiWeb2M
                rows or page dicts.
            neighbor_input_ids (`bool`, *optional*): also cache open_clip ids for raw text neighbours;
                defaults to whether this configuration has text slots (pass `False` when an embedding
                cache will provide text embeddings).
            batch_size (`int`, *optional*, defaults to 2048): texts per tokenizer call.
            show_progress (`bool`, *optional*, defaults to `True`): tqdm progress bars.

        Returns:
            `MMGLTokenCache`, also installed on the processor (it extends the current one if any: after
            `load_token_cache`, only texts the file lacks are tokenised; keep them with
            ``processor.token_cache.save(path)``).
        """
        from tqdm.auto import tqdm

        if neighbor_input_ids is None:
            neighbor_input_ids = self.has_text_slots
        cache = self._state.token_cache
        if cache is None:
            cache = MMGLTokenCache(self._tokenizer_identity())
        graphs: Iterable[PageGraph]
        if isinstance(pages, PageGraphIndex):
            graphs = pages.graphs()
        else:
            graphs = (PageGraph.coerce(page) for page in pages)
        lm_texts: Dict[str, None] = {}
        clip_texts: Dict[str, None] = {}
        raw_neighbor_texts = self.neighbor_encoding == "sa_te" and self.context != "section_only"
        for graph in tqdm(graphs, desc="collecting texts", unit="page", disable=not show_progress):
            for s in range(graph.num_sections):
                if graph.summaries[s]:
                    lm_texts[self.target_text(graph, s)] = None
                    lm_texts[graph.summaries[s]] = None
            for node in graph.nodes:
                if node.text:
                    if raw_neighbor_texts:
                        lm_texts[node.text] = None
                    if neighbor_input_ids:
                        clip_texts[node.text] = None
        for kind, wanted, encode in (("lm", lm_texts, self._encode_lm), ("clip", clip_texts, self._encode_clip)):
            texts = cache.missing(kind, wanted)  # texts of a loaded file are not tokenised again
            for start in tqdm(
                range(0, len(texts), batch_size), desc="tokenizing", unit="batch", disable=not show_progress or not texts
            ):
                chunk = texts[start : start + batch_size]
                cache.add(kind, chunk, encode(chunk))
        self._state.token_cache = cache
        return cache

    # ------------------------------------------------------------------ neighbour payloads

    @staticmethod
    def resolve_image(ref: Optional[str], image_dir: Optional[Union[str, os.PathLike]]) -> Optional[str]:
        """Path of an image node's file: a URL maps to ``image_dir/<last path component>`` (as stored
        by WikiWeb2M image folders; the URL-decoded name is tried too); a relative path is taken under
        ``image_dir``. The path may not exist (the caller masks it)."""
        if not ref:
            return None
        if "://" in ref:
            if image_dir is None:
                return None
            name = ref.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            path = os.path.join(image_dir, name)
            if not os.path.exists(path):
                decoded = os.path.join(image_dir, unquote(name))
                if os.path.exists(decoded):
                    return decoded
            return path
        if image_dir is not None and not os.path.isabs(ref):
            return os.path.join(image_dir, ref)
        return ref

    def _pixel_size(self) -> Tuple[int, int]:
        ip = self.image_processor
        if self._state.pixel_size is not None and self._state.pixel_size[0] is ip:
            return self._state.pixel_size[1]
        self._state.pixel_size = (ip, self._compute_pixel_size(ip))
        return self._state.pixel_size[1]

    @staticmethod
    def _compute_pixel_size(ip) -> Tuple[int, int]:
        crop = getattr(ip, "crop_size", None)
        if getattr(ip, "do_center_crop", False) and crop is not None:
            return int(crop["height"]), int(crop["width"])
        size = ip.size
        if size.get("height") is not None:
            return int(size["height"]), int(size["width"])
        return int(size["shortest_edge"]), int(size["shortest_edge"])

    def _text_payload(self, graph: PageGraph, section_idx: int, selection: NeighborSelection, embedding_cache) -> Dict[str, torch.Tensor]:
        num = len(selection.texts)
        if embedding_cache is not None:
            get_text = embedding_cache.get_text
            embeds = [get_text(text) for text in selection.texts]
            for text, embed in zip(selection.texts, embeds):
                if embed is None:
                    raise KeyError(
                        f"page {graph.page_id!r}, section {section_idx}: the embedding cache has no entry for text "
                        f"neighbour {text[:60]!r}...; precompute embeddings for the texts of `select_neighbors`"
                    )
            if embeds:
                try:  # the cache returns tensors: one stack
                    values = torch.stack(embeds)
                except TypeError:
                    values = torch.stack([torch.as_tensor(embed) for embed in embeds])
                values = values.reshape(num, -1).to(torch.float32)
            else:
                values = torch.zeros((0, int(embedding_cache.embed_dim)))
            key = "text_neighbor_embeds"
        else:
            ids = self._clip_ids_many(selection.texts)
            values = torch.stack(ids) if ids else torch.zeros((0, self.neighbor_context_size), dtype=torch.long)
            key = "text_neighbor_input_ids"
        return {key: values, "text_neighbor_mask": torch.from_numpy(np.ones(num, dtype=np.int64))}

    def _image_payload(
        self, selection: NeighborSelection, embedding_cache, image_dir
    ) -> Tuple[Dict[str, torch.Tensor], List[int]]:
        """Image slot tensors and the mask as a list. Only files on disk count (the raw path reads them
        and a content-addressed embedding cache hashes them), and in-memory images of page dicts (PIL
        images or encoded bytes); the others are masked."""
        num = len(selection.image_refs)
        mask = [0] * num
        sources = []  # (slot, path or in-memory image)
        for j, ref in enumerate(selection.image_refs):
            if isinstance(ref, str):
                path = self.resolve_image(ref, image_dir)
                if path is not None and os.path.isfile(path):
                    sources.append((j, path))
            elif ref is not None:
                sources.append((j, ref))
        if embedding_cache is not None:
            found = {}
            for j, source in sources:
                try:
                    # The cache keys images by their file bytes: a PIL image by its PNG bytes (lossless).
                    embed = embedding_cache.get_image(source if isinstance(source, (str, bytes)) else _png_bytes(source))
                except OSError:
                    embed = None
                if embed is not None:
                    found[j] = torch.as_tensor(embed, dtype=torch.float32).reshape(-1)
            dim = next(iter(found.values())).shape[0] if found else int(embedding_cache.embed_dim)
            values = torch.zeros((num, dim))
            for j, embed in found.items():
                values[j] = embed
                mask[j] = 1
            return {"image_neighbor_embeds": values, "image_neighbor_mask": _long_tensor(mask)}, mask
        height, width = self._pixel_size()
        loaded = []
        for j, source in sources:
            try:
                loaded.append((j, _rgb_image(source)))
            except (OSError, ValueError) as err:  # unreadable: masked like a missing file
                name = repr(source) if isinstance(source, str) else f"{type(source).__name__} image"
                warnings.warn(f"could not read image {name} ({err}); masking it")
        if loaded:
            values = torch.zeros((num, 3, height, width))
            pixels = self.image_processor(images=[image for _, image in loaded], return_tensors="pt")["pixel_values"]
            for (j, _), pixel in zip(loaded, pixels):
                values[j] = pixel
                mask[j] = 1
        else:
            # Most sections have no image file: a zero-stride zero view instead of a fresh
            # (Ni, 3, H, W) buffer (3 MB of memset per example at 224 px). Writes to it fail (all its
            # elements share one memory location), so one view per shape serves every example.
            values = self._state.zero_pixels.get((num, height, width))
            if values is None:
                values = self._state.zero_pixels[(num, height, width)] = _ZERO.expand(num, 3, height, width)
        return {"image_neighbor_pixel_values": values, "image_neighbor_mask": _long_tensor(mask)}, mask

    # ------------------------------------------------------------------ examples

    def build_example(
        self,
        page: Any,
        section_idx: int,
        embedding_cache=None,
        image_dir: Optional[Union[str, os.PathLike]] = None,
        for_generation: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """The model inputs of one example (unbatched; see docs/INTERFACE.md and the module docstring).

        Args:
            page: a `PageGraph`, a WikiWeb2M page row or a page dict.
            section_idx (`int`): the target section.
            embedding_cache (*optional*): an object with ``get_text(text)``, ``get_image(path)`` and
                ``embed_dim`` (`processing.embedding_cache.EmbeddingCache`); when given, neighbours are
                passed as embeddings, otherwise as raw CLIP ids / pixels.
            image_dir (`str`, *optional*): folder of the image files (see `resolve_image`).
            for_generation (`bool`, *optional*, defaults to `False`): stop after the prompt; no labels.

        Returns:
            `dict[str, torch.Tensor]`: ``input_ids`` / ``attention_mask`` / ``labels`` `(L,)`; with text
            slots ``text_neighbor_embeds`` `(Nt, Dt)` or ``text_neighbor_input_ids`` `(Nt, Lc)` and
            ``text_neighbor_mask`` `(Nt,)`; with image slots ``image_neighbor_embeds`` `(Ni, Di)` or
            ``image_neighbor_pixel_values`` `(Ni, 3, H, W)` and ``image_neighbor_mask`` `(Ni,)`; and
            ``neighbor_adjacency`` `(Nt + Ni, Nt + Ni)` when there are slots.
        """
        graph = PageGraph.coerce(page)
        selection = self._select(graph, section_idx)
        summary = graph.summaries[section_idx]
        if not for_generation and not summary.strip():
            raise ValueError(
                f"page {graph.page_id!r}, section {section_idx}: empty summary (section_clean_1st_sentence); "
                "it cannot be a training example"
            )
        example: Dict[str, torch.Tensor] = {}
        text_slots, image_slots = self.has_text_slots, self.has_image_slots
        slot_nodes: List[int] = []
        slot_mask: List[int] = []
        num_placeholders = 0
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
        if text_slots or image_slots:
            example["neighbor_adjacency"] = self.neighbor_adjacency(graph, selection.target_node, slot_nodes, slot_mask)

        input_ids, source_length = self._token_layout(graph, section_idx, selection, num_placeholders, for_generation)
        example["input_ids"] = ids = torch.from_numpy(input_ids)
        example["attention_mask"] = torch.ones_like(ids)  # ones_like: faster than torch.ones(L, dtype=...)
        if not for_generation:
            labels = input_ids.copy()
            labels[:source_length] = -100  # supervise the summary and its eos only
            example["labels"] = torch.from_numpy(labels)
        return example

    def _token_layout(
        self, graph: PageGraph, section_idx: int, selection: NeighborSelection, num_placeholders: int, for_generation: bool
    ) -> Tuple[np.ndarray, int]:
        """``input_ids`` as an int64 array, and the source length (tokens before the summary);
        truncation keeps placeholders and prompts."""
        prompts = self._prompt_ids()
        raw_texts = selection.texts if self.neighbor_encoding == "sa_te" else ()
        fixed = prompts["fixed_length"] + num_placeholders + (len(prompts["context"]) if raw_texts else 0)
        budget = self.max_source_length - fixed
        if budget < 0:
            raise ValueError(
                f"page {graph.page_id!r}, section {section_idx}: max_source_length={self.max_source_length} cannot "
                f"hold the prompt and {num_placeholders} neighbour placeholders ({fixed} tokens); raise "
                "max_source_length or lower the neighbour budgets"
            )
        summary = graph.summaries[section_idx]
        target_text = graph.target_input(section_idx, self.include_section_title)
        if for_generation:  # no summary: the naive (uncached) path must not tokenise it for nothing
            ids = self._lm_ids_many([target_text, *raw_texts])
            target, summary_ids, neighbor_ids = ids[0], None, ids[1:]
        else:
            ids = self._lm_ids_many([target_text, summary, *raw_texts])
            target, summary_ids, neighbor_ids = ids[0], ids[1], ids[2:]
        # Split the text budget: the target keeps everything the neighbour texts leave free, and at
        # least half when both are long; neighbour texts then fill the rest in slot order.
        neighbor_length = sum(map(len, neighbor_ids))
        if len(target) + neighbor_length > budget:
            target = target[: max(budget // 2, budget - neighbor_length)]
            budget -= len(target)
            kept = []
            for text_ids in neighbor_ids:
                if budget <= 0:
                    break
                kept.append(text_ids[:budget])
                budget -= len(kept[-1])
            neighbor_ids = kept
        placeholders = self._state.placeholders.get(num_placeholders)
        if placeholders is None:  # one read-only array per count, reused by every example
            placeholders = np.full(num_placeholders, self.neighbor_token_id, dtype=np.int64)
            placeholders.flags.writeable = False
            self._state.placeholders[num_placeholders] = placeholders
        head = prompts["bos_context"] if raw_texts else prompts["bos"]
        if for_generation:
            return np.concatenate([head, *neighbor_ids, prompts["section"], target, placeholders, prompts["summary"]]), -1
        summary_ids = summary_ids[: self.max_target_length - 1]
        input_ids = np.concatenate(
            [head, *neighbor_ids, prompts["section"], target, placeholders, prompts["summary"], summary_ids, prompts["eos"]]
        )
        return input_ids, len(input_ids) - len(summary_ids) - 1

    def __call__(
        self,
        pages: Any = None,
        section_indices: Union[int, Sequence[int], None] = None,
        embedding_cache=None,
        image_dir: Optional[Union[str, os.PathLike]] = None,
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

    def collect_neighbor_inputs(
        self, samples: Iterable[Tuple[Any, int]], image_dir: Optional[Union[str, os.PathLike]] = None
    ) -> Tuple[List[str], List[str]]:
        """The unique neighbour texts and image files of ``samples`` (``(page, section_idx)`` pairs, or a
        `PageGraphIndex`): exactly the keys `build_example` will ask an embedding cache for, but for
        in-memory images of page dicts (asked for by their bytes; no file to list). Images whose file is
        not on disk are left out (they are masked)."""
        texts: Dict[str, None] = {}
        images: Dict[str, None] = {}
        for page, section_idx in samples:
            selection = self.select_neighbors(page, section_idx)
            if self.has_text_slots:
                texts.update(dict.fromkeys(selection.texts))
            if self.has_image_slots:
                for ref in selection.image_refs:
                    if ref is not None and not isinstance(ref, str):
                        continue  # in-memory image
                    path = self.resolve_image(ref, image_dir)
                    if path is not None and os.path.isfile(path):
                        images[path] = None
        return list(texts), list(images)


__all__ = [
    "CONTEXTS",
    "NEIGHBOR_ENCODINGS",
    "NEIGHBOR_TOKEN",
    "MMGLProcessor",
    "MMGLTokenCache",
    "NeighborSelection",
    "clip_image_processor",
]
