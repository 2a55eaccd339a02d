"""Graph position encodings for neighbour nodes: sequence order, Laplacian eigenvectors (LPE), or a GNN.

Each encoder maps the neighbour graph of a batch to one vector per node, which the model adds to every LM token
of that neighbour before the language model sees it. The Laplacian eigenvectors themselves are computed once per
example by the processor (`processing/laplacian_encoding.py`); here they are only sign-flipped and projected.
The flips are randomness that belongs to an example: given a seed per example (the Trainer derives it from the
example and the training step), they are the same in any process layout, so data parallel training equals one
process.
"""

import torch
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv

from .configuration_mmgl import MMGLConfig

# Hops from the target, clamped: the processor's `graph_projection.TARGET_DISTANCE_CAP` (7: that many or more,
# unreachable or masked) is the last row; larger values are clamped here too.
TARGET_DISTANCE_BUCKETS = 8


class MMGLTargetDistanceEmbedding(nn.Module):
    """A learned vector per distance from the target (`config.graph_target_feature="distance"`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.embeddings = nn.Embedding(TARGET_DISTANCE_BUCKETS, dim)

    def forward(self, target_distances: torch.Tensor) -> torch.Tensor:
        """`(B, N)` integer distances -> `(B, N, dim)`."""
        return self.embeddings(target_distances.long().clamp(0, TARGET_DISTANCE_BUCKETS - 1))


def build_target_distance(config: MMGLConfig, dim: int) -> MMGLTargetDistanceEmbedding | None:
    return MMGLTargetDistanceEmbedding(dim) if config.graph_target_feature == "distance" else None


def adjacency_to_edge_index(adjacency: torch.Tensor) -> torch.Tensor:
    """Edges of a batched dense adjacency `(B, N, N)` as one disjoint graph over `B * N` nodes, shape `(2, E)`."""
    batch, rows, cols = adjacency.nonzero(as_tuple=True)
    num_nodes = adjacency.shape[1]
    return torch.stack([batch * num_nodes + rows, batch * num_nodes + cols])


class MMGLSequencePositionEncoding(nn.Module):
    """A learned embedding per neighbour slot: text slot `i` -> `i`, image slot `j` -> `max_text_neighbors + j`."""

    def __init__(self, config: MMGLConfig, dim: int):
        super().__init__()
        self.embeddings = nn.Embedding(config.max_neighbors, dim)

    def forward(self, node_states, node_mask, node_positions, adjacency, laplacian_eigenvectors=None,
                laplacian_sign_seeds=None, target_distances=None):
        return self.embeddings(node_positions)


def random_sign_flips(batch_size: int, k: int, seeds: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """`(B, 1, k)` random signs (+1 / -1), one per example and eigenvector.

    With `seeds` (`(B,)` integers), row `b` is drawn from a generator seeded with `seeds[b]`: an example gets the same
    flips whichever process, batch or position in the batch it lands in. Without, from the global generator.
    """
    if seeds is None:
        bits = torch.randint(0, 2, (batch_size, 1, k), device=device)
    else:
        if seeds.shape != (batch_size,):
            raise ValueError(f"`laplacian_sign_seeds` has shape {tuple(seeds.shape)}; expected ({batch_size},).")
        bits = torch.stack([
            torch.randint(0, 2, (1, k), generator=torch.Generator().manual_seed(seed)) for seed in seeds.tolist()
        ]).to(device)
    return bits * 2 - 1


class MMGLLaplacianPositionEncoding(nn.Module):
    """The Laplacian eigenvectors of each example's neighbour graph (given, `(B, N, lpe_k)`), projected to the LM
    width; with `graph_target_feature="distance"` plus an embedding of each node's distance to the target (the same
    as one-hot distances concatenated to the eigenvectors before the projection)."""

    def __init__(self, config: MMGLConfig, dim: int):
        super().__init__()
        self.k = config.lpe_k
        self.projection = nn.Linear(config.lpe_k, dim)
        self.target_distance = build_target_distance(config, dim)

    def forward(self, node_states, node_mask, node_positions, adjacency, laplacian_eigenvectors=None,
                laplacian_sign_seeds=None, target_distances=None):
        eigenvectors = laplacian_eigenvectors.to(device=node_states.device, dtype=self.projection.weight.dtype)
        if self.training:
            # Eigenvectors are defined up to sign: flip at random so the model cannot rely on one.
            flips = random_sign_flips(eigenvectors.shape[0], self.k, laplacian_sign_seeds, eigenvectors.device)
            eigenvectors = eigenvectors * flips.to(eigenvectors.dtype)
        encoding = self.projection(eigenvectors)
        if self.target_distance is not None:
            encoding = encoding + self.target_distance(target_distances.to(encoding.device))
        return encoding


GNN_LAYERS = {"gcn": GCNConv, "gat": GATConv, "sage": SAGEConv}


class MMGLGNNPositionEncoding(nn.Module):
    """A torch_geometric network over the neighbour embeddings and the page graph; its output is the encoding. With
    `graph_target_feature="distance"` an embedding of each node's distance to the target is added to its input
    state, so messages carry which node is next to the target and how."""

    def __init__(self, config: MMGLConfig, dim: int):
        super().__init__()
        layer_class = GNN_LAYERS[config.gnn_type]
        self.layers = nn.ModuleList(layer_class(dim, dim) for _ in range(config.gnn_num_layers))
        self.activation = nn.ReLU()
        self.target_distance = build_target_distance(config, dim)
        # `from_pretrained` builds the model on the meta device, where torch_geometric's constructors draw nothing,
        # and transformers' initialisation knows no torch_geometric layer: mark them so that the model's
        # `_init_weights` draws them (`draw_undrawn_gnn_layer`) when the checkpoint lacks them (an OPT base has
        # no GNN). A model built directly keeps the constructors' draws.
        for module in self.layers.modules():
            if hasattr(module, "reset_parameters"):
                module.undrawn_gnn_layer = any(p.is_meta for p in module.parameters())

    def forward(self, node_states, node_mask, node_positions, adjacency, laplacian_eigenvectors=None,
                laplacian_sign_seeds=None, target_distances=None):
        batch_size, num_nodes, dim = node_states.shape
        real = node_mask.bool()
        if self.target_distance is not None:
            node_states = node_states + self.target_distance(target_distances.to(node_states.device))
        # Padding slots are isolated and zeroed, so they neither send nor receive messages.
        edges = adjacency.bool() & real[:, :, None] & real[:, None, :]
        edge_index = adjacency_to_edge_index(edges)
        hidden = (node_states * real[..., None].to(node_states.dtype)).reshape(batch_size * num_nodes, dim)
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, edge_index)
            if i < len(self.layers) - 1:
                hidden = self.activation(hidden)
        return hidden.view(batch_size, num_nodes, dim) * real[..., None].to(hidden.dtype)


def draw_undrawn_gnn_layer(module: nn.Module) -> None:
    """Draws a GNN (sub)layer built on the meta device with torch_geometric's own initialisers, unless one of its
    weights was loaded from a checkpoint. Every torch_geometric module is passed here, because transformers skips a
    module with no weights of its own (a `SAGEConv`) and only its sublayers come."""
    if not getattr(module, "undrawn_gnn_layer", False):
        return
    if not any(getattr(p, "_is_hf_initialized", False) for p in module.parameters()):
        module.reset_parameters()  # a conv resets its sublayers too: they need no second draw
    for sub in module.modules():
        sub.undrawn_gnn_layer = False


POSITION_ENCODINGS = {
    "sequence": MMGLSequencePositionEncoding,
    "laplacian": MMGLLaplacianPositionEncoding,
    "gnn": MMGLGNNPositionEncoding,
}


def build_position_encoding(config: MMGLConfig, dim: int) -> nn.Module | None:
    """The position encoder `config.position_encoding` names, or `None` for `"none"`."""
    if config.position_encoding == "none":
        return None
    return POSITION_ENCODINGS[config.position_encoding](config, dim)


__all__ = [
    "MMGLGNNPositionEncoding",
    "draw_undrawn_gnn_layer",
    "MMGLTargetDistanceEmbedding",
    "MMGLLaplacianPositionEncoding",
    "MMGLSequencePositionEncoding",
    "adjacency_to_edge_index",
    "build_position_encoding",
    "random_sign_flips",
]
