"""Deep Graph Infomax: shapes, the loss formula, reproducible corruption, and that it learns communities."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from torch_geometric.utils import stochastic_blockmodel_graph

from stgraph.losses import dgi_loss
from stgraph.nn import GraphInfomax


def _two_community_graph(seed: int = 0):
    """60-node stochastic block model; 4 of 16 feature dims carry a weak (±0.5σ) community signal."""
    torch.manual_seed(seed)
    edge_index = stochastic_blockmodel_graph([30, 30], [[0.25, 0.02], [0.02, 0.25]])
    y = torch.arange(60) // 30
    x = torch.randn(60, 16)
    x[:, :4] += (y[:, None].float() * 2 - 1) * 0.5
    return x, edge_index, y


def test_shapes_and_summary():
    x, edge_index, _ = _two_community_graph()
    model = GraphInfomax(16, 8)
    pos, neg, summary = model(x, edge_index)
    assert pos.shape == neg.shape == (60, 8) and summary.shape == (8,)
    assert torch.allclose(summary, torch.sigmoid(pos.mean(0)))
    assert torch.equal(model.embed(x, edge_index), pos)


def test_corruption_is_a_row_shuffle_reproducible_by_seed():
    x, edge_index, _ = _two_community_graph()
    model = GraphInfomax(16, 8)
    torch.manual_seed(5)
    _, neg1, _ = model(x, edge_index)
    torch.manual_seed(5)
    _, neg2, _ = model(x, edge_index)
    assert torch.equal(neg1, neg2)
    # Without edges the GCN acts row-wise (self-loops only), so the negatives are a permutation of the positives.
    no_edges = torch.empty(2, 0, dtype=torch.long)
    pos, neg, _ = model(x, no_edges)
    assert not torch.allclose(pos, neg)
    order = lambda t: t[torch.argsort(t[:, 0])]
    assert torch.allclose(order(pos), order(neg), atol=1e-6)


def test_loss_is_the_dgi_bce():
    x, edge_index, _ = _two_community_graph()
    model = GraphInfomax(16, 8)
    with torch.no_grad():
        pos, neg, summary = model(x, edge_index)
        d_pos = torch.sigmoid(pos @ model.weight @ summary)
        d_neg = torch.sigmoid(neg @ model.weight @ summary)
        expected = -(torch.log(d_pos).mean() + torch.log(1 - d_neg).mean())
        assert float(dgi_loss(model, pos, neg, summary)) == pytest.approx(float(expected), rel=1e-5)
        assert float(model.loss(pos, neg, summary)) == pytest.approx(float(expected), rel=1e-5)


@pytest.fixture
def single_thread():
    """Tiny graphs gain nothing from intra-op threads, and on a busy machine thread hand-offs dominate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_training_lowers_loss_and_separates_communities(single_thread):
    x, edge_index, y = _two_community_graph(seed=0)
    torch.manual_seed(0)
    model = GraphInfomax(16, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = model.loss(*model(x, edge_index))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])

    model.eval()
    with torch.no_grad():
        z = model.embed(x, edge_index).numpy()
    raw, labels = x.numpy(), y.numpy()
    assert silhouette_score(z, labels) > silhouette_score(raw, labels) + 0.15
    knn = lambda feats: cross_val_score(KNeighborsClassifier(5), feats, labels, cv=5).mean()
    acc_z, acc_raw = knn(z), knn(raw)
    assert acc_z >= 0.9 and acc_z > acc_raw + 0.1


def test_bad_graph_raises():
    model = GraphInfomax(4, 8)
    with pytest.raises(ValueError, match="only 3 nodes"):
        model(torch.randn(3, 4), torch.tensor([[0, 1], [1, 3]]))
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        model.embed(torch.randn(3, 4), torch.tensor([0, 1, 2]))
