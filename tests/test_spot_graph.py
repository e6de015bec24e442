"""The learned spatial regressor (model.name: spot_graph) on synthetic slides with real signal."""
import numpy as np
import pytest
import torch

from stgraph.models.spot_graph import SpotGraphNet, SpotGraphRegressor, _pearson_loss


def _grid_edges(n_side: int) -> np.ndarray:
    idx = np.arange(n_side * n_side).reshape(n_side, n_side)
    pairs = [(idx[i, j], idx[i + di, j + dj]) for i in range(n_side) for j in range(n_side)
             for di, dj in ((0, 1), (1, 0)) if i + di < n_side and j + dj < n_side]
    a = np.array(pairs).T
    return np.concatenate([a, a[::-1]], 1)


def _slides(n_slides=3, n_side=10, n_feat=30, n_genes=20, seed=0):
    """Features x; targets = linear part + a non-linear part that depends on the neighbours' features
    (what a ridge on the spot's own features cannot see) + a slide offset + noise."""
    rng = np.random.default_rng(seed)
    w_lin = rng.normal(size=(n_feat, n_genes))
    w_nl = rng.normal(size=(4, n_genes))
    edges = _grid_edges(n_side)
    out = []
    for s in range(n_slides):
        x = rng.normal(size=(n_side * n_side, n_feat))
        nb = np.zeros_like(x)
        np.add.at(nb, edges[1], x[edges[0]])
        nb /= np.bincount(edges[1], minlength=len(x))[:, None]
        y = x @ w_lin / np.sqrt(n_feat) + np.tanh(2 * nb[:, :4]) ** 2 @ w_nl + 5.0 * s
        y += 0.2 * rng.normal(size=y.shape)
        out.append((x, y, edges, f"s{s}"))
    return out


def _acg(pred, true):
    return np.mean([np.corrcoef(pred[:, g], true[:, g])[0, 1] for g in range(true.shape[1])])


def test_pearson_loss_by_hand():
    t = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    p = torch.tensor([[2.0, 0.0], [4.0, 0.0], [6.0, 1.0]])  # r = 1 for gene 0, r = -0.5 for gene 1
    assert float(_pearson_loss(p, t)) == pytest.approx(1 - (1.0 - 0.5) / 2, abs=1e-5)


def test_neighbour_attention_weights_sum_to_one():
    net = SpotGraphNet(6, 3, hidden=8, rank=2, dropout=0.0)
    h = torch.randn(5, 8)
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    v = net.v(h)
    out = net._neighbour_view(h, ei)
    # spot 4 has no neighbours: it attends only to itself
    torch.testing.assert_close(out[4], v[4])
    # spot 0 attends over {1, 0}: a convex combination of their values
    lo, hi = torch.minimum(v[0], v[1]), torch.maximum(v[0], v[1])
    assert bool(((out[0] >= lo - 1e-6) & (out[0] <= hi + 1e-6)).all())


def test_loss_terms_move_and_model_beats_the_mean_predictor():
    """Trained on two slides, scored on the third: the MSE and Pearson terms fall, and the model beats the
    mean predictor by far (seeds 0–1: centred MSE 0.42–0.43 × the mean predictor's, ACG 0.77; the test asks
    for < 0.6 × and > 0.6). It does NOT beat its own ridge base here (ACG 0.77 vs 0.79): the learned residual
    overfits 200 training spots, which the test records rather than hides."""
    slides = _slides()
    train, (xq, yq, eq, _) = slides[:2], slides[2]
    model = SpotGraphRegressor(n_components=30, alpha=10.0, hidden=32, rank=8, members=2, epochs=40,
                               lr=3e-3, dropout=0.1, feature_noise=0.05, pearson_weight=0.5, seed=0)
    model.fit(train)
    hist = model.history
    first = [h for h in hist if h["epoch"] <= 3]
    last = [h for h in hist if h["epoch"] > 37]
    for term in ("mse", "pearson"):
        assert np.mean([h[term] for h in last]) < 0.8 * np.mean([h[term] for h in first]), term
    pred = model.predict(xq, eq)
    centred = yq - yq.mean(0)
    assert np.mean((pred - pred.mean(0) - centred) ** 2) < 0.6 * np.mean(centred ** 2)
    assert _acg(pred, yq) > 0.6


def test_epochs_chosen_inside_training_slides_and_state_round_trips():
    slides = _slides(n_side=6, n_feat=12, n_genes=5)
    model = SpotGraphRegressor(n_components=12, alpha=10.0, hidden=16, rank=4, members=1, epochs=5,
                               select_epochs=(2, 6), seed=1).fit(slides[:2])
    assert model.chosen_epochs in (2, 6)
    assert max(h["epoch"] for h in model.history) == model.chosen_epochs
    copy = SpotGraphRegressor(n_components=12, alpha=10.0, hidden=16, rank=4, members=1)
    copy.load_state_dict(model.state_dict())
    np.testing.assert_allclose(copy.predict(slides[2][0], slides[2][2]), model.predict(slides[2][0], slides[2][2]),
                               rtol=1e-5, atol=1e-5)


def test_config_trains_saves_and_predicts(tiny_config, synthetic_slides, tmp_path):
    from stgraph.inference import load_run, predict_slide
    from stgraph.training import train_model

    config = tiny_config("stgraph_graph.yaml", "model.spot_graph.alpha=10", "model.spot_graph.n_components=16",
                         "model.spot_graph.hidden=16", "model.spot_graph.members=1", "model.spot_graph.epochs=5",
                         "model.spot_graph.select_epochs=[]")
    run = train_model(config, list(synthetic_slides[:2]), out=tmp_path / "run")
    pred = predict_slide(run, synthetic_slides[2]).X
    np.testing.assert_allclose(predict_slide(load_run(tmp_path / "run"), synthetic_slides[2]).X, pred,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="neighbours"):
        tiny_config("stgraph_graph.yaml", "model.spot_graph.neighbours=max")


def test_reduced_rank_puts_the_whole_prediction_in_the_gene_programs():
    """With gene_rank r the base ridge and the learned residual are projected onto the same r programs: the
    centred prediction has rank r (the full-rank model's has more), and the programs survive a save/load."""
    slides = _slides(n_side=6, n_feat=12, n_genes=10)
    kw = dict(n_components=12, alpha=10.0, hidden=16, rank=4, members=1, epochs=3, seed=0)
    reduced = SpotGraphRegressor(gene_rank=2, **kw).fit(slides[:2])
    full = SpotGraphRegressor(**kw).fit(slides[:2])
    x, e = slides[2][0], slides[2][2]
    rank = lambda p: np.linalg.matrix_rank(p - p.mean(0), tol=1e-4 * np.abs(p).max())  # noqa: E731
    assert rank(reduced.predict(x, e)) == 2 and rank(full.predict(x, e)) > 2
    copy = SpotGraphRegressor(gene_rank=2, **kw)
    copy.load_state_dict(reduced.state_dict())
    np.testing.assert_allclose(copy.predict(x, e), reduced.predict(x, e), rtol=1e-5, atol=1e-5)
