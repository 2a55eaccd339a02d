"""MMGL for conditional generation: OPT that reads a node's multimodal neighbours.

Neighbours (frozen-encoder embeddings of texts and images) are mapped to LM token vectors, given a graph position
encoding, and reach the LM either in its input sequence at `<neighbor>` placeholders (self-attention, LLaVA-style)
or through gated cross-attention blocks (Flamingo/IDEFICS-style). With `neighbor_mode="none"` this is
`OPTForCausalLM`, weight for weight.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.opt.modeling_opt import OPTForCausalLM, OPTPreTrainedModel
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

from .configuration_mmgl import MMGLConfig
from .cross_attention import MMGLDecoderLayer, MMGLGatedCrossAttentionBlock, MMGLNeighborKeyValues
from .graph_position_encoding import build_position_encoding, draw_undrawn_gnn_layer
from .neighbor_bridge import MMGLNeighborBridge
from .neighbor_encoder import MMGLNeighborEncoder
from .neighbor_projection import MMGLNeighborProjection
from .virtual_tokens import MMGLVirtualTokens

# Inputs that describe the neighbours; generation passes them at prefill only (see prepare_inputs_for_generation).
NEIGHBOR_INPUT_NAMES = (
    "text_neighbor_embeds",
    "text_neighbor_input_ids",
    "text_neighbor_mask",
    "image_neighbor_embeds",
    "image_neighbor_pixel_values",
    "image_neighbor_mask",
    "neighbor_adjacency",
    "neighbor_laplacian_eigenvectors",
    "neighbor_target_distances",
)


@dataclass
class MMGLCausalLMOutputWithPast(CausalLMOutputWithPast):
    """[`CausalLMOutputWithPast`] plus `neighbor_key_values` ([`MMGLNeighborKeyValues`], cross-attention mode with
    caching): the neighbour keys/values, computed once and fed back at every decoding step."""

    neighbor_key_values: MMGLNeighborKeyValues | None = None


class MMGLPreTrainedModel(OPTPreTrainedModel):
    config_class = MMGLConfig
    config: MMGLConfig
    _no_split_modules = ["OPTDecoderLayer", "MMGLDecoderLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        # Gates start closed by default (IDEFICS' `alpha_initializer`), so a freshly initialised cross-attention model
        # computes exactly what OPT computes; "ones" / "normal" open them from the start.
        if isinstance(module, MMGLGatedCrossAttentionBlock) and module.gated:
            for gate in (module.alpha_cross_attn, module.alpha_dense):
                if self.config.alpha_initializer == "ones":
                    init.ones_(gate)
                elif self.config.alpha_initializer == "normal":
                    init.normal_(gate, mean=0.0, std=self.config.alphas_initializer_range)
                else:
                    init.zeros_(gate)
        # The bridges' learned latents / queries, as IDEFICS and BLIP-2 draw them (missing from an OPT checkpoint).
        if isinstance(module, IdeficsPerceiverResampler):
            init.normal_(module.latents)
        if isinstance(module, MMGLNeighborBridge) and module.kind == "qformer":
            init.normal_(module.query_tokens, std=self.config.init_std)
        draw_undrawn_gnn_layer(module)  # torch_geometric layers an OPT checkpoint lacks
        # open_clip's causal text mask is a non-persistent buffer: never in a checkpoint, so rebuild it on load.
        if getattr(module, "attn_mask", None) is not None and "attn_mask" in module._non_persistent_buffers_set:
            size = module.attn_mask.shape[-1]
            init.copy_(module.attn_mask, torch.full((size, size), float("-inf")).triu_(1))


class MMGLForConditionalGeneration(MMGLPreTrainedModel, OPTForCausalLM):
    """OPT causal LM conditioned on multimodal neighbours. See [`MMGLConfig`] for the switches and
    `docs/INTERFACE.md` for the neighbour inputs."""

    def __init__(self, config: MMGLConfig):
        super().__init__(config)
        if config.neighbor_mode == "cross_attention":
            self.model.decoder.layers = nn.ModuleList(
                MMGLDecoderLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)
            )
            # transformers initialises each sub-`PreTrainedModel` (OPTModel, OPTDecoder) with its own
            # `_init_weights`, which knows nothing of the gates; route them through ours so gates missing from a
            # checkpoint start closed instead of uninitialised.
            self.model._init_weights = self._init_weights
            self.model.decoder._init_weights = self._init_weights
        # Self-attention neighbours enter at the token-embedding width; cross-attention reads hidden states.
        width = config.word_embed_proj_dim if config.neighbor_mode == "self_attention" else config.hidden_size
        self.neighbor_projection = MMGLNeighborProjection(config, width) if config.neighbor_mode != "none" else None
        self.position_encoding = build_position_encoding(config, width)
        # `linear` adds nothing: the projectors' tokens go to the LM as they are (the model of before the switch).
        self.neighbor_bridge = MMGLNeighborBridge(config, width) if config.neighbor_bridge != "linear" else None
        has_encoder = config.neighbor_encoder_name is not None or config.neighbor_encoder_config is not None
        self.neighbor_encoder = MMGLNeighborEncoder(config) if has_encoder else None
        if self.neighbor_encoder is not None and self.neighbor_encoder.text_model is not None:
            text_model = self.neighbor_encoder.text_model
            if config.text_neighbor_embed_dim != text_model.hidden_size:
                raise ValueError(
                    f"text_neighbor_embed_dim={config.text_neighbor_embed_dim} but text_neighbor_encoder "
                    f"{config.text_neighbor_encoder!r} gives {text_model.hidden_size}-wide embeddings (its hidden_size)"
                )
            # Recorded so that a saved model rebuilds the text encoder offline (its weights are in the checkpoint).
            config.text_neighbor_encoder_config = text_model.config_dict()
        # The trained prefix / prompt of a prefix- or prompt-tuned model (exported without peft).
        self.virtual_tokens = MMGLVirtualTokens(config) if config.virtual_tokens != "none" else None
        self.post_init()
        # The one decoder layer class this model holds. FSDP's transformer auto-wrap (accelerate) looks each name up
        # by exact class name and refuses a name it does not find, so the class-level pair (and the `OPTDecoderLayer`
        # post_init collects from OPTModel) would stop every FSDP launch.
        self._no_split_modules = {"MMGLDecoderLayer" if config.neighbor_mode == "cross_attention" else "OPTDecoderLayer"}
        if config.neighbor_token_id is not None and config.neighbor_mode == "self_attention":
            # The model must never write a placeholder: the next step would hold one without a neighbour.
            self.generation_config.suppress_tokens = [config.neighbor_token_id]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) when asked
        # Loading puts new parameters in place (trainable by default): the frozen encoder must stay frozen, or an
        # optimizer and the parameter counts would take it for trainable.
        if model.neighbor_encoder is not None:
            model.neighbor_encoder.requires_grad_(False)
        return loaded

    def load_neighbor_encoder_weights(self, pretrained: str | None = None):
        """Loads the frozen encoder's open_clip weights (`pretrained` tag or path, default the config's)."""
        if self.neighbor_encoder is None:
            raise ValueError("This model has no neighbour encoder: set `neighbor_encoder_name` in MMGLConfig.")
        pretrained = pretrained or self.config.neighbor_encoder_pretrained
        if pretrained is None:
            raise ValueError("No open_clip weights to load: pass `pretrained` or set `neighbor_encoder_pretrained`.")
        self.neighbor_encoder.load_pretrained(pretrained)

    # ---------------------------------------------------------------------------------------------------------------
    # Neighbours -> LM token vectors

    def _modality_embeds(self, modality, embeds, raw, mask, batch_size, device):
        """Validated `(B, N, D)` embeddings and `(B, N)` mask of one modality, encoding raw inputs if given."""
        config = self.config
        embeds_name, mask_name = f"{modality}_neighbor_embeds", f"{modality}_neighbor_mask"
        raw_name = "text_neighbor_input_ids" if modality == "text" else "image_neighbor_pixel_values"
        expected_dim = getattr(config, f"{modality}_neighbor_embed_dim")
        if embeds is not None and raw is not None:
            raise ValueError(f"Pass either `{embeds_name}` or `{raw_name}`, not both.")
        if embeds is None and raw is None:
            if mask is not None:
                raise ValueError(f"`{mask_name}` was given without `{embeds_name}` or `{raw_name}`.")
            empty = torch.zeros(batch_size, 0, expected_dim, device=device)
            return empty, torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        given_name, given = (embeds_name, embeds) if embeds is not None else (raw_name, raw)
        if mask is None:
            raise ValueError(
                f"`{given_name}` of shape {tuple(given.shape)} needs `{mask_name}` of shape {tuple(given.shape[:2])} "
                "(1 for a real neighbour, 0 for a padding slot)."
            )
        if raw is not None:
            if self.neighbor_encoder is None:
                raise ValueError(
                    f"`{raw_name}` needs a neighbour encoder inside the model (MMGLConfig.neighbor_encoder_name); "
                    f"pass precomputed `{embeds_name}` instead."
                )
            raw_ndim = 3 if modality == "text" else 5
            if raw.dim() != raw_ndim or raw.shape[0] != batch_size:
                raise ValueError(f"`{raw_name}` has shape {tuple(raw.shape)}; expected {raw_ndim} dims, batch {batch_size}.")
            if raw.shape[1] == 0:
                embeds = torch.zeros(batch_size, 0, expected_dim, device=device)
            elif modality == "text":
                embeds = self.neighbor_encoder.encode_text(raw, slot_mask=mask)
            else:
                embeds = self.neighbor_encoder.encode_image(raw)
        if embeds.dim() != 3 or embeds.shape[0] != batch_size or embeds.shape[-1] != expected_dim:
            raise ValueError(
                f"`{embeds_name}` has shape {tuple(embeds.shape)}; expected ({batch_size}, num_neighbors, "
                f"{expected_dim}) ({modality}_neighbor_embed_dim={expected_dim})."
            )
        if tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ValueError(
                f"`{mask_name}` has shape {tuple(mask.shape)}; expected {tuple(embeds.shape[:2])} to match "
                f"`{given_name}`."
            )
        return embeds, mask.to(device=device, dtype=torch.long)

    def embed_neighbors(
        self,
        batch_size: int,
        text_neighbor_embeds=None,
        text_neighbor_input_ids=None,
        text_neighbor_mask=None,
        image_neighbor_embeds=None,
        image_neighbor_pixel_values=None,
        image_neighbor_mask=None,
        neighbor_adjacency=None,
        neighbor_laplacian_eigenvectors=None,
        neighbor_target_distances=None,
        laplacian_sign_seeds=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour token vectors in node order: all text slots, then all image slots; with a bridge, its latents.

        Returns:
            `tokens` `(B, Nt * text_neighbor_num_tokens + Ni * image_neighbor_num_tokens, width)` and `token_mask`
            `(B, same)`, 1 where the token belongs to a real neighbour. With `neighbor_bridge` other than `"linear"`:
            `(B, bridge_num_latents, width)` and `(B, bridge_num_latents)`, 1 in rows with any real neighbour.
        """
        config = self.config
        device = self.lm_head.weight.device
        text_embeds, text_mask = self._modality_embeds(
            "text", text_neighbor_embeds, text_neighbor_input_ids, text_neighbor_mask, batch_size, device
        )
        image_embeds, image_mask = self._modality_embeds(
            "image", image_neighbor_embeds, image_neighbor_pixel_values, image_neighbor_mask, batch_size, device
        )
        text_tokens, image_tokens = self.neighbor_projection(text_embeds, image_embeds)
        num_text, num_image = text_mask.shape[1], image_mask.shape[1]
        num_nodes = num_text + num_image
        if neighbor_adjacency is not None and tuple(neighbor_adjacency.shape) != (batch_size, num_nodes, num_nodes):
            raise ValueError(
                f"`neighbor_adjacency` has shape {tuple(neighbor_adjacency.shape)}; expected "
                f"({batch_size}, {num_nodes}, {num_nodes}) for {num_text} text + {num_image} image neighbour slots."
            )
        if self.position_encoding is not None:
            if num_text > config.max_text_neighbors or num_image > config.max_image_neighbors:
                raise ValueError(
                    f"Got {num_text} text and {num_image} image neighbour slots; the position encoding allows at most "
                    f"max_text_neighbors={config.max_text_neighbors} and max_image_neighbors={config.max_image_neighbors}."
                )
            if neighbor_adjacency is None and config.position_encoding == "gnn":
                raise ValueError(
                    f"position_encoding='gnn' needs `neighbor_adjacency` of shape ({batch_size}, {num_nodes}, {num_nodes})."
                )
            expected = (batch_size, num_nodes, config.lpe_k)
            if config.position_encoding == "laplacian" and (
                neighbor_laplacian_eigenvectors is None or tuple(neighbor_laplacian_eigenvectors.shape) != expected
            ):
                got = None if neighbor_laplacian_eigenvectors is None else tuple(neighbor_laplacian_eigenvectors.shape)
                raise ValueError(
                    f"position_encoding='laplacian' needs `neighbor_laplacian_eigenvectors` of shape {expected}, got "
                    f"{got}: MMGLProcessor(lpe_k={config.lpe_k}) computes them once per example "
                    "(`processing.laplacian_encoding.slot_laplacian_eigenvectors`)."
                )
            if config.graph_target_feature == "distance" and (
                neighbor_target_distances is None or tuple(neighbor_target_distances.shape) != (batch_size, num_nodes)
            ):
                got = None if neighbor_target_distances is None else tuple(neighbor_target_distances.shape)
                raise ValueError(
                    f"graph_target_feature='distance' needs `neighbor_target_distances` of shape ({batch_size}, "
                    f"{num_nodes}), got {got}: MMGLProcessor(graph_target_feature='distance') writes them."
                )
            node_states = torch.cat([text_tokens.mean(2), image_tokens.mean(2)], dim=1)
            node_mask = torch.cat([text_mask, image_mask], dim=1)
            node_positions = torch.cat(
                [torch.arange(num_text, device=device), config.max_text_neighbors + torch.arange(num_image, device=device)]
            ).expand(batch_size, -1)
            encoding = self.position_encoding(
                node_states, node_mask, node_positions, neighbor_adjacency, neighbor_laplacian_eigenvectors,
                laplacian_sign_seeds, neighbor_target_distances,
            )
            text_tokens = text_tokens + encoding[:, :num_text, None]
            image_tokens = image_tokens + encoding[:, num_text:, None]
        tokens = torch.cat([text_tokens.flatten(1, 2), image_tokens.flatten(1, 2)], dim=1)
        token_mask = torch.cat(
            [
                text_mask.repeat_interleave(config.text_neighbor_num_tokens, dim=1),
                image_mask.repeat_interleave(config.image_neighbor_num_tokens, dim=1),
            ],
            dim=1,
        )
        if self.neighbor_bridge is not None:
            tokens, token_mask = self.neighbor_bridge(tokens, token_mask)
        return tokens, token_mask

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """`(B, L)` bool mask of `<neighbor>` placeholders, from ids or (prompt tuning passes only embeddings) from
        the placeholder's embedding."""
        if input_ids is not None:
            return input_ids == self.config.neighbor_token_id
        placeholder = self.get_input_embeddings()(
            torch.tensor(self.config.neighbor_token_id, device=inputs_embeds.device)
        )
        return (inputs_embeds == placeholder).all(-1)

    def scatter_neighbors(self, input_ids, inputs_embeds, tokens, token_mask) -> torch.Tensor:
        """Writes each real neighbour's token vectors at its placeholders, in node order, row by row."""
        placeholders = self.get_placeholder_mask(input_ids, inputs_embeds)
        found, expected = placeholders.sum(1), token_mask.sum(1)
        if not torch.equal(found.cpu(), expected.cpu()):
            row = int((found != expected).nonzero()[0, 0])
            config = self.config
            if config.neighbor_bridge == "linear":
                rule = (f"text_neighbor_num_tokens={config.text_neighbor_num_tokens} per real text neighbour + "
                        f"image_neighbor_num_tokens={config.image_neighbor_num_tokens} per real image neighbour")
            else:
                rule = (f"neighbor_bridge={config.neighbor_bridge!r}: bridge_num_latents={config.bridge_num_latents} "
                        "when the example has any real neighbour, else none")
            raise ValueError(
                f"Row {row} of `input_ids` holds {int(found[row])} `<neighbor>` placeholders (id "
                f"{config.neighbor_token_id}) but its neighbours need {int(expected[row])} ({rule})."
            )
        source = tokens[token_mask.bool()].to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(placeholders.unsqueeze(-1).expand_as(inputs_embeds), source)

    def cross_attention_key_values(self, tokens, token_mask) -> MMGLNeighborKeyValues | None:
        """Keys/values of every cross-attention block, computed once per sequence."""
        if tokens.shape[1] == 0:
            return None
        key_values = {
            idx: layer.gated_cross_attention.cross_attn.key_values(tokens)
            for idx, layer in enumerate(self.model.decoder.layers)
            if layer.gated_cross_attention is not None
        }
        real = token_mask.bool()
        # A finite minimum, not -inf: a row without neighbours must not produce NaNs (its update is zeroed anyway).
        attention_mask = torch.zeros(real.shape, dtype=tokens.dtype, device=tokens.device)
        attention_mask = attention_mask.masked_fill(~real, torch.finfo(tokens.dtype).min)[:, None, None, :]
        has_neighbors = real.any(dim=1).to(tokens.dtype)[:, None, None]
        return MMGLNeighborKeyValues(key_values, attention_mask, has_neighbors)

    # ---------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        text_neighbor_embeds: torch.Tensor | None = None,
        text_neighbor_input_ids: torch.LongTensor | None = None,
        text_neighbor_mask: torch.Tensor | None = None,
        image_neighbor_embeds: torch.Tensor | None = None,
        image_neighbor_pixel_values: torch.Tensor | None = None,
        image_neighbor_mask: torch.Tensor | None = None,
        neighbor_adjacency: torch.Tensor | None = None,
        neighbor_laplacian_eigenvectors: torch.Tensor | None = None,
        neighbor_target_distances: torch.LongTensor | None = None,
        laplacian_sign_seeds: torch.LongTensor | None = None,
        neighbor_key_values: MMGLNeighborKeyValues | None = None,
        **kwargs,
    ) -> MMGLCausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(B, L)`): token ids, with `<neighbor>` placeholders in
            self-attention mode.
        labels (`torch.LongTensor` of shape `(B, L)`): next-token targets, -100 where no loss is taken.
        text_neighbor_embeds (`torch.FloatTensor` of shape `(B, Nt, text_neighbor_embed_dim)`) or
        text_neighbor_input_ids (`torch.LongTensor` of shape `(B, Nt, context_length)`, or `(B, Nt,
        text_neighbor_max_length)` for a Hugging Face text neighbour encoder), with
        text_neighbor_mask (`(B, Nt)`): text neighbours, precomputed or raw for the in-model encoder.
        image_neighbor_embeds (`(B, Ni, image_neighbor_embed_dim)`) or image_neighbor_pixel_values
        (`(B, Ni, 3, H, W)`), with image_neighbor_mask (`(B, Ni)`): image neighbours.
        neighbor_adjacency (`torch.FloatTensor` of shape `(B, Nt + Ni, Nt + Ni)`): graph over text then image slots.
        neighbor_laplacian_eigenvectors (`torch.FloatTensor` of shape `(B, Nt + Ni, lpe_k)`): that graph's Laplacian
            eigenvectors (position_encoding="laplacian"), computed once per example by the processor.
        neighbor_target_distances (`torch.LongTensor` of shape `(B, Nt + Ni)`): each slot's hops from the target in
            the page's tree (graph_target_feature="distance"), from the processor.
        laplacian_sign_seeds (`torch.LongTensor` of shape `(B,)`, *optional*): training only: one seed per example for
            the random sign flips of its eigenvectors (default: the global generator). The Trainer derives them from
            the example and the step, so data parallel training flips exactly as one process does.
        neighbor_key_values ([`MMGLNeighborKeyValues`]): cross-attention state from an earlier step (generation).
        """
        neighbor_inputs = {
            "text_neighbor_embeds": text_neighbor_embeds,
            "text_neighbor_input_ids": text_neighbor_input_ids,
            "text_neighbor_mask": text_neighbor_mask,
            "image_neighbor_embeds": image_neighbor_embeds,
            "image_neighbor_pixel_values": image_neighbor_pixel_values,
            "image_neighbor_mask": image_neighbor_mask,
            "neighbor_adjacency": neighbor_adjacency,
            "neighbor_laplacian_eigenvectors": neighbor_laplacian_eigenvectors,
            "neighbor_target_distances": neighbor_target_distances,
        }
        has_neighbor_inputs = any(value is not None for value in neighbor_inputs.values())
        mode = self.config.neighbor_mode
        use_cache = use_cache if use_cache is not None else self.config.use_cache

        if mode == "none" and has_neighbor_inputs:
            raise ValueError("Neighbour inputs were given but this model has neighbor_mode='none'.")
        if has_neighbor_inputs and neighbor_key_values is None:
            batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            tokens, token_mask = self.embed_neighbors(
                batch_size, **neighbor_inputs, laplacian_sign_seeds=laplacian_sign_seeds
            )
            if mode == "self_attention":
                if inputs_embeds is None:
                    inputs_embeds = self.get_input_embeddings()(input_ids)
                inputs_embeds = self.scatter_neighbors(input_ids, inputs_embeds, tokens, token_mask)
                input_ids = None
            else:
                neighbor_key_values = self.cross_attention_key_values(tokens, token_mask)
        elif mode == "self_attention" and input_ids is not None:
            found = int((input_ids == self.config.neighbor_token_id).sum())
            if found:
                raise ValueError(
                    f"`input_ids` holds {found} `<neighbor>` placeholders but no neighbour inputs were given."
                )

        if neighbor_key_values is not None:
            kwargs["neighbor_key_values"] = neighbor_key_values
        prompt_length = 0
        if self.virtual_tokens is not None:
            input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, labels, prompt_length = (
                self.apply_virtual_tokens(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values,
                                          labels)
            )
        outputs = self.model.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states).contiguous()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if prompt_length and isinstance(logits_to_keep, int) and logits_to_keep == 0:
            logits = logits[:, prompt_length:]  # aligned with the input again (the prompt is not the user's)
        return MMGLCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            neighbor_key_values=neighbor_key_values if use_cache else None,
        )

    def apply_virtual_tokens(self, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, labels):
        """Applies the trained prefix / prompt as peft's `PeftModelForCausalLM` does (see `virtual_tokens.py`).

        Returns the decoder inputs and labels, and the number of prompt positions put in front of the input (their
        logits are dropped from the output; 0 for prefix tuning and for decoding steps after the first).
        """
        virtual = self.virtual_tokens
        cache_is_empty = past_key_values is None or past_key_values.get_seq_length() == 0
        batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        attention_mask = virtual.extend_attention_mask(attention_mask)
        if virtual.kind == "prefix":
            if position_ids is not None:
                position_ids = position_ids + virtual.num_virtual_tokens  # behind the prefix in the cache
            if cache_is_empty:
                past_key_values = virtual.prefix_cache(batch_size, self.dtype)
            return input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, labels, 0
        position_ids = None  # peft drops them: OPT counts positions on the mask, which now covers the prompt
        if not cache_is_empty:
            return input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, labels, 0
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        prompts = virtual.prompt_embeddings(batch_size, inputs_embeds.dtype)
        inputs_embeds = torch.cat((prompts, inputs_embeds), dim=1)
        labels = virtual.extend_labels(labels)
        return None, inputs_embeds, attention_mask, position_ids, past_key_values, labels, virtual.num_virtual_tokens

    # ---------------------------------------------------------------------------------------------------------------
    # Generation: neighbours are read at prefill; later steps reuse the cache (and the cross-attention keys/values).

    def prepare_inputs_for_generation(self, *args, neighbor_key_values=None, is_first_iteration=False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            # The self-attention cache already holds the neighbour tokens; cross-attention reuses its keys/values.
            for name in NEIGHBOR_INPUT_NAMES:
                model_inputs.pop(name, None)
            if neighbor_key_values is not None:
                model_inputs["neighbor_key_values"] = neighbor_key_values
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs: dict[str, Any], *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if getattr(outputs, "neighbor_key_values", None) is not None:
            model_kwargs["neighbor_key_values"] = outputs.neighbor_key_values
        return model_kwargs

    # ---------------------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` keeps one auto class per model class; map the others by hand so AutoModel and
        # AutoModelForCausalLM both load this class from the remote code.
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_mmgl.MMGLConfig",
            "AutoModel": "modeling_mmgl.MMGLForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_mmgl.MMGLForConditionalGeneration",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


MMGLConfig.register_for_auto_class()
MMGLForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["MMGLCausalLMOutputWithPast", "MMGLForConditionalGeneration", "MMGLPreTrainedModel"]
