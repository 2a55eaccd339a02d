"""Graph position encodings for neighbour nodes: sequence order, Laplacian eigenvectors (LPE), or a GNN.

Each encoder maps the neighbour graph of a batch to one vector per node, which the model adds to every LM token
of that neighbour before the language model sees it.
"""

import torch
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv

from .configuration_mmgl import MMGLConfig


def laplacian_eigenvectors(edge_index: torch.Tensor, num_nodes: int, k: int) -> torch.Tensor:
    """The `k` first non-trivial eigenvectors of the symmetric normalised Laplacian of an undirected graph.

    Follows PyG's `AddLaplacianEigenvectorPE` (L = I - D^-1/2 A D^-1/2, isolated nodes with L_ii = 1, eigenvalues
    ascending, the first eigenvector dropped) with two differences that small page graphs need: a graph with `k` or fewer nodes is valid and its
    missing eigenvectors are zero columns, and the sign of each eigenvector is fixed (largest-magnitude entry
    positive) so the result is deterministic; random sign flipping is a training-time augmentation left to the
    caller.

    Args:
        edge_index (`torch.LongTensor` of shape `(2, num_edges)`): edges; treated as undirected.
        num_nodes (`int`): number of nodes (isolated nodes allowed).
        k (`int`): number of eigenvectors.

    Returns:
        `torch.FloatTensor` of shape `(num_nodes, k)`.
    """
    pe = torch.zeros(num_nodes, k)
    if num_nodes < 2:
        return pe
    # Page graphs have a handful of nodes: a dense float64 Laplacian is exact and cheap.
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adjacency[edge_index[0].long().cpu(), edge_index[1].long().cpu()] = 1.0
    adjacency = torch.maximum(adjacency, adjacency.t()).fill_diagonal_(0.0)
    degree = adjacency.sum(dim=1)
    inv_sqrt_degree = torch.where(degree > 0, degree.clamp(min=1e-12).rsqrt(), torch.zeros_like(degree))
    laplacian = torch.eye(num_nodes, dtype=torch.float64) - inv_sqrt_degree[:, None] * adjacency * inv_sqrt_degree
    _, eigenvectors = torch.linalg.eigh(laplacian)  # ascending eigenvalues, orthonormal columns
    vectors = eigenvectors[:, 1 : k + 1]
    # Fix the sign: the largest-magnitude entry of each eigenvector is positive.
    pivot = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[pivot, torch.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    pe[:, : vectors.shape[1]] = (vectors * signs).float()
    return pe


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

    def forward(self, node_states, node_mask, node_positions, adjacency):
        return self.embeddings(node_positions)


class MMGLLaplacianPositionEncoding(nn.Module):
    """Laplacian eigenvectors of each example's neighbour graph (real nodes only), projected to the LM width."""

    def __init__(self, config: MMGLConfig, dim: int):
        super().__init__()
        self.k = config.lpe_k
        self.projection = nn.Linear(config.lpe_k, dim)

    def forward(self, node_states, node_mask, node_positions, adjacency):
        batch_size, num_nodes = node_mask.shape
        eigenvectors = torch.zeros(batch_size, num_nodes, self.k)
        for b in range(batch_size):
            # Padding slots are dropped before the decomposition: as isolated nodes they would add spurious
            # zero eigenvalues and shift which eigenvectors count as the first k.
            real = node_mask[b].nonzero(as_tuple=True)[0].cpu()
            sub_adjacency = adjacency[b].detach().cpu()[real][:, real]
            edge_index = sub_adjacency.nonzero().t()
            eigenvectors[b, real] = laplacian_eigenvectors(edge_index, len(real), self.k)
        eigenvectors = eigenvectors.to(device=node_states.device, dtype=self.projection.weight.dtype)
        if self.training:
            # Eigenvectors are defined up to sign: flip at random so the model cannot rely on one.
            flips = torch.randint(0, 2, (batch_size, 1, self.k), device=eigenvectors.device) * 2 - 1
            eigenvectors = eigenvectors * flips
        return self.projection(eigenvectors)


GNN_LAYERS = {"gcn": GCNConv, "gat": GATConv, "sage": SAGEConv}


class MMGLGNNPositionEncoding(nn.Module):
    """A torch_geometric network over the neighbour embeddings and the page graph; its output is the encoding."""

    def __init__(self, config: MMGLConfig, dim: int):
        super().__init__()
        layer_class = GNN_LAYERS[config.gnn_type]
        self.layers = nn.ModuleList(layer_class(dim, dim) for _ in range(config.gnn_num_layers))
        self.activation = nn.ReLU()

    def forward(self, node_states, node_mask, node_positions, adjacency):
        batch_size, num_nodes, dim = node_states.shape
        real = node_mask.bool()
        # Padding slots are isolated and zeroed, so they neither send nor receive messages.
        edges = adjacency.bool() & real[:, :, None] & real[:, None, :]
        edge_index = adjacency_to_edge_index(edges)
        hidden = (node_states * real[..., None].to(node_states.dtype)).reshape(batch_size * num_nodes, dim)
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, edge_index)
            if i < len(self.layers) - 1:
                hidden = self.activation(hidden)
        return hidden.view(batch_size, num_nodes, dim) * real[..., None].to(hidden.dtype)


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
    "MMGLLaplacianPositionEncoding",
    "MMGLSequencePositionEncoding",
    "adjacency_to_edge_index",
    "build_position_encoding",
    "laplacian_eigenvectors",
]
