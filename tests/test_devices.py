"""Every model fits and predicts on the device (and in the dtype) it lives on.

A machine without a GPU still checks the placement logic: the ``meta`` device and float64 stand in for a
GPU (a tensor created on the CPU instead of the module's device has the wrong device, or the wrong dtype,
exactly as it would beside a CUDA module). With a GPU, the last test trains, evaluates and predicts each
model kind on it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stgraph.models.ridge import RidgeRegressor
from stgraph.models.spot_graph import SpotGraphRegressor
from tests.conftest import CONFIGS, tiny_overrides
from tests.test_spot_graph import _slides


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t for t in (*module.parameters(), *module.buffers()) if t.numel()]


def test_ridge_fits_on_the_device_it_was_moved_to():
    x, y, _, _ = _slides(n_slides=1, n_side=8, n_feat=10, n_genes=4)[0]
    ridge = RidgeRegressor(alpha=1.0, n_components=5, gene_rank=2).to("meta")
    ridge.fit(x, y)  # fitted in numpy, stored where the module lives (before: new CPU tensors)
    assert ridge.is_fitted and {t.device.type for t in _tensors(ridge)} == {"meta"}
    assert ridge(torch.zeros(3, 10, device="meta")).device.type == "meta"


@pytest.mark.parametrize("regressor", ["ridge", "spot_graph"])
def test_fitted_buffers_follow_the_module_dtype_and_inputs_follow_the_buffers(regressor):
    slides = _slides(n_slides=3, n_side=6, n_feat=10, n_genes=4)
    (xq, _, eq, _) = slides[2]
    if regressor == "ridge":
        x = np.concatenate([s[0] for s in slides[:2]])
        y = np.concatenate([s[1] for s in slides[:2]])
        make = lambda: RidgeRegressor(alpha=1.0, n_components=5)  # noqa: E731
        fit = lambda m: m.fit(x, y, np.repeat([0, 1], len(x) // 2))  # noqa: E731
        predict = lambda m: m(torch.as_tensor(xq, dtype=torch.float32)).double().numpy()  # noqa: E731
    else:
        make = lambda: SpotGraphRegressor(n_components=5, alpha=1.0, hidden=8, rank=2, members=1, epochs=2, seed=0)  # noqa: E731
        fit = lambda m: m.fit(slides[:2])  # noqa: E731
        predict = lambda m: m.predict(xq, eq)  # noqa: E731
    # moved before the fit: everything the fit creates is float64 (before: float32 CPU buffers, float32 nets)
    wide = fit(make().to(torch.float64))
    assert {t.dtype for t in _tensors(wide)} == {torch.float64}
    # moved after the fit: float32 inputs are cast to the module's dtype (before: a dtype mismatch error)
    narrow = fit(make())
    expected = predict(narrow)
    np.testing.assert_allclose(predict(narrow.to(torch.float64)), expected, rtol=1e-4, atol=1e-4)


def test_a_run_predicts_after_its_model_is_moved(tiny_config, synthetic_slides):
    """The product's path: a fitted stgraph_graph run moved to another dtype predicts the same query."""
    from stgraph.inference import predict_slide
    from stgraph.preprocess.prepare import prepare_slide
    from stgraph.training import train_model

    config = tiny_config("stgraph_graph.yaml", "model.ridge.alpha=10", "model.ridge.alpha_grid=[]",
                         "model.ridge.gene_rank_grid=[]", "model.spot_graph.hidden=8", "model.spot_graph.members=1",
                         "model.spot_graph.epochs=2", "model.spot_graph.select_epochs=[]")
    run = train_model(config, list(synthetic_slides[:2]))
    expected = predict_slide(run, synthetic_slides[2]).X
    query = prepare_slide(synthetic_slides[2], config, image_encoder=run.model.image_encoder, with_graph=True)
    run.model.head.to(torch.float64)
    np.testing.assert_allclose(np.maximum(run.model.predict_prepared(query), 0), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("config", ["stgraph.yaml", "stgraph_graph.yaml", "cpu/bleep.yaml"])
def test_each_model_kind_trains_evaluates_and_predicts_on_cuda(tmp_path, synthetic_slides, config):
    from stgraph.cli.main import main

    paths = []
    for ad in synthetic_slides:
        path = tmp_path / f"{ad.obs['slide_id'].iloc[0]}.h5ad"
        ad.write_h5ad(path)
        paths.append(str(path))
    over = tiny_overrides(tmp_path / "cache") + ["train.device=cuda", "model.spot_graph.members=1",
                                                 "model.spot_graph.select_epochs=[]", "model.spot_graph.epochs=2"]
    assert main(["train", "--config", str(CONFIGS / config), "--data", *paths[:2], "--out", str(tmp_path / "run"),
                 *over]) == 0
    assert main(["predict", "--model", str(tmp_path / "run"), "--device", "cuda", "--slide", paths[2], "--out",
                 str(tmp_path / "pred.h5ad")]) == 0
    assert main(["evaluate", "--config", str(CONFIGS / config), "--data", *paths, "--no-baselines", "--device", "cuda",
                 "--only-folds", synthetic_slides[2].obs["slide_id"].iloc[0], "--out", str(tmp_path / "eval"),
                 *over]) == 0
