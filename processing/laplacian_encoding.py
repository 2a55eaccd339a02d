"""Laplacian eigenvector position encodings (LPE) of an example's neighbour slots, computed once per example.

PyG computes LPE once per graph as a transform (`AddLaplacianEigenvectorPE`); so does MMGL: the processor stores
`neighbor_laplacian_eigenvectors` `(Nt + Ni, k)` in each example, the collator pads it like the adjacency, and the
model only projects it (and flips signs at random while training). Nothing is decomposed in the forward pass, so
there is no per-batch host copy or float64 eigendecomposition on the accelerator's critical path.

This file is Hub-loadable: it imports installed packages only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _dense_eigenvectors(adjacency: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` first non-trivial eigenvectors of the symmetric normalised Laplacian of a dense `(n, n)` adjacency (any
    values > 0 are edges; made symmetric), as `torch.FloatTensor` of shape `(n, k)`.

    Follows PyG's `AddLaplacianEigenvectorPE` (L = I - D^-1/2 A D^-1/2, isolated nodes with L_ii = 1, eigenvalues
    ascending, the first eigenvector dropped) with two differences that small page graphs need: a graph with `k` or
    fewer nodes is valid and its missing eigenvectors are zero columns, and the sign of each eigenvector is fixed
    (largest-magnitude entry positive) so the result is deterministic; random sign flipping is a training-time
    augmentation left to the model. Page graphs have a handful of nodes: a dense float64 Laplacian is exact and cheap.
    """
    num_nodes = adjacency.shape[0]
    pe = torch.zeros(num_nodes, k)
    if num_nodes < 2:
        return pe
    adjacency = (adjacency > 0).to(torch.float64)
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


def slot_laplacian_eigenvectors(adjacency: torch.Tensor, slot_mask: Sequence[int], k: int) -> torch.Tensor:
    """LPE of one example's neighbour slots: `(N, k)` for the slot graph `adjacency` `(N, N)`.

    Masked (missing image) slots are dropped before the decomposition and get zero rows: as isolated nodes they
    would add spurious zero eigenvalues and shift which eigenvectors count as the first `k`.
    """
    real = torch.as_tensor(list(slot_mask), dtype=torch.bool).nonzero(as_tuple=True)[0]
    out = torch.zeros(adjacency.shape[0], k)
    out[real] = _dense_eigenvectors(adjacency[real][:, real], k)  # the slot graph is dense already
    return out


__all__ = ["slot_laplacian_eigenvectors"]
