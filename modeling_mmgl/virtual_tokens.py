"""Trained virtual tokens of prefix / prompt tuning, carried by the model itself.

peft trains them beside a frozen model (`PrefixTuningConfig`, `PromptTuningConfig`); an exported MMGL model holds
them as an ordinary module, so `AutoModel`, `pipeline` and `run_summarization.py --model_name_or_path` apply them
with no peft step. The computation is peft 0.21's own (`PeftModel.get_prompt`, `PeftModelForCausalLM.forward` and
`prepare_inputs_for_generation`), so the model gives the logits and the generations the peft model gave:

- `"prompt"` (prompt tuning): `num_virtual_tokens` embeddings are put in front of the input embeddings when the
  cache is empty; the attention mask gets as many ones in front and the labels as many -100; position ids are
  dropped (OPT computes them from the longer mask).
- `"prefix"` (prefix tuning, without peft's optional projection): every decoder layer's self-attention starts from
  `num_virtual_tokens` trained keys and values, put in an empty cache; the attention mask gets as many ones in front
  and given position ids are shifted by `num_virtual_tokens`.
"""

import torch
from torch import nn
from transformers import DynamicCache

from .configuration_mmgl import MMGLConfig


class MMGLVirtualTokens(nn.Module):
    """The virtual tokens of `config.virtual_tokens` (`"prefix"` or `"prompt"`).

    `embedding.weight` has peft's layout: `(num_virtual_tokens, word_embed_proj_dim)` for prompt tuning (peft's
    `PromptEmbedding.embedding`), `(num_virtual_tokens, num_hidden_layers * 2 * hidden_size)` for prefix tuning (peft's
    `PrefixEncoder.embedding`: per layer the keys, then the values, heads side by side).
    """

    def __init__(self, config: MMGLConfig):
        super().__init__()
        self.kind = config.virtual_tokens
        self.num_virtual_tokens = config.num_virtual_tokens
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        width = config.word_embed_proj_dim if self.kind == "prompt" else self.num_layers * 2 * self.hidden_size
        self.embedding = nn.Embedding(self.num_virtual_tokens, width)

    def prompt_embeddings(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """`(B, num_virtual_tokens, word_embed_proj_dim)`: what prompt tuning puts in front of the input embeddings."""
        return self.embedding.weight.unsqueeze(0).expand(batch_size, -1, -1).to(dtype)

    def prefix_cache(self, batch_size: int, dtype: torch.dtype) -> DynamicCache:
        """A cache holding, for every decoder layer, the trained keys and values `(B, heads, V, head_dim)`."""
        states = self.embedding.weight.unsqueeze(0).expand(batch_size, -1, -1).to(dtype)
        states = states.reshape(batch_size, self.num_virtual_tokens, self.num_layers * 2, self.num_heads,
                                self.hidden_size // self.num_heads)
        # peft: [B, V, layers * 2, heads, head_dim] -> per layer (keys, values), each [B, heads, V, head_dim].
        per_layer = states.permute([2, 0, 3, 1, 4]).split(2)
        return DynamicCache(per_layer)

    def extend_attention_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Ones for the virtual tokens in front of a `(B, L)` mask (float like peft's: the mask only selects)."""
        if attention_mask is None:
            return None
        ones = torch.ones(attention_mask.shape[0], self.num_virtual_tokens).to(attention_mask.device)
        return torch.cat((ones, attention_mask), dim=1)

    def extend_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """-100 for the virtual tokens in front of `(B, L)` labels (prompt tuning: they take no loss)."""
        if labels is None:
            return None
        ignored = torch.full((labels.shape[0], self.num_virtual_tokens), -100).to(labels.device)
        return torch.cat((ignored, labels), dim=1)


__all__ = ["MMGLVirtualTokens"]
