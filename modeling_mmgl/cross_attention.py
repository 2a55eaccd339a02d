"""Flamingo/IDEFICS-style gated cross-attention from the LM's hidden states to neighbour token vectors."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.opt.modeling_opt import OPTDecoderLayer, eager_attention_forward

from .configuration_mmgl import MMGLConfig


@dataclass
class MMGLNeighborKeyValues:
    """Cross-attention state computed once per sequence from the neighbours and reused at every decoding step.

    Attributes:
        key_values (`dict[int, tuple[torch.Tensor, torch.Tensor]]`): per decoder layer index with a block, keys and
            values of shape `(B, heads, M, head_dim)`.
        attention_mask (`torch.Tensor` of shape `(B, 1, 1, M)`): additive mask hiding padding neighbour tokens.
        has_neighbors (`torch.Tensor` of shape `(B, 1, 1)`): 1 for rows with at least one real neighbour.
    """

    key_values: dict
    attention_mask: torch.Tensor
    has_neighbors: torch.Tensor


class MMGLCrossAttention(nn.Module):
    """Multi-head attention whose keys and values come from the neighbour tokens (computed once per sequence)."""

    def __init__(self, config: MMGLConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False  # every text token may read every neighbour
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.enable_bias)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.enable_bias)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.enable_bias)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.enable_bias)

    def key_values(self, neighbor_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, M, hidden)` neighbour tokens -> keys and values, each `(B, heads, M, head_dim)`."""
        batch_size, length, _ = neighbor_states.shape
        keys = self.k_proj(neighbor_states).view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.v_proj(neighbor_states).view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)
        return keys, values

    def forward(self, hidden_states, keys, values, attention_mask):
        """`hidden_states` `(B, T, hidden)`; `attention_mask` additive, `(B, 1, 1, M)`."""
        batch_size, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, _ = attention_interface(
            self,
            query,
            keys,
            values,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout,
            scaling=self.scaling,
        )
        return self.out_proj(output.reshape(batch_size, length, -1).contiguous())


class MMGLGatedCrossAttentionBlock(nn.Module):
    """Cross-attention then a feed-forward layer, each behind a tanh gate, by default initialised to zero (so the
    block is the identity at initialisation and the model starts as OPT; `config.alpha_initializer` "ones" / "normal"
    open them, set by `MMGLPreTrainedModel._init_weights`). Gate names follow IDEFICS. With
    `config.cross_attention_gating=False` there are no gates: both residuals are added directly (the paper's
    ungated CA-E), so the model differs from OPT from the start."""

    def __init__(self, config: MMGLConfig):
        super().__init__()
        self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size)
        self.cross_attn = MMGLCrossAttention(config)
        self.gated = config.cross_attention_gating
        # Ungated: no gate parameters at all, so a checkpoint says which variant it is.
        self.alpha_cross_attn = nn.Parameter(torch.zeros(1)) if self.gated else None
        self.dense_layer_norm = nn.LayerNorm(config.hidden_size)
        self.fc1 = nn.Linear(config.hidden_size, config.ffn_dim, bias=config.enable_bias)
        self.fc2 = nn.Linear(config.ffn_dim, config.hidden_size, bias=config.enable_bias)
        self.activation_fn = ACT2FN[config.activation_function]
        self.alpha_dense = nn.Parameter(torch.zeros(1)) if self.gated else None

    def forward(self, hidden_states, keys, values, attention_mask, has_neighbors):
        """`has_neighbors` `(B, 1, 1)`: rows without any real neighbour get no cross-attention update at all."""
        attended = self.cross_attn(self.cross_attn_layer_norm(hidden_states), keys, values, attention_mask)
        if self.gated:
            attended = self.alpha_cross_attn.tanh() * attended
        hidden_states = hidden_states + has_neighbors * attended
        dense = self.fc2(self.activation_fn(self.fc1(self.dense_layer_norm(hidden_states))))
        if self.gated:
            dense = self.alpha_dense.tanh() * dense
        return hidden_states + has_neighbors * dense


class MMGLDecoderLayer(OPTDecoderLayer):
    """An OPT decoder layer with an optional gated cross-attention block before it. OPT's weight names are kept;
    the block adds `gated_cross_attention.*`. Neighbour keys/values arrive through the decoder's `**kwargs`."""

    def __init__(self, config: MMGLConfig, layer_idx: int):
        super().__init__(config, layer_idx=layer_idx)
        self.layer_idx = layer_idx
        self.gated_cross_attention = (
            MMGLGatedCrossAttentionBlock(config) if config.has_cross_attention(layer_idx) else None
        )

    def forward(self, hidden_states, *args, neighbor_key_values: MMGLNeighborKeyValues | None = None, **kwargs):
        if self.gated_cross_attention is not None and neighbor_key_values is not None:
            keys, values = neighbor_key_values.key_values[self.layer_idx]
            hidden_states = self.gated_cross_attention(
                hidden_states, keys, values, neighbor_key_values.attention_mask, neighbor_key_values.has_neighbors
            )
        return super().forward(hidden_states, *args, **kwargs)


__all__ = ["MMGLCrossAttention", "MMGLDecoderLayer", "MMGLGatedCrossAttentionBlock", "MMGLNeighborKeyValues"]
