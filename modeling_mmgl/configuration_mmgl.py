"""MMGL configuration: OPT plus the three MMGL design switches, all off by default."""

from huggingface_hub.dataclasses import strict
from transformers import OPTConfig

NEIGHBOR_MODES = ("none", "self_attention", "cross_attention")
# The design space is owned by `processing/design_space.py` (axes, choices, defaults); a Hub folder's config cannot
# import that package, so it validates against these copies, which tests/test_design_space.py keeps equal to it.
POSITION_ENCODINGS = ("none", "sequence", "laplacian", "gnn")
GNN_TYPES = ("gcn", "gat", "sage")
TEXT_NEIGHBOR_POOLINGS = ("cls", "mean", "pooler")
VIRTUAL_TOKENS = ("none", "prefix", "prompt")
ALPHA_INITIALIZERS = ("zeros", "ones", "normal")
GRAPH_TARGET_FEATURES = ("none", "distance")
NEIGHBOR_BRIDGES = ("linear", "perceiver", "qformer")


@strict
class MMGLConfig(OPTConfig):
    r"""
    Configuration of [`MMGLForConditionalGeneration`]: an [`OPTConfig`] plus the MMGL switches. With every switch
    at its default the model is exactly OPT (same weights, same logits).

    Args:
        neighbor_mode (`str`, *optional*, defaults to `"none"`):
            How neighbours reach the language model. `"none"`: plain OPT. `"self_attention"`: projected neighbour
            embeddings replace `<neighbor>` placeholder tokens in the input sequence (SA-E, and SA-TE when the
            processor writes neighbour texts as raw tokens and passes only images). `"cross_attention"`:
            neighbours are read through gated cross-attention blocks (CA-E).
        text_neighbor_num_tokens (`int`, *optional*, defaults to 4):
            Number of LM token vectors each text neighbour is mapped to (paper: 4).
        image_neighbor_num_tokens (`int`, *optional*, defaults to 4):
            Number of LM token vectors each image neighbour is mapped to (paper: 4).
        text_neighbor_embed_dim (`int`, *optional*, defaults to 512):
            Width of the frozen encoder's text embeddings (CLIP ViT-B/32: 512).
        image_neighbor_embed_dim (`int`, *optional*, defaults to 512):
            Width of the frozen encoder's image embeddings (CLIP ViT-B/32: 512).
        neighbor_token_id (`int`, *optional*):
            Id of the `<neighbor>` placeholder token the processor writes. Required in self-attention mode.
        max_text_neighbors (`int`, *optional*, defaults to 11):
            Most text neighbours per example (paper: 11); sizes the sequence position encoding.
        max_image_neighbors (`int`, *optional*, defaults to 5):
            Most image neighbours per example (paper: 5); sizes the sequence position encoding.
        position_encoding (`str`, *optional*, defaults to `"none"`):
            Graph position encoding added to the neighbour embeddings: `"none"`, `"sequence"` (a learned embedding
            per neighbour order), `"laplacian"` (the `lpe_k` first non-trivial Laplacian eigenvectors of the
            neighbour graph, projected) or `"gnn"` (a graph network over the neighbour embeddings).
        lpe_k (`int`, *optional*, defaults to 4):
            Number of Laplacian eigenvectors for `position_encoding="laplacian"`.
        graph_target_feature (`str`, *optional*, defaults to `"none"`):
            What the graph position encoding knows of the target section, which is contracted out of the neighbour
            graph: `"none"`, or `"distance"`: each slot's hops from the target in the page's tree
            (`neighbor_target_distances`, from the processor), embedded and added to the LPE projection or to the
            GNN's input node states, so "the target's child" can be told from other nodes next to the target.
            Needs `position_encoding` `"laplacian"` or `"gnn"`.
        gnn_type (`str`, *optional*, defaults to `"gcn"`):
            torch_geometric layer for `position_encoding="gnn"`: `"gcn"`, `"gat"` or `"sage"`.
        gnn_num_layers (`int`, *optional*, defaults to 2):
            Number of graph layers for `position_encoding="gnn"`.
        cross_attention_interval (`int`, *optional*, defaults to 4):
            One gated cross-attention block every this many decoder layers (paper: 4), placed before the
            self-attention of layers `interval-1, 2*interval-1, ...`.
        cross_attention_gating (`bool`, *optional*, defaults to `True`):
            Whether each cross-attention block sits behind tanh gates initialised to zero (the block is the identity
            at initialisation, so the model starts as OPT). `False`: no gates, both residuals are added directly
            (the paper's ungated CA-E); the model then differs from OPT from the start.
        alpha_initializer (`str`, *optional*, defaults to `"zeros"`):
            Initial value of the gates' parameters (`alpha_cross_attn`, `alpha_dense`), IDEFICS' option: `"zeros"`
            (closed: the model starts as OPT, bit for bit), `"ones"` (open, tanh(1) = 0.76: a closed tanh gate
            sits at a saddle where its gradient is tiny, an open one starts learning at once) or `"normal"` (drawn
            from N(0, `alphas_initializer_range`)). Only the initialisation: a checkpoint's gates load as saved.
        alphas_initializer_range (`float`, *optional*, defaults to 0.0):
            Standard deviation of the gates' initialisation when `alpha_initializer="normal"` (IDEFICS' name).
        neighbor_encoder_name (`str`, *optional*):
            open_clip model name (e.g. `"ViT-B-32"`) of a frozen encoder kept inside the model, so raw neighbour
            texts and images work end to end. `None`: only precomputed neighbour embeddings are accepted.
        neighbor_encoder_pretrained (`str`, *optional*):
            open_clip pretrained tag (e.g. `"openai"`) or local checkpoint path that
            [`MMGLForConditionalGeneration.load_neighbor_encoder_weights`] loads; a saved MMGL checkpoint already
            holds the encoder weights.
        neighbor_encoder_config (`dict`, *optional*):
            A full open_clip model config, for encoders that are not registered by name (e.g. tiny test models).
        embedding_cache_encoder (`dict`, *optional*):
            `{"name", "pretrained", "config"}` of the frozen encoder whose embedding cache a model was trained
            from without the encoder inside. Nothing is built from it; it is recorded so that a Trainer
            checkpoint of such a run still names its encoder (an exported model holds the encoder itself).
        text_neighbor_encoder (`str`, *optional*):
            A Hugging Face text model (hub id or local folder, loaded with `AutoModel` / `AutoTokenizer`: BERT,
            RoBERTa, sentence-transformers, ...) that encodes text neighbours instead of open_clip's text tower,
            frozen; images stay with open_clip. `None`: open_clip's text tower (77 tokens). `text_neighbor_embed_dim`
            must be its hidden size. The model carries it (inside `neighbor_encoder`) when it carries the open_clip
            encoder.
        text_neighbor_pooling (`str`, *optional*, defaults to `"mean"`):
            How the text model's token states become one vector: `"cls"` (first token), `"mean"` (mean over real
            tokens, sentence-transformers') or `"pooler"` (the model's pooler, BERT / RoBERTa); then L2-normalised.
        text_neighbor_max_length (`int`, *optional*, defaults to 512):
            Tokens of a text neighbour the text model reads (special tokens included; longer texts are truncated).
        text_neighbor_encoder_config (`dict`, *optional*):
            The text model's Hugging Face config, recorded when the model carries the encoder, so that a saved
            model rebuilds it offline (its weights are in the MMGL checkpoint).
        virtual_tokens (`str`, *optional*, defaults to `"none"`):
            Trained virtual tokens the model applies itself (the export of a prefix / prompt tuned model, see
            `virtual_tokens.py`): `"none"`, `"prompt"` (embeddings in front of the input) or `"prefix"` (keys and
            values in front of every layer's self-attention), computed exactly as peft computes them.
        num_virtual_tokens (`int`, *optional*, defaults to 20):
            Number of virtual tokens when `virtual_tokens` is not `"none"`; they take positions in front of the input
            (`max_position_embeddings` must leave room for them).
        neighbor_bridge (`str`, *optional*, defaults to `"linear"`):
            What the language model reads of the neighbours (see `neighbor_bridge.py`). `"linear"`: each neighbour's
            projected token vectors (input grows with the neighbour count). `"perceiver"` (Flamingo's Perceiver
            Resampler, IDEFICS' module) or `"qformer"` (BLIP-2's Q-Former): `bridge_num_latents` learned latents
            cross-attend to all of an example's neighbour tokens (after their modality and graph position encodings)
            and replace them, so the LM input stays the same size whatever the neighbour count. With SA-TE only the
            image neighbours are bridged (the texts stay raw tokens).
        bridge_num_latents (`int`, *optional*, defaults to 32):
            Number of LM token vectors a bridge compresses an example's neighbours into (Flamingo: 64, BLIP-2: 32).
        bridge_num_layers (`int`, *optional*, defaults to 2):
            Depth of the bridge: Perceiver blocks, or Q-Former layers (each with cross-attention to the neighbours).
    """

    model_type = "mmgl"
    # Trainer's evaluation loop must not try to gather the per-sequence neighbour keys/values.
    keys_to_ignore_at_inference = ["past_key_values", "neighbor_key_values"]

    neighbor_mode: str = "none"
    text_neighbor_num_tokens: int = 4
    image_neighbor_num_tokens: int = 4
    text_neighbor_embed_dim: int = 512
    image_neighbor_embed_dim: int = 512
    neighbor_token_id: int | None = None
    max_text_neighbors: int = 11
    max_image_neighbors: int = 5
    position_encoding: str = "none"
    lpe_k: int = 4
    graph_target_feature: str = "none"
    gnn_type: str = "gcn"
    gnn_num_layers: int = 2
    cross_attention_interval: int = 4
    cross_attention_gating: bool = True
    alpha_initializer: str = "zeros"
    alphas_initializer_range: float = 0.0
    neighbor_encoder_name: str | None = None
    neighbor_encoder_pretrained: str | None = None
    neighbor_encoder_config: dict | None = None
    embedding_cache_encoder: dict | None = None
    text_neighbor_encoder: str | None = None
    text_neighbor_pooling: str = "mean"
    text_neighbor_max_length: int = 512
    text_neighbor_encoder_config: dict | None = None
    virtual_tokens: str = "none"
    num_virtual_tokens: int = 20
    neighbor_bridge: str = "linear"
    bridge_num_latents: int = 32
    bridge_num_layers: int = 2

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_choice("neighbor_mode", self.neighbor_mode, NEIGHBOR_MODES)
        _check_choice("position_encoding", self.position_encoding, POSITION_ENCODINGS)
        _check_choice("gnn_type", self.gnn_type, GNN_TYPES)
        _check_choice("text_neighbor_pooling", self.text_neighbor_pooling, TEXT_NEIGHBOR_POOLINGS)
        _check_choice("virtual_tokens", self.virtual_tokens, VIRTUAL_TOKENS)
        _check_choice("alpha_initializer", self.alpha_initializer, ALPHA_INITIALIZERS)
        _check_choice("graph_target_feature", self.graph_target_feature, GRAPH_TARGET_FEATURES)
        if self.graph_target_feature != "none" and self.position_encoding not in ("laplacian", "gnn"):
            raise ValueError(
                f"graph_target_feature={self.graph_target_feature!r} feeds the 'laplacian' or 'gnn' position encoding, "
                f"but position_encoding={self.position_encoding!r}."
            )
        if self.alphas_initializer_range < 0 or (self.alpha_initializer == "normal"
                                                 and not self.alphas_initializer_range > 0):
            raise ValueError(
                f"alphas_initializer_range must be > 0 with alpha_initializer='normal' (and never negative), got "
                f"{self.alphas_initializer_range}."
            )
        _check_choice("neighbor_bridge", self.neighbor_bridge, NEIGHBOR_BRIDGES)
        if self.neighbor_mode == "none" and self.position_encoding != "none":
            raise ValueError(
                f"position_encoding={self.position_encoding!r} needs neighbours, but neighbor_mode='none'; "
                "set neighbor_mode to 'self_attention' or 'cross_attention'."
            )
        if self.neighbor_mode == "none" and self.neighbor_bridge != "linear":
            raise ValueError(
                f"neighbor_bridge={self.neighbor_bridge!r} needs neighbours, but neighbor_mode='none'; "
                "set neighbor_mode to 'self_attention' or 'cross_attention'."
            )
        if self.neighbor_mode == "self_attention" and self.neighbor_token_id is None:
            raise ValueError("neighbor_mode='self_attention' needs neighbor_token_id (the `<neighbor>` token id).")
        if self.cross_attention_interval < 1:
            raise ValueError(f"cross_attention_interval must be >= 1, got {self.cross_attention_interval}.")
        for name in ("text_neighbor_num_tokens", "image_neighbor_num_tokens", "lpe_k", "gnn_num_layers",
                     "text_neighbor_max_length", "num_virtual_tokens", "bridge_num_latents", "bridge_num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    @property
    def max_neighbors(self) -> int:
        return self.max_text_neighbors + self.max_image_neighbors

    def has_cross_attention(self, layer_idx: int) -> bool:
        """Whether decoder layer `layer_idx` carries a gated cross-attention block."""
        return self.neighbor_mode == "cross_attention" and (layer_idx + 1) % self.cross_attention_interval == 0


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


__all__ = ["MMGLConfig"]
