"""How far to trust a prediction: reliability, conformal intervals, out-of-distribution flags (stgraph.trust)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from stgraph.trust import (INTERVAL_LEVELS, calibrate_intervals, calibrate_ood, fold_gene_r, intervals,
                           knn_distance, ood_scores, slide_expected_r, slide_out_of_distribution)
from stgraph.trust.conformal import level_index
from tests.conftest import CONFIGS, tiny_overrides


# ------------------------------------------------------------------------------------------ by hand
def test_fold_gene_r_and_the_slide_adjustment_by_hand():
    pred = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, 5.0], [3.0, 2.0, 5.0]])
    true = np.array([[1.0, 0.0, 1.0], [3.0, 1.0, 2.0], [5.0, 0.0, 3.0]])
    r = fold_gene_r(pred, true)
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1]) and np.isnan(r[2])  # constant predictions: undefined
    # expected r × min(sd on this slide / mean sd on held-out training slides, 2)
    got = slide_expected_r(np.array([0.5, 0.4, 0.3]), np.array([np.std([1, 2, 3]) * 2, 1.0, 0.0]), pred)
    np.testing.assert_allclose(got, [0.25, 0.0, 0.0])
    far = slide_expected_r(np.array([0.5]), np.array([0.1]), pred[:, :1])
    assert far[0] == pytest.approx(1.0)  # capped at twice


def test_conformal_scores_quantiles_and_intervals_by_hand():
    # 9 spots of one gene: residuals 0..8 around predictions of 1
    oof = np.ones((9, 1))
    y = oof + np.arange(9.0)[:, None]
    c, q = calibrate_intervals(y, oof)
    assert c[0] == pytest.approx(4.0)  # median |residual|
    scores = np.arange(9.0) / (4.0 + 1.0)
    # level 0.8 with n = 9: the ceil(10 × 0.8) / 9 = 8/9 quantile ("higher"), the 8th smallest score
    assert q[level_index(0.8), 0] == pytest.approx(np.sort(scores)[7])
    lower, upper = intervals(np.array([[0.5], [3.0]]), c, q, 0.8)
    half = np.sort(scores)[7] * (4.0 + np.array([0.5, 3.0]))
    np.testing.assert_allclose(lower[:, 0], np.maximum([0.5, 3.0] - half, 0), rtol=1e-6)
    np.testing.assert_allclose(upper[:, 0], [0.5, 3.0] + half, rtol=1e-6)
    assert level_index(0.9) == list(INTERVAL_LEVELS).index(0.9) and INTERVAL_LEVELS[level_index(0.905)] == 0.91
    with pytest.raises(ValueError, match="interval level"):
        level_index(0.999)


def test_knn_distance_and_ood_scores_by_hand():
    ref = np.array([[0.0], [1.0], [2.0], [10.0]])
    np.testing.assert_allclose(knn_distance(np.array([[1.0], [10.0]]), ref, k=2), [0.5, 4.0])
    emb = np.concatenate([np.zeros((5, 2)), np.ones((5, 2))]) + np.arange(10)[:, None] * 0.01
    reference, cal, scale = calibrate_ood(emb, ["a"] * 5 + ["b"] * 5, k=1)
    assert len(cal) == 10 and np.all(np.diff(cal) >= 0) and scale.shape == (2,)
    score, inside = ood_scores(np.array([[0.5, 0.5], [50.0, -50.0]]), reference, cal, k=1, quantile=0.975,
                               scale=scale)
    assert inside.tolist() == [True, False] and score[1] > 10 * score[0]
    assert slide_out_of_distribution(np.array([20.0, 30.0, 0.1]), cal) and not slide_out_of_distribution(score[:1], cal)


# -------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    """The recommended method (stgraph.yaml, tiny) trained on three synthetic slides with its trust record, and
    the fourth slide predicted with 90 % intervals."""
    from stgraph.config import load_config
    from stgraph.data.synthetic import make_synthetic_collection
    from stgraph.inference import load_run, predict_slide
    from stgraph.training import train_model

    tmp = tmp_path_factory.mktemp("trust")
    slides = make_synthetic_collection(n_slides=4, n_rows=12, n_cols=12, n_genes=40, spacing=32, seed=0)
    cfg = load_config(CONFIGS / "stgraph.yaml", tiny_overrides(tmp / "cache") + ["trust.reliability=true",
                                                                                  "data.genes=shared"])
    train_model(cfg, slides[:3], out=tmp / "run")
    run = load_run(tmp / "run")
    return run, slides, predict_slide(run, slides[3], interval=0.9), tmp


def test_a_run_records_its_trust_and_a_prediction_carries_it(trusted):
    import json

    run, slides, pred, tmp = trusted
    info = json.loads((tmp / "run" / "run.json").read_text())
    assert info["trust"]["folds"] == ["slide0", "slide1", "slide2"] and "trust.npz" in info["files"]
    assert "nested (λ, rank) choice" in info["trust"]["method"]  # no extra fit for the ridge
    for col in ("expected_r", "expected_r_sd", "expected_r_slide", "reliable"):
        assert col in pred.var
    assert pred.var["reliable"].dtype == bool and 0 < pred.var["reliable"].sum() < pred.n_vars + 1
    assert (pred.layers["lower"] <= pred.X).all() and (pred.X <= pred.layers["upper"]).all()
    assert (pred.layers["lower"] >= 0).all() and pred.uns["stgraph"]["interval_level"] == 0.9
    assert "ood_score" in pred.obs and pred.obs["in_distribution"].dtype == bool


def test_expected_r_ranks_genes_by_their_realised_r_and_intervals_cover(trusted):
    """On the held-out slide: the expected r ranks genes by their realised r (Spearman 0.81–0.89 over seeds
    0–3; the genes' mean expression, what a user would otherwise go by, ranks them at −0.05–0.01), and the
    90 % intervals cover 0.90–0.915 of the values (seeds 0–3)."""
    from scipy.stats import spearmanr

    from stgraph.data import pp

    run, slides, pred, tmp = trusted
    truth = pp.log_normalised(slides[3])[:, pred.var_names].X.toarray()
    real = fold_gene_r(pred.X, truth)
    ok = ~np.isnan(real)
    rho = spearmanr(pred.var["expected_r"].to_numpy()[ok], real[ok]).correlation
    naive = spearmanr(truth.mean(0)[ok], real[ok]).correlation
    assert rho > 0.6 and rho - naive > 0.5, (rho, naive)
    reliable = pred.var["reliable"].to_numpy() & ok
    assert real[reliable].mean() > real[ok & ~reliable].mean() or not (ok & ~reliable).any()
    coverage = ((truth >= pred.layers["lower"]) & (truth <= pred.layers["upper"])).mean()
    assert 0.82 <= coverage <= 0.97, coverage


def test_an_inverted_image_is_out_of_distribution_and_named(trusted, caplog):
    from sklearn.metrics import roc_auc_score

    from stgraph.inference import predict_slide

    run, slides, pred, tmp = trusted
    inverted = slides[3].copy()
    entry = next(iter(inverted.uns["spatial"].values()))
    entry["images"] = {"fullres": 255 - entry["images"]["fullres"]}
    with caplog.at_level(logging.WARNING, logger="stgraph"):
        shifted = predict_slide(run, inverted)
    assert "looks unlike the training slides" in caplog.text and shifted.uns["stgraph"]["ood_warning"]
    assert pred.uns["stgraph"]["ood_warning"] is False
    auc = roc_auc_score(np.r_[np.zeros(pred.n_obs), np.ones(shifted.n_obs)],
                        np.r_[pred.obs["ood_score"], shifted.obs["ood_score"]])
    assert auc > 0.95


def test_interval_options_are_checked_before_compute(trusted, tmp_path, capsys):
    from stgraph.cli.main import main

    run, slides, pred, tmp = trusted
    slides[3].write_h5ad(tmp_path / "q.h5ad")
    assert main(["predict", "--model", str(tmp / "run"), "--slide", str(tmp_path / "q.h5ad"), "--interval", "1.5",
                 "--out", str(tmp_path / "p.h5ad")]) == 2
    assert "--interval must be a level in [0.50, 0.99]" in capsys.readouterr().err
    assert not (tmp_path / "p.h5ad").exists()


def test_a_trainer_model_retrains_once_per_held_out_slide(synthetic_slides, tmp_path):
    """BLEEP (the Trainer) has no nested choice to reuse: trust trains it once more per training slide."""
    from stgraph.config import load_config
    from stgraph.inference import predict_slide
    from stgraph.training import train_model

    cfg = load_config(CONFIGS / "cpu" / "bleep.yaml", tiny_overrides(tmp_path / "cache", epochs=2) + [
        "trust.reliability=true", "data.harmony=false"])
    run = train_model(cfg, list(synthetic_slides[:2]), out=tmp_path / "run")
    assert run.trust is not None and "2 extra trainings" in run.trust.method
    assert np.isfinite(run.trust.expected_r).any()
    pred = predict_slide(run, synthetic_slides[2], interval=0.8)
    assert {"lower", "upper"} <= set(pred.layers) and "expected_r" in pred.var
    # switched off: no record, and intervals are refused with the reason
    off = load_config(CONFIGS / "cpu" / "bleep.yaml", tiny_overrides(tmp_path / "cache2", epochs=1) + [
        "data.harmony=false"])
    quiet = train_model(off, list(synthetic_slides[:2]))
    assert quiet.trust is None
    from stgraph.inference.predict import PredictionOptionError

    with pytest.raises(PredictionOptionError, match="no trust record"):
        predict_slide(quiet, synthetic_slides[2], interval=0.9)


def test_genes_lists_a_runs_genes_by_reliability_and_plots_warn_about_unreliable_ones(trusted, tmp_path, capsys,
                                                                                    caplog):
    import pandas as pd

    from stgraph.cli.main import main
    from stgraph.inference import write_prediction

    run, slides, pred, tmp = trusted
    assert main(["genes", str(tmp / "run"), "--min-r", "0.3", "--out", str(tmp_path / "g.csv")]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "g.csv")
    assert (table["expected_r"] >= 0.3).all() and list(table["expected_r"]) == sorted(table["expected_r"], reverse=True)
    assert "genes reliable (expected r ≥ 0.3, from 3 held-out training slides" in out
    write_prediction(pred, tmp_path / "p.h5ad")
    worst = pred.var["expected_r"].idxmin()
    with caplog.at_level(logging.WARNING, logger="stgraph"):
        assert main(["plot", "--pred", str(tmp_path / "p.h5ad"), "--genes", worst, "--interval-width",
                     "--out", str(tmp_path / "m.png")]) == 0
    if not pred.var.loc[worst, "reliable"]:
        assert f"unreliable gene(s) drawn: {worst}" in caplog.text
    assert (tmp_path / "m.png").stat().st_size > 1000
