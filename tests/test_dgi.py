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
        # ℓ = zᵀ W s / H (H = 8)
        d_pos = torch.sigmoid(pos @ model.weight @ summary / 8)
        d_neg = torch.sigmoid(neg @ model.weight @ summary / 8)
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


def test_loss_from_logits_stays_finite_with_a_gradient_at_large_logits():
    """Logits of ±60 (where float32 σ rounds to 0/1): the loss is the exact softplus value, not 34.54."""
    model = GraphInfomax(4, 2)
    with torch.no_grad():
        model.weight.copy_(2 * torch.eye(2))  # ℓ = zᵀ W s / H with H = 2: W = 2 I reads z's first entry
    summary = torch.tensor([1.0, 0.0])
    # Positives scored −60 and negatives +60: the worst discriminator possible.
    pos = torch.tensor([[-60.0, 0.0], [-60.0, 1.0]], requires_grad=True)
    neg = torch.tensor([[60.0, 0.0], [60.0, 2.0]], requires_grad=True)
    loss = model.loss(pos, neg, summary)
    # −log σ(−60) − log(1 − σ(60)) = 2·log(1 + e^60) ≈ 120 (hand-computed: log(1+e^60) = 60 + log(1+e^-60)).
    assert float(loss) == pytest.approx(120.0, rel=1e-6)
    loss.backward()
    # d/dℓ softplus(−ℓ) = −σ(−ℓ) ≈ −1 per positive row (mean over 2 rows → −0.5 on the summary direction).
    assert pos.grad[:, 0].tolist() == pytest.approx([-0.5, -0.5], rel=1e-6)
    assert neg.grad[:, 0].tolist() == pytest.approx([0.5, 0.5], rel=1e-6)


def test_input_layernorm_makes_the_encoder_scale_invariant():
    x, edge_index, _ = _two_community_graph()
    model = GraphInfomax(16, 8)
    with torch.no_grad():
        assert torch.allclose(model.embed(x, edge_index), model.embed(40.0 * x + 3.0, edge_index), atol=1e-4)
    plain = GraphInfomax(16, 8, normalize=False)
    with torch.no_grad():
        assert not torch.allclose(plain.embed(x, edge_index), plain.embed(40.0 * x, edge_index), atol=1e-2)


def _real_magnitude_features(seed: int = 0):
    """400 spots on a 20 × 20 grid with features of the scale of pooled mobilenetv2 features of HER2+
    patches (non-negative, mean ≈ 0.4, max ≈ 15, L2 norm ≈ 25 per spot); the right half of the grid has a
    3× stronger response on 200 of the 1280 channels."""
    from sklearn.neighbors import radius_neighbors_graph

    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2)
    adj = radius_neighbors_graph(xy, 1.5).tocoo()
    edge_index = torch.tensor(np.stack([adj.row, adj.col]), dtype=torch.long)
    feats = rng.gamma(0.6, 0.6, size=(400, 1280))
    feats[:, :200] *= 1 + 2 * (xy[:, :1] >= 10)
    return torch.tensor(feats, dtype=torch.float32), edge_index


def _train_steps(model, x, edge_index, steps: int):
    """AdamW as the configs have it; per step: the loss and the mean |change of the logits| the step made."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    losses, moves = [], []
    for step in range(steps):
        torch.manual_seed(step)
        pos, neg, summary = model(x, edge_index)
        loss = model.loss(pos, neg, summary)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            before = model.logits(pos, summary)
            torch.manual_seed(step)
            after = model.logits(*model(x, edge_index)[::2])
        losses.append(loss.item())
        moves.append(float((after - before).abs().mean()))
    return np.array(losses), np.array(moves)


def test_dgi_learns_on_real_magnitude_features(single_thread):
    """At the magnitude of real features (1280-d pooled mobilenetv2 outputs, H = 256) the discriminator starts
    at chance, no optimiser step moves its logits by more than a fraction of a unit, the loss never climbs
    above chance, and it ends clearly below. Without the 1/H logit scale the first steps move the logits by
    ~50 and the loss jumps to tens (the ST-GCHB image-DGI oscillation of issue 16)."""
    x, edge_index = _real_magnitude_features()
    assert 0.3 < float(x.mean()) < 0.6 and float(x.norm(dim=1).mean()) > 20
    torch.manual_seed(0)
    losses, moves = _train_steps(GraphInfomax(1280, 256), x, edge_index, 40)
    chance = 2 * np.log(2)
    assert np.isfinite(losses).all()
    assert abs(losses[0] - chance) < 0.05, losses[:5]
    assert moves.max() < 1.0, moves[:5]
    assert losses.max() < chance + 0.05, losses
    assert len(set(np.round(losses, 6))) > 30          # it moves from step to step
    assert np.median(losses[-10:]) < chance - 0.2, losses[-10:]


def test_dgi_learns_on_pca_magnitude_gene_inputs(single_thread):
    """The gene branch's input: 256 PCA scores whose leading components have sd ~3 and reach ~17."""
    x, edge_index = _real_magnitude_features()
    rng = np.random.default_rng(1)
    basis = torch.tensor(rng.normal(size=(1280, 256)) / np.sqrt(1280), dtype=torch.float32)
    pcs = (x - x.mean(0)) @ basis * torch.linspace(6.0, 0.5, 256)
    torch.manual_seed(0)
    losses, moves = _train_steps(GraphInfomax(256, 256), pcs, edge_index, 40)
    chance = 2 * np.log(2)
    assert abs(losses[0] - chance) < 0.05 and moves.max() < 1.0, (losses[:5], moves[:5])
    assert losses.max() < chance + 0.05 and np.median(losses[-10:]) < chance - 0.2, losses
