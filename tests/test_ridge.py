"""Closed-form ridge head: per-slide centring, the closed form by hand, save/load, and real signal."""
import numpy as np
import pytest
import torch

from stgraph.models.ridge import RidgeRegressor, center_per_slide


def test_center_per_slide_by_hand():
    y = np.array([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0], [20.0, 0.0]])
    out = center_per_slide(y, ["a", "a", "b", "b"])
    np.testing.assert_allclose(out, [[-1, -2], [1, 2], [-5, 0], [5, 0]])


def test_closed_form_matches_the_normal_equations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 3)) + 5
    model = RidgeRegressor(alpha=2.0, n_components=6, center_targets=False).fit(x, y)
    # With q = F the PCA rotation does not change the ridge solution on standardised features.
    xs = (x - x.mean(0)) / x.std(0)
    w = np.linalg.solve(xs.T @ xs + 2.0 * np.eye(6), xs.T @ (y - y.mean(0)))
    expected = xs @ w + y.mean(0)
    got = model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_recovers_a_linear_signal_and_round_trips_through_state_dict():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 20))
    w = rng.normal(size=(20, 5))
    ids = np.repeat([0, 1, 2], 100)
    y = np.maximum(x @ w + 10 + 3 * ids[:, None], 0)  # per-slide offsets the centring removes
    model = RidgeRegressor(alpha=1.0, n_components=20).fit(x[:200], y[:200], ids[:200])
    pred = model(torch.as_tensor(x[200:], dtype=torch.float32)).numpy()
    r = [np.corrcoef(pred[:, g], y[200:, g])[0, 1] for g in range(5)]
    assert min(r) > 0.95
    assert (pred >= 0).all()
    clone = RidgeRegressor(alpha=1.0, n_components=20)
    clone.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(clone(torch.as_tensor(x[200:], dtype=torch.float32)).numpy(), pred)


def test_errors():
    with pytest.raises(ValueError, match="alpha"):
        RidgeRegressor(alpha=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        RidgeRegressor()(torch.zeros(2, 3))
    model = RidgeRegressor(n_components=2).fit(np.random.rand(10, 3), np.random.rand(10, 2))
    with pytest.raises(ValueError, match="fitted on 3 features"):
        model(torch.zeros(2, 4))


def test_stgraph_config_trains_saves_and_predicts(tiny_config, synthetic_slides, tmp_path):
    """The recommended config end to end on synthetic slides: context views widen the features, the run
    folder round-trips, predictions beat the mean profile, and smoothing runs on the query graph."""
    from stgraph.inference import extend_reference, load_run, predict_slide
    from stgraph.training import train_model

    config = tiny_config("stgraph.yaml", "model.ridge.alpha=10", "model.ridge.n_components=16")
    train, test = list(synthetic_slides[:2]), synthetic_slides[2]
    run = train_model(config, train, out=tmp_path / "run")
    assert run.result.history.empty
    n_feat = run.model.head.x_mean.numel()
    backbone = run.model.image_encoder.num_features
    assert n_feat == 4 * backbone  # [patch ‖ 2× crop] and the neighbour mean of both
    loaded = load_run(tmp_path / "run")
    pred = predict_slide(loaded, test)
    np.testing.assert_allclose(pred.X, predict_slide(run, test).X, rtol=1e-5, atol=1e-6)
    true = run.preprocessor.expression(test)
    r = [np.corrcoef(pred.X[:, g], true[:, g])[0, 1] for g in range(true.shape[1]) if true[:, g].std() > 0]
    assert np.nanmean(r) > 0.3, np.nanmean(r)
    assert (pred.X >= 0).all()
    loaded.config.inference.smoothing = 0.5
    smoothed = predict_slide(loaded, test)
    assert not np.allclose(smoothed.X, pred.X)
    with pytest.raises(ValueError, match="retrain"):
        extend_reference(loaded, [test], save=False)


def test_context_views_need_cached_features(tiny_config):
    """Checked when the config is loaded, before any data is read."""
    with pytest.raises(ValueError, match="cached features"):
        tiny_config("stgraph.yaml", "model.image_encoder.cache_features=false", "model.image_encoder.freeze=none")
    with pytest.raises(ValueError, match="inference.smoothing"):
        tiny_config("stgraph.yaml", "inference.smoothing=1.5")
