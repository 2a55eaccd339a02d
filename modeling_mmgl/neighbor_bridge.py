"""Neighbour bridges: compress any number of neighbour token vectors into a fixed number of LM token vectors.

`MMGLConfig.neighbor_bridge` picks one of the seeds' bridges, both taken from transformers as they are:

* `"perceiver"`: Flamingo's Perceiver Resampler (`IdeficsPerceiverResampler`): learned latents attend to the
  neighbour tokens concatenated with themselves, block after block.
* `"qformer"`: BLIP-2's Q-Former (`Blip2QFormerModel`): learned query tokens self-attend and cross-attend to the
  neighbour tokens in every layer.

Both read the neighbour tokens after their modality and graph position encodings were added (the model's
`embed_neighbors`), honour the neighbour mask exactly (a padding slot's values never reach the output), and end with
a linear map into the LM (as BLIP-2's `language_projection`). This file is only the glue: sizes from `MMGLConfig`,
the mask, the projection.
"""

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, IdeficsConfig
from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

from .configuration_mmgl import MMGLConfig


class MMGLNeighborBridge(nn.Module):
    """The Perceiver Resampler or the Q-Former over an example's neighbour tokens, then a projection to the LM.

    Args:
        config (`MMGLConfig`): `neighbor_bridge`, `bridge_num_latents`, `bridge_num_layers`; heads, dropout and
            initialisation range come from the LM's settings.
        width (`int`): width of the neighbour tokens, which is also the width of the LM tokens they become (the
            token-embedding width with self-attention, the hidden size with cross-attention).
    """

    def __init__(self, config: MMGLConfig, width: int):
        super().__init__()
        self.kind = config.neighbor_bridge
        self.num_latents = config.bridge_num_latents
        num_heads = config.num_attention_heads
        if width % num_heads:
            raise ValueError(
                f"neighbor_bridge={self.kind!r} splits the {width}-wide neighbour tokens over num_attention_heads="
                f"{num_heads} heads; the width must be a multiple of it."
            )
        if self.kind == "perceiver":
            # IDEFICS sizes the resampler's MLP from `vision_config.embed_dim`: the neighbour width here.
            idefics_config = IdeficsConfig(
                vision_config={"embed_dim": width}, perceiver_config={"qk_layer_norms_perceiver": False}
            )
            self.resampler = IdeficsPerceiverResampler(
                idefics_config, embed_dim=width, depth=config.bridge_num_layers, n_heads=num_heads,
                head_dim=width // num_heads, n_latents=config.bridge_num_latents,
            )
        else:
            qformer_config = Blip2QFormerConfig(
                hidden_size=width, num_hidden_layers=config.bridge_num_layers, num_attention_heads=num_heads,
                intermediate_size=4 * width, hidden_dropout_prob=config.dropout,
                attention_probs_dropout_prob=config.attention_dropout, initializer_range=config.init_std,
                cross_attention_frequency=1, encoder_hidden_size=width,
            )
            self.query_tokens = nn.Parameter(torch.zeros(1, config.bridge_num_latents, width))
            self.qformer = Blip2QFormerModel(qformer_config)
        self.output_projection = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`tokens` `(B, M, width)` and `token_mask` `(B, M)` (1 for a real neighbour's token) -> `latents`
        `(B, bridge_num_latents, width)` and `latent_mask` `(B, bridge_num_latents)`: 1 in every row with at least
        one real neighbour, 0 in the others (they get no placeholders and no cross-attention update)."""
        batch_size = tokens.shape[0]
        real = token_mask.bool()
        latent_mask = real.any(dim=1, keepdim=True).expand(batch_size, self.num_latents).to(token_mask.dtype)
        if tokens.shape[1] == 0:  # no neighbour slot at all: nothing to read, as with the linear projectors
            return tokens.new_zeros(batch_size, 0, tokens.shape[-1]), token_mask[:, :0]
        if self.kind == "perceiver":
            latents = self._resample(tokens, real)
        else:
            # A row without any real neighbour would attend to nothing (NaN): let it read zero vectors instead; its
            # latents are masked out anyway.
            tokens = tokens * real[..., None].to(tokens.dtype)
            encoder_mask = real | ~real.any(dim=1, keepdim=True)
            queries = self.query_tokens.expand(batch_size, -1, -1).to(tokens.dtype)
            latents = self.qformer(
                query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=encoder_mask.long()
            ).last_hidden_state.to(tokens.dtype)
        return self.output_projection(latents), latent_mask

    def _resample(self, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The Perceiver over each row's real tokens only: IDEFICS' resampler takes no mask, so rows are grouped by
        their number of real tokens and each group's real tokens are resampled together (exact, no padding read)."""
        counts = real.sum(dim=1)
        latents = tokens.new_empty(tokens.shape[0], self.num_latents, tokens.shape[-1])
        for count in counts.unique().tolist():
            rows = (counts == count).nonzero(as_tuple=True)[0]
            context = tokens[rows][real[rows]].view(len(rows), count, tokens.shape[-1])
            latents[rows] = self.resampler(context).to(tokens.dtype)
        return latents


__all__ = ["MMGLNeighborBridge"]
