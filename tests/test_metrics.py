"""Metrics against hand-computed values."""
import math

import anndata
import numpy as np
import pandas as pd
import pytest

from stgraph.metrics import (evaluate_arrays, evaluate_prediction, gene_gene_correlation_preservation, gene_sets,
                             hit_at_t, mae, mean_pearson, mse, n_genes_above, pearson_per_gene, per_gene_table,
                             rmse, rmse_zscore, ssim_per_gene, summarize_folds, to_markdown_table, variance_ratio,
                             write_json_atomic)


def test_pearson_hand_computed_and_constant_gene():
    pred = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    true = np.array([[1.0, 0.0, 1.0], [2.0, 1.0, 2.0], [4.0, 2.0, 3.0]])
    r = pearson_per_gene(pred, true)
    # gene 0: p = (1,2,3), t = (1,2,4): centred (-1,0,1) and (-4/3,-1/3,5/3): cov 3, norms sqrt(2), sqrt(42/9)
    assert r[0] == pytest.approx(3 / math.sqrt(2 * 42 / 9), abs=1e-12)
    assert np.isnan(r[1])                # constant prediction
    assert r[2] == pytest.approx(-1.0)  # perfectly anti-correlated
    mean, used, n_nan = mean_pearson(r)
    assert (used, n_nan) == (2, 1) and mean == pytest.approx((r[0] - 1) / 2)


def test_gene_sets_heg_hvg_markers():
    true = np.array([[10.0, 0.0, 5.0, 1.0], [10.0, 8.0, 5.0, 1.1], [10.0, 0.0, 5.0, 0.9]])
    with pytest.warns(UserWarning, match="NOPE"):
        sets = gene_sets(true, ["a", "b", "c", "d"], n=2, markers=["c", "NOPE"])
    assert sets["HEG"] == ["a", "c"]          # highest means
    assert sets["HVG"] == ["b", "d"]          # highest variances
    assert sets["MG"] == ["c"] and sets["ACG"] == ["a", "b", "c", "d"]


def test_error_metrics():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    true = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert mse(pred, true) == pytest.approx((0 + 4 + 9 + 0) / 4)
    assert mae(pred, true) == pytest.approx((0 + 2 + 3 + 0) / 4)
    assert rmse(pred, true) == pytest.approx(math.sqrt(13 / 4))
    # z-scores: every column of two distinct values becomes (-1, 1) or (1, -1)
    # pred cols: (-1,1),(-1,1); true cols: (1,-1),(-1,1) → squared errors 4,4,0,0
    assert rmse_zscore(pred, true) == pytest.approx(math.sqrt(8 / 4))


def test_ssim_identity_and_hand_value():
    x = np.array([[1.0], [2.0], [4.0]])
    assert ssim_per_gene(x, x)[0] == pytest.approx(1.0)
    y = np.array([[4.0], [2.0], [1.0]])
    a, b = x[:, 0] / 4, y[:, 0] / 4
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = a.mean(), b.mean()
    cov = ((a - mx) * (b - my)).mean()
    expected = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (a.var() + b.var() + c2))
    assert ssim_per_gene(x, y)[0] == pytest.approx(expected)
    assert expected < 0  # anti-correlated


def test_hit_at_t():
    pred = np.array([[5, 4, 3, 0, 0], [0, 0, 1, 2, 3]], dtype=float)
    true = np.array([[5, 0, 3, 4, 0], [3, 2, 1, 0, 0]], dtype=float)
    # spot 0: top2 pred {0,1}, true {0,3} → 1/2; spot 1: pred {4,3}, true {0,1} → 0
    assert hit_at_t(pred, true, t=2) == pytest.approx(0.25)
    assert hit_at_t(pred, true, t=2, any_overlap=True) == pytest.approx(0.5)


def test_structure_preservation_and_variance_ratio():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(30, 6))
    assert gene_gene_correlation_preservation(true, true) == pytest.approx(1.0)
    vr = variance_ratio(0.5 * true, true)
    np.testing.assert_allclose(vr, 0.25)


def test_evaluate_arrays_and_anndata():
    rng = np.random.default_rng(1)
    true = rng.gamma(2.0, size=(40, 8))
    pred = true + rng.normal(0, 0.1, size=true.shape)
    pred[:, 7] = 1.0  # constant gene → NaN, excluded
    genes = [f"g{i}" for i in range(8)]
    out = evaluate_arrays(pred, true, genes, markers=["g0", "g1"], n_top=3)
    r = pearson_per_gene(pred, true)
    assert out["pcc_acg"] == pytest.approx(np.nanmean(r))
    assert out["n_nan_genes"] == 1 and out["n_genes"] == 8
    assert out["pcc_mg"] == pytest.approx(r[:2].mean())
    assert out["n_r_gt_0.3"] == n_genes_above(r) == 7
    pa = anndata.AnnData(pred.astype(np.float32), var=pd.DataFrame(index=genes))
    ta = anndata.AnnData(true.astype(np.float32), var=pd.DataFrame(index=genes))
    assert evaluate_prediction(pa, ta)["pcc_acg"] == pytest.approx(out["pcc_acg"], abs=1e-5)
    with pytest.raises(KeyError, match="g7"):
        evaluate_prediction(pa, ta[:, :7])
    table = per_gene_table(pred, true, genes, n_top=3)
    assert table["in_heg"].sum() == 3 and table.loc[7, "pearson"] != table.loc[7, "pearson"]


def test_mean_profile_pearson_is_nan_not_zero():
    true = np.random.default_rng(2).normal(size=(10, 4))
    pred = np.repeat(true.mean(0, keepdims=True), 10, axis=0)
    out = evaluate_arrays(pred, true, list("abcd"))
    assert math.isnan(out["pcc_acg"]) and out["n_nan_genes"] == 4


def test_summary_and_markdown(tmp_path):
    rows = [{"method": "a", "fold": "1", "pcc_acg": 0.2}, {"method": "a", "fold": "2", "pcc_acg": 0.4},
            {"method": "b", "fold": "1", "pcc_acg": float("nan")}]
    summary = summarize_folds(rows)
    assert summary.loc["a", ("pcc_acg", "mean")] == pytest.approx(0.3)
    assert summary.loc["a", ("pcc_acg", "sd")] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    md = to_markdown_table(summary, ["pcc_acg"])
    assert md.splitlines()[0] == "| method | pcc_acg |"
    assert "| a | 0.300 ± 0.141 |" in md and "| b | nan |" in md
    path = write_json_atomic({"x": float("nan")}, tmp_path / "r.json")
    assert path.read_text().strip().endswith("}") and "null" in path.read_text()
