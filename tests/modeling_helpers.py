"""Tiny MMGL models and neighbour batches for tests (CPU, milliseconds)."""

import torch

from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from processing.laplacian_encoding import _dense_eigenvectors, slot_laplacian_eigenvectors

VOCAB = 100
NEIGHBOR_TOKEN = 99
TEXT_DIM, IMAGE_DIM = 16, 8
TINY_OPT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=4,
    ffn_dim=64,
    num_attention_heads=4,
    max_position_embeddings=128,
    dropout=0.0,
    pad_token_id=1,
    bos_token_id=2,
    eos_token_id=2,
)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_config(mode="self_attention", position_encoding="none", **overrides) -> MMGLConfig:
    kwargs = dict(
        TINY_OPT,
        neighbor_mode=mode,
        neighbor_token_id=NEIGHBOR_TOKEN,
        text_neighbor_embed_dim=TEXT_DIM,
        image_neighbor_embed_dim=IMAGE_DIM,
        text_neighbor_num_tokens=2,
        image_neighbor_num_tokens=3,
        max_text_neighbors=4,
        max_image_neighbors=3,
        position_encoding=position_encoding,
        cross_attention_interval=2,
    )
    kwargs.update(overrides)
    return MMGLConfig(**kwargs)


def tiny_model(mode="self_attention", position_encoding="none", seed=0, open_gates=False, **overrides):
    torch.manual_seed(seed)
    model = MMGLForConditionalGeneration(tiny_config(mode, position_encoding, **overrides)).eval()
    if open_gates:
        # The default is the real starting state (gates closed: cross-attention is the identity). A test that
        # needs neighbours to matter without training opens them, and says so at its call.
        for layer in model.model.decoder.layers:
            block = getattr(layer, "gated_cross_attention", None)
            if block is not None and block.gated:
                block.alpha_cross_attn.data.fill_(1.0)
                block.alpha_dense.data.fill_(1.0)
    return model


def neighbor_batch(config: MMGLConfig, seed=0, prefix_len=3, suffix_len=6, text_neighbors=True):
    """Two rows: left-padded prompt, placeholders (self-attention mode) after a prefix, then text.

    Row 0 has text neighbours 0 and 1 and image 0; row 1 has text neighbour 0 and images 0 and 1. Slot 2 of the
    text neighbours is padding in both rows. `text_neighbors=False`: images only (SA-TE: texts are LM tokens).
    """
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.tensor([[1, 1, 0], [1, 0, 0]]) if text_neighbors else torch.zeros(2, 0, dtype=torch.long)
    image_mask = torch.tensor([[1, 0], [1, 1]])
    num_placeholders = (
        config.text_neighbor_num_tokens * text_mask.sum(1) + config.image_neighbor_num_tokens * image_mask.sum(1)
    )
    if config.neighbor_bridge != "linear":  # a bridge's latents, in every row with a real neighbour
        num_placeholders = config.bridge_num_latents * (text_mask.sum(1) + image_mask.sum(1) > 0).long()
    if config.neighbor_mode != "self_attention":
        num_placeholders = torch.zeros_like(num_placeholders)
    lengths = prefix_len + num_placeholders + suffix_len
    width = int(lengths.max())
    input_ids = torch.full((2, width), TINY_OPT["pad_token_id"])
    attention_mask = torch.zeros(2, width, dtype=torch.long)
    for row in range(2):
        tokens = torch.cat(
            [
                torch.randint(3, 90, (prefix_len,), generator=generator),
                torch.full((int(num_placeholders[row]),), NEIGHBOR_TOKEN),
                torch.randint(3, 90, (suffix_len,), generator=generator),
            ]
        )
        input_ids[row, width - len(tokens) :] = tokens  # left padding, as for generation
        attention_mask[row, width - len(tokens) :] = 1
    adjacency = torch.zeros(2, 5, 5)
    for a, b in [(0, 1), (0, 3), (1, 3), (3, 4)]:
        adjacency[:, a, b] = adjacency[:, b, a] = 1
    if not text_neighbors:
        adjacency = adjacency[:, 3:, 3:]
    adjacency = adjacency * torch.cat([text_mask, image_mask], 1)[:, :, None] * torch.cat([text_mask, image_mask], 1)[:, None, :]
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "text_neighbor_embeds": torch.randn(2, text_mask.shape[1], config.text_neighbor_embed_dim, generator=generator),
        "text_neighbor_mask": text_mask,
        "image_neighbor_embeds": torch.randn(2, 2, config.image_neighbor_embed_dim, generator=generator),
        "image_neighbor_mask": image_mask,
        "neighbor_adjacency": adjacency,
    }
    if not text_neighbors:
        del batch["text_neighbor_embeds"], batch["text_neighbor_mask"]
    if config.position_encoding == "laplacian":  # as the processor gives them: once per example, real slots only
        slot_mask = torch.cat([text_mask, image_mask], 1)
        batch["neighbor_laplacian_eigenvectors"] = torch.stack(
            [slot_laplacian_eigenvectors(adjacency[row], slot_mask[row].tolist(), config.lpe_k) for row in range(2)]
        )
    return batch


def labels_for(batch):
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[labels == NEIGHBOR_TOKEN] = -100
    return labels


def laplacian_eigenvectors(edge_index: torch.Tensor, num_nodes: int, k: int) -> torch.Tensor:
    """The LPE of a graph given by `edge_index` `(2, num_edges)` (treated as undirected), `(num_nodes, k)`: the
    processor's decomposition (`processing.laplacian_encoding`) on the edge-list form the tests compare with PyG."""
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adjacency[edge_index[0].long().cpu(), edge_index[1].long().cpu()] = 1.0
    return _dense_eigenvectors(adjacency, k)
