"""Graph position encodings: Laplacian eigenvectors and the GNN encoder."""

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import AddLaplacianEigenvectorPE

from tests.modeling_helpers import laplacian_eigenvectors
from modeling_mmgl.graph_position_encoding import MMGLGNNPositionEncoding
from tests.modeling_helpers import tiny_config


def path_graph(n):
    edges = torch.tensor([[i, i + 1] for i in range(n - 1)]).t()
    return torch.cat([edges, edges.flip(0)], dim=1)


def normalized_laplacian(edge_index, n):
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    adjacency[edge_index[0], edge_index[1]] = 1
    degree = adjacency.sum(1)
    scale = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    return torch.eye(n, dtype=torch.float64) - scale[:, None] * adjacency * scale


def test_lpe_matches_pyg_up_to_sign():
    edge_index = path_graph(7)  # a path has distinct eigenvalues, so eigenvectors are unique up to sign
    ours = laplacian_eigenvectors(edge_index, 7, k=3)
    pyg = AddLaplacianEigenvectorPE(k=3, attr_name="pe")(Data(edge_index=edge_index, num_nodes=7)).pe
    for column in range(3):
        sign = torch.sign((ours[:, column] * pyg[:, column]).sum())
        torch.testing.assert_close(ours[:, column], sign * pyg[:, column], atol=1e-5, rtol=0)


def test_lpe_orthonormal_eigenvectors_and_deterministic_sign():
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 0], [1, 0, 2, 1, 0, 3]])  # star-ish graph, 5 nodes, node 4 isolated
    pe = laplacian_eigenvectors(edge_index, 5, k=3).double()
    torch.testing.assert_close(pe.t() @ pe, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    laplacian = normalized_laplacian(edge_index, 5)
    eigenvalues = torch.linalg.eigvalsh(laplacian)
    for column in range(3):
        vector = pe[:, column]
        torch.testing.assert_close(laplacian @ vector, eigenvalues[column + 1] * vector, atol=1e-5, rtol=0)
        assert vector[vector.abs().argmax()] > 0
    assert torch.equal(laplacian_eigenvectors(edge_index, 5, k=3), laplacian_eigenvectors(edge_index, 5, k=3))


@pytest.mark.parametrize("num_nodes", [0, 1, 2, 3])
def test_lpe_pads_graphs_with_k_or_fewer_nodes(num_nodes):
    edge_index = path_graph(num_nodes) if num_nodes > 1 else torch.zeros(2, 0, dtype=torch.long)
    pe = laplacian_eigenvectors(edge_index, num_nodes, k=4)
    assert pe.shape == (num_nodes, 4)
    available = max(num_nodes - 1, 0)
    assert torch.all(pe[:, available:] == 0)
    if available:
        torch.testing.assert_close(pe[:, :available].t() @ pe[:, :available], torch.eye(available), atol=1e-5, rtol=0)


@pytest.mark.parametrize("gnn_type", ["gcn", "gat", "sage"])
def test_gnn_encoding_is_permutation_equivariant(gnn_type):
    torch.manual_seed(0)
    encoder = MMGLGNNPositionEncoding(tiny_config(position_encoding="gnn", gnn_type=gnn_type), dim=8).eval()
    states = torch.randn(1, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    adjacency = torch.zeros(1, 6, 6)
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 4)]:
        adjacency[0, a, b] = adjacency[0, b, a] = 1
    out = encoder(states, mask, None, adjacency)
    assert torch.all(out[0, 5] == 0), "padding nodes get no encoding"
    assert out[0, :5].abs().sum() > 0
    permutation = torch.tensor([3, 0, 4, 1, 2, 5])
    permuted = encoder(
        states[:, permutation], mask[:, permutation], None, adjacency[:, permutation][:, :, permutation]
    )
    torch.testing.assert_close(permuted, out[:, permutation], atol=1e-5, rtol=1e-5)
    # The graph matters: removing an edge changes the encoding of its endpoints.
    cut = adjacency.clone()
    cut[0, 0, 4] = cut[0, 4, 0] = 0
    assert (encoder(states, mask, None, cut)[0, 4] - out[0, 4]).abs().max() > 1e-5


def test_position_encodings_read_the_sa_te_image_graph():
    """SA-TE image slots used to come out unconnected: LPE was then a one-hot slot index and the GNN a per-node map.
    With each image slot standing for its section, both read the page's structure."""
    from PIL import Image

    from processing.data.bpe_tokenizer import train_bpe_tokenizer
    from processing.image_source import clip_image_processor
    from processing.page_graph import PageGraph
    from processing.processing_mmgl import MMGLProcessor
    from tests.modeling_helpers import TINY_CLIP
    from tests.test_sa_te_layout import TARGET, hand_page

    page = hand_page()
    for section in page["sections"]:  # the images in memory: no folder needed
        for image in section["images"]:
            image["image"] = Image.new("RGB", (8, 8), (len(image.pop("path")) * 20, 9, 9))
    tokenizer = train_bpe_tokenizer([s["text"] or s["title"] for s in page["sections"]], vocab_size=300)
    processor = MMGLProcessor(clip_image_processor("ViT-B-32", TINY_CLIP), tokenizer, context="all",
                              neighbor_encoding="sa_te", max_text_neighbors=5, neighbor_context_length=16)
    example = processor.build_example(PageGraph.from_dict(page), TARGET)
    adjacency = example["neighbor_adjacency"]  # slots m1, m2 (the target's), x1, o1, t1: as in test_sa_te_layout
    assert example["image_neighbor_mask"].tolist() == [1] * 5 and adjacency.sum() == 8  # 4 undirected edges
    edge_index = adjacency.nonzero().t()
    # LPE: m1, m2, x1, t1 form one connected component (one zero eigenvalue of the normalised Laplacian) and o1 is
    # isolated (L_ii = 1, as in PyG); the encodings are the eigenvectors. With no edge at all every eigenvalue is 1
    # and the encoding a one-hot slot index.
    laplacian = normalized_laplacian(edge_index, 5)
    eigenvalues = torch.linalg.eigvalsh(laplacian)
    assert int((eigenvalues.abs() < 1e-9).sum()) == 1 and int(((eigenvalues - 1).abs() > 1e-9).sum()) == 4
    pe = laplacian_eigenvectors(edge_index, 5, k=3).double()
    for column in range(3):
        torch.testing.assert_close(laplacian @ pe[:, column], eigenvalues[column + 1] * pe[:, column], atol=1e-6, rtol=0)
    unconnected = laplacian_eigenvectors(torch.zeros(2, 0, dtype=torch.long), 5, k=3)
    assert sorted(unconnected.abs().sum(0).tolist()) == [1.0, 1.0, 1.0] and (unconnected.abs().sum(1) <= 1).all()
    assert not torch.equal(pe.float().abs(), unconnected.abs())
    # GNN (one GCN layer): changing m1's state changes the encodings of its neighbours m2 and x1 only.
    torch.manual_seed(0)
    encoder = MMGLGNNPositionEncoding(tiny_config(position_encoding="gnn", gnn_type="gcn", gnn_num_layers=1), dim=8).eval()
    states, mask = torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.long)
    changed = states.clone()
    changed[0, 0] += 1.0
    moved = (encoder(changed, mask, None, adjacency[None]) - encoder(states, mask, None, adjacency[None])).abs().amax(-1)[0]
    assert (moved > 1e-6).tolist() == [True, True, True, False, False]
