"""A frozen Hugging Face text encoder of text neighbours (BERT, RoBERTa, sentence-transformers, ...), as in the
original MMGL code (RoBERTa, 512 tokens, a pooler), instead of open_clip's 77-token text tower.

`MMGLConfig.text_neighbor_encoder` names the model (a hub id or a local folder), `text_neighbor_pooling` how its
token states become one vector, `text_neighbor_max_length` how many tokens it reads. The model carries it inside
`MMGLNeighborEncoder` (so the pipeline encodes raw texts) and the embedding-cache builder runs the same module, so
a cached text embedding equals the in-model one. Token ids come from the processing side
(`processing/text_neighbor_tokens.py`: the one tokenisation, special tokens added, padded to the max length).
"""

import hashlib
import json

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from .configuration_mmgl import TEXT_NEIGHBOR_POOLINGS as POOLINGS

DEFAULT_MAX_LENGTH = 512
# sentence-transformers' pooling modes (1_Pooling/config.json) -> text_neighbor_pooling.
SENTENCE_TRANSFORMERS_POOLINGS = {"cls_token": "cls", "mean_tokens": "mean"}

# What `MMGLTextNeighborEncoder.identity` returns (all `None` in an identity where open_clip encodes the texts).
TEXT_IDENTITY_KEYS = (
    "text_encoder", "text_config_sha256", "text_weights_sha256", "text_pooling", "text_max_length", "text_embed_dim"
)


def _json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_model_json(name_or_path: str, filename: str, subfolder: str = "") -> dict | list | None:
    """A JSON file of a model folder or hub repo (from the local cache when offline), `None` when it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(name_or_path, filename, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except OSError:
        return None
    return json.loads(open(path, encoding="utf-8").read()) if path else None


def sentence_transformers_settings(name_or_path: str) -> dict:
    """What a sentence-transformers model records about how it encodes: ``max_length`` (`sentence_bert_config.json`
    ``max_seq_length``), ``pooling`` (its Pooling module's mode, `None` when it is one mmgl does not implement, with
    ``pooling_modes`` naming it), ``normalize`` (a Normalize module follows) and ``lowercase`` (``do_lower_case``).
    An empty dict for any other model."""
    config = _read_model_json(name_or_path, "sentence_bert_config.json")
    if config is None:
        return {}
    modules = _read_model_json(name_or_path, "modules.json") or []
    pooling_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling")), "1_Pooling")
    pooling = _read_model_json(name_or_path, "config.json", subfolder=pooling_dir) or {}
    modes = [k[len("pooling_mode_"):] for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    return {
        "max_length": config.get("max_seq_length"),
        "lowercase": bool(config.get("do_lower_case", False)),
        "pooling": SENTENCE_TRANSFORMERS_POOLINGS.get(modes[0]) if len(modes) == 1 else None,
        "pooling_modes": modes,
        "normalize": any(str(m.get("type", "")).endswith(".Normalize") for m in modules),
    }


def resolve_text_encoder_settings(name_or_path: str | None, pooling: str | None = None,
                                  max_length: int | None = None) -> tuple[str, int, list[str]]:
    """(pooling, max_length, warnings) of a text neighbour encoder: the values given, else a sentence-transformers
    model's own (so its vectors equal `SentenceTransformer.encode`), else mean pooling over 512 tokens."""
    notes = []
    settings = sentence_transformers_settings(name_or_path) if name_or_path else {}
    if pooling is None:
        pooling = settings.get("pooling") or "mean"
        if settings and settings.get("pooling") is None:
            notes.append(f"{name_or_path} pools with {settings.get('pooling_modes')}, which mmgl does not implement: "
                         "using mean pooling (give --text_neighbor_pooling to choose)")
    if max_length is None:
        max_length = settings.get("max_length") or DEFAULT_MAX_LENGTH
    if settings and not settings.get("normalize"):
        notes.append(f"{name_or_path} has no Normalize module: sentence-transformers returns unnormalised vectors, "
                     "mmgl L2-normalises them (same directions, unit length)")
    if settings.get("lowercase"):
        notes.append(f"{name_or_path} lower-cases its inputs (do_lower_case), mmgl does not: its tokenizer sees the "
                     "text as written")
    return pooling, int(max_length), notes


def pool_token_states(last_hidden_state, attention_mask, pooler_output, pooling: str) -> torch.Tensor:
    """One vector per text: ``"cls"`` the first token's state, ``"mean"`` the mean over real tokens
    (sentence-transformers' pooling), ``"pooler"`` the model's pooler output (BERT / RoBERTa: tanh(W h_cls))."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        weights = attention_mask.to(last_hidden_state.dtype).unsqueeze(-1)
        return (last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if pooling == "pooler":
        return pooler_output
    raise ValueError(f"text_neighbor_pooling must be one of {POOLINGS}, got {pooling!r}")


class MMGLTextNeighborEncoder(nn.Module):
    """Frozen `AutoModel` text encoder + pooling + L2 normalisation (like the CLIP embeddings, so every neighbour
    embedding has unit norm and a float16 cache stores it safely).

    Args:
        config (`MMGLConfig`): reads ``text_neighbor_encoder`` (name or path), ``text_neighbor_pooling``,
            ``text_neighbor_max_length`` and ``text_neighbor_encoder_config``.

    With ``text_neighbor_encoder_config`` (the Hugging Face config dict an MMGL checkpoint records) the architecture
    is built from it and the weights come from the MMGL checkpoint: loading needs neither the hub nor the original
    folder. Without it the pretrained weights are loaded with ``AutoModel.from_pretrained(text_neighbor_encoder)``.
    """

    def __init__(self, config):
        super().__init__()
        self.name = config.text_neighbor_encoder
        self.pooling = config.text_neighbor_pooling
        self.max_length = config.text_neighbor_max_length
        if config.text_neighbor_encoder_config is not None:
            self.model = AutoModel.from_config(AutoConfig.for_model(**config.text_neighbor_encoder_config))
        else:
            # A loaded `PreTrainedModel` is marked initialised: the language model's `post_init` leaves its weights
            # alone (tested: they stay the pretrained ones).
            self.model = AutoModel.from_pretrained(self.name)
        model_config = self.model.config
        positions = getattr(model_config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise ValueError(
                f"text_neighbor_max_length={self.max_length} exceeds the {positions} positions of text neighbour "
                f"encoder {self.name!r}; lower text_neighbor_max_length"
            )
        if model_config.pad_token_id is None:
            raise ValueError(
                f"text neighbour encoder {self.name!r} has no pad_token_id in its config: padding cannot be told "
                "apart from text"
            )
        if self.pooling == "pooler" and getattr(self.model, "pooler", None) is None:
            raise ValueError(
                f"text_neighbor_pooling='pooler' needs a model with a pooler (BERT, RoBERTa); {self.name!r} "
                f"({type(self.model).__name__}) has none: use 'cls' or 'mean'"
            )
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        # Frozen: dropout stays off while the LM trains.
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def pad_token_id(self) -> int:
        return int(self.model.config.pad_token_id)

    def config_dict(self) -> dict:
        """The Hugging Face config as a plain dict (what `MMGLConfig.text_neighbor_encoder_config` records)."""
        return self.model.config.to_dict()

    def identity(self) -> dict:
        """What decides the vectors: architecture, weights, pooling and max length (hashes), and the width."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        # Where it was loaded from and by which transformers version do not change the vectors.
        unrelated = ("_name_or_path", "transformers_version")
        architecture = {k: v for k, v in self.config_dict().items() if k not in unrelated}
        return {
            "text_encoder": self.name,
            "text_config_sha256": _json_sha256(architecture),
            "text_weights_sha256": digest.hexdigest(),
            "text_pooling": self.pooling,
            "text_max_length": self.max_length,
            "text_embed_dim": self.hidden_size,
        }

    @torch.no_grad()
    def forward(self, input_ids: torch.LongTensor, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(..., L)` token ids (`text_neighbor_ids`: padded with the pad id) -> `(..., hidden_size)` unit vectors.

        Rows of padding only, and rows where ``slot_mask`` `(...)` is 0 (the collator's empty slots), give zero
        vectors without running the model. Pad columns
        past every row's last real token are dropped first (they are masked anyway): a batch of short texts costs
        its longest text, not ``max_length`` tokens.
        """
        shape = input_ids.shape
        device = next(self.model.parameters()).device
        ids = input_ids.reshape(-1, shape[-1]).to(device)
        mask = ids != self.pad_token_id
        real_rows = mask.any(-1)
        if slot_mask is not None:
            real_rows &= slot_mask.reshape(-1).to(device).bool()
        out = torch.zeros(ids.shape[0], self.hidden_size, device=device, dtype=self.model.dtype)
        if real_rows.any():
            ids, mask = ids[real_rows], mask[real_rows]
            width = int(mask.any(0).nonzero().max()) + 1
            ids, mask = ids[:, :width], mask[:, :width]
            outputs = self.model(input_ids=ids, attention_mask=mask.long())
            pooled = pool_token_states(
                outputs.last_hidden_state, mask, getattr(outputs, "pooler_output", None), self.pooling
            )
            out[real_rows] = nn.functional.normalize(pooled, dim=-1).to(out.dtype)
        return out.view(*shape[:-1], -1)


__all__ = ["DEFAULT_MAX_LENGTH", "MMGLTextNeighborEncoder", "POOLINGS", "TEXT_IDENTITY_KEYS", "pool_token_states",
           "resolve_text_encoder_settings", "sentence_transformers_settings"]
