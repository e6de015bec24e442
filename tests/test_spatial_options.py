"""Spatial options of the recommended config: neighbour context of features, graph smoothing of predictions."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from stgraph.inference.smoothing import smooth_on_graph
from stgraph.nn.context import neighbour_mean

# Path graph 0 – 1 – 2 plus an isolated node 3 (edges both ways, one self loop that must be ignored).
EDGES = torch.tensor([[0, 1, 1, 2, 2], [1, 0, 2, 1, 2]])
X = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0]])


def test_neighbour_mean_by_hand():
    expected = torch.tensor([[3.0, 2.0], [3.0, 2.0], [3.0, 2.0], [7.0, 7.0]])
    # node 0: mean(x1); node 1: mean(x0, x2) = (3, 2); node 2: mean(x1), self loop ignored; node 3 alone.
    assert torch.equal(neighbour_mean(X, EDGES), expected)


def test_smoothing_by_hand():
    adj = sp.csr_matrix((np.ones(5), (EDGES[0].numpy(), EDGES[1].numpy())), shape=(4, 4))
    pred = X.numpy()
    one = smooth_on_graph(pred, adj, alpha=0.5, steps=1)
    expected = 0.5 * pred + 0.5 * np.array([[3, 2], [3, 2], [3, 2], [7, 7]], dtype=np.float32)
    np.testing.assert_allclose(one, expected)
    two = smooth_on_graph(pred, adj.toarray(), alpha=0.5, steps=2)
    np.testing.assert_allclose(two, smooth_on_graph(one, adj, alpha=0.5, steps=1), rtol=1e-6)
    np.testing.assert_array_equal(smooth_on_graph(pred, adj, alpha=0.0), pred)
    assert (smooth_on_graph(np.abs(pred), adj, alpha=1.0, steps=3) >= 0).all()


def test_smoothing_removes_independent_noise():
    """On a 30 × 30 grid with a smooth signal and i.i.d. noise, smoothing raises the correlation to truth."""
    from stgraph.graph.spatial import radius_adjacency

    rng = np.random.default_rng(0)
    xy = np.stack(np.meshgrid(np.arange(30), np.arange(30)), -1).reshape(-1, 2).astype(float)
    truth = np.sin(xy[:, :1] / 5.0) + np.cos(xy[:, 1:] / 7.0)
    noisy = truth + rng.normal(0, 1.0, size=truth.shape)
    adj, _ = radius_adjacency(xy, radius=1.5)
    smoothed = smooth_on_graph(noisy, adj, alpha=0.8, steps=2)
    r = lambda a: np.corrcoef(a.ravel(), truth.ravel())[0, 1]
    assert r(smoothed) > r(noisy) + 0.2


def test_smoothing_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        smooth_on_graph(np.zeros((2, 1)), np.eye(2), alpha=1.5)
    with pytest.raises(ValueError, match="does not match"):
        smooth_on_graph(np.zeros((3, 1)), np.eye(2))
