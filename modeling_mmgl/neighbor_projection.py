"""Maps frozen-encoder neighbour embeddings to LM token vectors, one mapper per modality."""

import torch
from torch import nn

from .configuration_mmgl import MMGLConfig

TEXT, IMAGE = 0, 1


class MMGLNeighborProjector(nn.Module):
    """Linear map from one neighbour embedding to `num_tokens` LM vectors, plus a learned modality embedding.

    Args:
        input_dim (`int`): width of the frozen encoder's embedding.
        num_tokens (`int`): LM vectors per neighbour (paper: 4).
        output_dim (`int`): LM width the vectors enter at.
    """

    def __init__(self, input_dim: int, num_tokens: int, output_dim: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.output_dim = output_dim
        self.linear = nn.Linear(input_dim, num_tokens * output_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """`(B, N, input_dim)` -> `(B, N, num_tokens, output_dim)`."""
        batch_size, num_neighbors, _ = embeds.shape
        return self.linear(embeds).view(batch_size, num_neighbors, self.num_tokens, self.output_dim)


class MMGLNeighborProjection(nn.Module):
    """Both modality mappers and the modality embedding (text = 0, image = 1)."""

    def __init__(self, config: MMGLConfig, output_dim: int):
        super().__init__()
        self.text = MMGLNeighborProjector(config.text_neighbor_embed_dim, config.text_neighbor_num_tokens, output_dim)
        self.image = MMGLNeighborProjector(
            config.image_neighbor_embed_dim, config.image_neighbor_num_tokens, output_dim
        )
        self.modality_embeddings = nn.Embedding(2, output_dim)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.text.linear.weight.dtype
        text_tokens = self.text(text_embeds.to(dtype)) + self.modality_embeddings.weight[TEXT]
        image_tokens = self.image(image_embeds.to(dtype)) + self.modality_embeddings.weight[IMAGE]
        return text_tokens, image_tokens


__all__ = ["MMGLNeighborProjection", "MMGLNeighborProjector"]
