"""The frozen encoders of neighbour texts and images: the ONE wrapper that the model carries (so raw
neighbour texts and images work end to end) and that the embedding-cache builder runs (so a cached
embedding equals the in-model one). open_clip encodes images, and texts unless `MMGLConfig.text_neighbor_encoder`
names a Hugging Face text model (`MMGLTextNeighborEncoder`)."""

import functools
import hashlib
import json

import open_clip
import torch
from torch import nn

from .configuration_mmgl import MMGLConfig
from .text_neighbor_encoder import TEXT_IDENTITY_KEYS, MMGLTextNeighborEncoder


def _json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def open_clip_config(name: str | None, model_config: dict | None = None) -> dict:
    """The open_clip model config of a named model, or ``model_config`` itself (custom / tiny encoders)."""
    if model_config is not None:
        missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_config]
        if missing:
            raise ValueError(f"open_clip model config is missing {missing}; expected embed_dim, vision_cfg, text_cfg")
        return dict(model_config)
    config = open_clip.get_model_config(name) if name else None
    if config is None:
        raise ValueError(
            f"unknown open_clip model {name!r}: expected a name from open_clip.list_models(), or a full open_clip "
            "model config for a custom encoder"
        )
    return config


class MMGLNeighborEncoder(nn.Module):
    """Frozen CLIP text and image towers, and the Hugging Face text encoder when the config names one (it then
    encodes the text neighbours). Always in eval mode and without gradients, whatever the parent does.

    Embeddings are L2-normalised, the same as the embedding cache stores, so cached and raw inputs agree.

    Args:
        config (`MMGLConfig`): reads ``neighbor_encoder_name`` and ``neighbor_encoder_config``, and the
            ``text_neighbor_*`` settings.

    A freshly built encoder has open_clip's random initialisation drawn with seed 0 whatever the caller's seed:
    every run and every process builds the same "random init" encoder, so an embedding cache filled by one run is
    reusable by the next. Pretrained weights come from `load_pretrained` or from an MMGL checkpoint.
    """

    def __init__(self, config: MMGLConfig):
        super().__init__()
        self.name = config.neighbor_encoder_name
        self.model_config = open_clip_config(config.neighbor_encoder_name, config.neighbor_encoder_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if config.neighbor_encoder_config is not None:
                self.model = open_clip.CLIP(**self.model_config)
            else:  # by name: open_clip picks the model class (custom text towers, quick GELU, ...)
                self.model = open_clip.create_model(config.neighbor_encoder_name, pretrained=None)
        self.model.requires_grad_(False)
        self.model.eval()
        # Keep open_clip's own (seeded) initialisation: the language model's `_init_weights` must not redraw it.
        for param in self.model.parameters():
            param._is_hf_initialized = True
        self.text_model = MMGLTextNeighborEncoder(config) if config.text_neighbor_encoder is not None else None

    @classmethod
    def from_settings(
        cls, name: str | None, pretrained: str | None = None, model_config: dict | None = None, device="cpu",
        text_encoder: str | None = None, text_pooling: str = "mean", text_max_length: int = 512,
    ) -> "MMGLNeighborEncoder":
        """An encoder outside a model (the cache builder's): ``name`` and optional custom ``model_config`` as in
        `MMGLConfig`, ``pretrained`` an open_clip tag (``"openai"``) or a local checkpoint; `None` keeps the
        seeded random initialisation. ``text_encoder`` / ``text_pooling`` / ``text_max_length``: the
        ``text_neighbor_*`` settings of `MMGLConfig` (a Hugging Face text model, loaded pretrained)."""
        config = MMGLConfig(
            neighbor_encoder_name=name, neighbor_encoder_config=model_config, text_neighbor_encoder=text_encoder,
            text_neighbor_pooling=text_pooling, text_neighbor_max_length=text_max_length,
        )
        encoder = cls(config)
        if pretrained is not None:
            encoder.load_pretrained(pretrained)
        encoder.pretrained = pretrained
        return encoder.to(device)

    def train(self, mode: bool = True):
        # The encoder is frozen: dropout and norm statistics stay in inference mode while the LM trains.
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return int(self.model_config["embed_dim"])

    @property
    def text_embed_dim(self) -> int:
        """Width of the text-neighbour embeddings: the Hugging Face text model's hidden size, else ``embed_dim``."""
        return self.text_model.hidden_size if self.text_model is not None else self.embed_dim

    @property
    def context_length(self) -> int:
        return int(self.model_config["text_cfg"].get("context_length", 77))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_pretrained(self, pretrained: str):
        """Loads open_clip weights (a pretrained tag such as `"openai"`, or a local checkpoint path)."""
        source = open_clip.create_model(self.name, pretrained=pretrained)
        self.model.load_state_dict(source.state_dict())

    @functools.cached_property
    def tokenizer(self):
        """The open_clip tokenizer of this encoder (its BPE vocabulary ships with open_clip: works offline); the
        processor builds the same one for raw text neighbours."""
        return open_clip.get_tokenizer(self.name or "ViT-B-32", context_length=self.context_length)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], tokenize=None) -> torch.Tensor:
        """`(n, D)` float32 CPU embeddings of raw texts, tokenised with open_clip's tokenizer (or ``tokenize(texts)``:
        the embedding-cache builder passes the processor's `clip_text_ids`, the same ids for less CPU). A Hugging Face
        text encoder's texts are tokenised on the processing side (`text_neighbor_ids`)."""
        if self.text_model is not None:
            raise TypeError(
                f"text neighbours are encoded by {self.text_model.name!r}: tokenise them with "
                "processing.text_neighbor_tokens.text_neighbor_ids and call encode_text"
            )
        ids = tokenize(list(texts)) if tokenize is not None else self.tokenizer(list(texts))
        return self.encode_text(ids).float().cpu()

    def identity(self, pretrained: str | None = None) -> dict:
        """What identifies the encoder exactly (an embedding cache refuses embeddings of another): the config and
        weight hashes, and those of the Hugging Face text encoder with its pooling and max length (all `None` when
        open_clip encodes the texts); the names and pretrained tag are recorded for people."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return {
            "model_name": self.name,
            "pretrained": None if pretrained is None else str(pretrained),
            "config_sha256": _json_sha256(self.model_config),
            "weights_sha256": digest.hexdigest(),
            "embed_dim": self.embed_dim,
            **(self.text_model.identity() if self.text_model is not None else dict.fromkeys(TEXT_IDENTITY_KEYS)),
        }

    @torch.no_grad()
    def encode_text(self, input_ids: torch.LongTensor, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(..., context_length)` open_clip token ids (or the Hugging Face text encoder's `(..., max_length)`) ->
        `(..., D)` normalised embeddings. ``slot_mask`` `(...)`: the Hugging Face encoder skips slots where it is 0
        (zero vectors; the collator fills padding slots with id 0, a real token for RoBERTa)."""
        if self.text_model is not None:
            return self.text_model(input_ids, slot_mask)
        shape = input_ids.shape
        embeds = self.model.encode_text(input_ids.reshape(-1, shape[-1]).to(self.device), normalize=True)
        return embeds.view(*shape[:-1], -1)

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(..., 3, H, W)` CLIP-normalised pixels -> `(..., D)` normalised embeddings."""
        shape = pixel_values.shape
        dtype = next(self.model.parameters()).dtype
        embeds = self.model.encode_image(pixel_values.reshape(-1, *shape[-3:]).to(self.device, dtype), normalize=True)
        return embeds.view(*shape[:-3], -1)


__all__ = ["MMGLNeighborEncoder", "open_clip_config"]
