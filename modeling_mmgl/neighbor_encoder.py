"""A frozen open_clip encoder inside the model, so raw neighbour texts and images work end to end."""

import open_clip
import torch
from torch import nn

from .configuration_mmgl import MMGLConfig


class MMGLNeighborEncoder(nn.Module):
    """Frozen CLIP text and image towers. Always in eval mode and without gradients, whatever the parent does.

    Embeddings are L2-normalised, the same as the embedding cache stores, so cached and raw inputs agree.
    """

    def __init__(self, config: MMGLConfig):
        super().__init__()
        if config.neighbor_encoder_config is not None:
            self.model = open_clip.CLIP(**config.neighbor_encoder_config)
        else:
            # Weights come from the MMGL checkpoint or from `load_pretrained`, never downloaded at construction.
            self.model = open_clip.create_model(config.neighbor_encoder_name, pretrained=None)
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        # The encoder is frozen: dropout and norm statistics stay in inference mode while the LM trains.
        return super().train(False)

    def load_pretrained(self, name: str, pretrained: str):
        """Loads open_clip weights (a pretrained tag such as `"openai"`, or a local checkpoint path)."""
        source = open_clip.create_model(name, pretrained=pretrained)
        self.model.load_state_dict(source.state_dict())

    @torch.no_grad()
    def encode_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """`(B, N, context_length)` open_clip token ids -> `(B, N, D)` normalised embeddings."""
        batch_size, num_neighbors, length = input_ids.shape
        embeds = self.model.encode_text(input_ids.reshape(-1, length), normalize=True)
        return embeds.view(batch_size, num_neighbors, -1)

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, N, 3, H, W)` CLIP-normalised pixels -> `(B, N, D)` normalised embeddings."""
        batch_size, num_neighbors = pixel_values.shape[:2]
        dtype = next(self.model.parameters()).dtype
        embeds = self.model.encode_image(pixel_values.flatten(0, 1).to(dtype), normalize=True)
        return embeds.view(batch_size, num_neighbors, -1)


__all__ = ["MMGLNeighborEncoder"]
