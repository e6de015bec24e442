"""Metrics against hand-computed values on tiny matrices (spots × genes)."""
import json
import math
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stgraph.metrics import (evaluate_arrays, evaluate_prediction, gene_gene_correlation_preservation, gene_sets,
                             hit_at_t, mae, mean_pearson, mean_ssim, median_variance_ratio, mse, n_genes_above,
                             pearson_per_gene, per_gene_table, rmse, rmse_zscore, rmse_zscore_per_gene,
                             ssim_per_gene, summarize_folds, to_markdown_table, variance_ratio, write_csv_atomic,
                             write_json_atomic)

EVALUATE_KEYS = {"pcc_acg", "pcc_heg50", "pcc_hvg50", "pcc_mg", "n_nan_genes", "n_genes", "n_r_gt_0.3", "mse",
                 "mae", "rmse", "rmse_z", "ssim", "hit_at_10", "gg_corr", "var_ratio_median"}


# ----------------------------------------------------------------------------------------------- Pearson
def test_pearson_hand_computed_and_constant_gene():
    pred = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    true = np.array([[1.0, 0.0, 1.0], [2.0, 1.0, 2.0], [4.0, 2.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant gene must not warn
        r = pearson_per_gene(pred, true)
    # gene 0: p = (1,2,3), t = (1,2,4): centred (-1,0,1) and (-4/3,-1/3,5/3): cov 3, norms sqrt(2), sqrt(42/9)
    assert r[0] == pytest.approx(3 / math.sqrt(2 * 42 / 9), abs=1e-12)
    assert np.isnan(r[1])                # constant prediction
    assert r[2] == pytest.approx(-1.0)   # perfectly anti-correlated
    mean, used, n_nan = mean_pearson(r)
    assert (used, n_nan) == (2, 1) and mean == pytest.approx((r[0] - 1) / 2)
    assert mean_pearson(r, np.array([False, True, False])) == (pytest.approx(float("nan"), nan_ok=True), 0, 1)
    assert mean_pearson(r, [0])[0] == pytest.approx(r[0])


def test_pearson_matches_scipy_and_float_constant_is_nan():
    rng = np.random.default_rng(3)
    pred, true = rng.normal(size=(25, 4)), rng.normal(size=(25, 4))
    true[:, 3] = 0.1  # equal floats whose mean is not exactly 0.1: must still be NaN, not ±1
    r = pearson_per_gene(pred, true)
    for g in range(3):
        assert r[g] == pytest.approx(stats.pearsonr(pred[:, g], true[:, g])[0], abs=1e-12)
    assert np.isnan(r[3])


def test_n_genes_above_is_strict_and_skips_nan():
    assert n_genes_above(np.array([0.31, 0.3, np.nan, 0.9, -0.5])) == 2
    assert n_genes_above(np.array([0.31, 0.3, 0.9]), threshold=0.5) == 1


def test_shape_mismatch_and_nan_input_raise():
    with pytest.raises(ValueError, match="differ in shape"):
        pearson_per_gene(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="prediction contains 1 NaN"):
        mse(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]))


# -------------------------------------------------------------------------------------------- gene sets
def test_gene_sets_heg_hvg_markers():
    true = np.array([[10.0, 0.0, 5.0, 1.0], [10.0, 8.0, 5.0, 1.1], [10.0, 0.0, 5.0, 0.9]])
    # means: a 10, b 2.67, c 5, d 1; variances: a 0, b 14.2, c 0, d 0.0067
    with pytest.warns(UserWarning, match="NOPE"):
        sets = gene_sets(true, ["a", "b", "c", "d"], n=2, markers=["c", "NOPE"])
    assert sets["HEG"] == ["a", "c"]
    assert sets["HVG"] == ["b", "d"]
    assert sets["MG"] == ["c"] and sets["ACG"] == ["a", "b", "c", "d"]
    assert "MG" not in gene_sets(true, list("abcd"), n=2)
    with pytest.raises(ValueError, match="3 gene names for 4"):
        gene_sets(true, list("abc"))


# ------------------------------------------------------------------------------------------------ errors
def test_error_metrics():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    true = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert mse(pred, true) == pytest.approx((0 + 4 + 9 + 0) / 4)
    assert mae(pred, true) == pytest.approx((0 + 2 + 3 + 0) / 4)
    assert rmse(pred, true) == pytest.approx(math.sqrt(13 / 4))
    # z-scores of two distinct values are (-1, 1) or (1, -1):
    # gene 0: pred (-1, 1), true (1, -1) → RMSE sqrt((4 + 4) / 2) = 2; gene 1: both (-1, 1) → 0.
    np.testing.assert_allclose(rmse_zscore_per_gene(pred, true), [2.0, 0.0])
    assert rmse_zscore(pred, true) == pytest.approx(1.0)                              # mean over genes
    assert rmse_zscore(pred, true, average="entries") == pytest.approx(math.sqrt(8 / 4))


def test_rmse_zscore_constant_genes_and_pearson_identity():
    rng = np.random.default_rng(4)
    true = rng.normal(size=(30, 3))
    pred = rng.normal(size=(30, 3))
    pred[:, 2] = 7.0  # constant prediction of a varying gene: its z-scores are 0 → RMSE 1
    per_gene = rmse_zscore_per_gene(pred, true)
    r = pearson_per_gene(pred, true)
    # with population z-scores, mean(z_p z_t) = r, so RMSE² = 2 − 2r
    np.testing.assert_allclose(per_gene[:2], np.sqrt(2 - 2 * r[:2]))
    assert per_gene[2] == pytest.approx(1.0)
    both_constant = np.full((4, 1), 3.0)
    assert rmse_zscore(both_constant, both_constant) == 0.0


# -------------------------------------------------------------------------------------------------- SSIM
def test_ssim_identity_and_hand_value():
    x = np.array([[1.0], [2.0], [4.0]])
    assert ssim_per_gene(x, x)[0] == pytest.approx(1.0)
    assert ssim_per_gene(x, 3 * x)[0] == pytest.approx(1.0)  # each side is divided by its own max
    y = np.array([[1.0], [1.0], [2.0]])
    # max-scaled: a = (1/4, 1/2, 1), b = (1/2, 1/2, 1); by hand, in 72nds:
    # μa = 7/12, μb = 2/3, σa² = 7/16 − 49/144 = 7/72, σb² = 1/2 − 4/9 = 4/72, σab = 11/24 − 7/18 = 5/72
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = ((2 * 7 / 12 * 2 / 3 + c1) * (2 * 5 / 72 + c2)) / ((49 / 144 + 64 / 144 + c1) * (11 / 72 + c2))
    assert expected == pytest.approx(10080 / 11187, abs=2e-3)  # the value without C1, C2
    assert ssim_per_gene(x, y)[0] == pytest.approx(expected, rel=1e-12)
    assert ssim_per_gene(x, x[::-1])[0] < 0  # anti-correlated


def test_ssim_all_zero_gene_and_mean():
    pred = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 4.0]])
    true = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 4.0]])
    np.testing.assert_allclose(ssim_per_gene(pred, true), [1.0, 1.0])  # 0/0 max-scaling → zeros, no NaN
    assert mean_ssim(pred, true) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------- Hit@T
def test_hit_at_t():
    pred = np.array([[5, 4, 3, 0, 0], [0, 0, 1, 2, 3]], dtype=float)
    true = np.array([[5, 0, 3, 4, 0], [3, 2, 1, 0, 0]], dtype=float)
    # spot 0: top2 pred {0,1}, true {0,3} → 1/2 shared; spot 1: pred {4,3}, true {0,1} → 0
    assert hit_at_t(pred, true, t=2) == pytest.approx(0.25)
    assert hit_at_t(pred, true, t=2, any_overlap=True) == pytest.approx(0.5)
    # t = 3: spot 0: {0,1,2} vs {0,3,2} → 2/3; spot 1: {4,3,2} vs {0,1,2} → 1/3
    assert hit_at_t(pred, true, t=3) == pytest.approx(0.5)
    assert hit_at_t(pred, true, t=3, chunk=1) == pytest.approx(0.5)  # blockwise gives the same
    assert math.isnan(hit_at_t(pred, true, t=5))  # every gene in both sets: undefined
    with pytest.raises(ValueError, match="at least 1"):
        hit_at_t(pred, true, t=0)


def test_hit_at_t_ties_break_by_gene_order():
    pred = np.array([[1.0, 1.0, 1.0, 0.0]])
    true = np.array([[0.0, 0.0, 1.0, 0.0]])
    assert hit_at_t(pred, true, t=1) == 0.0  # tie among genes 0-2 → gene 0, true top is gene 2
    # t = 2: pred {0, 1}; true: gene 2, then gene 0 wins the tie among 0, 1, 3 → {2, 0}; one shared of two
    assert hit_at_t(pred, true, t=2) == pytest.approx(1 / 2)


# ------------------------------------------------------------------------------- structure preservation
def test_structure_preservation_and_variance_ratio():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(30, 6))
    assert gene_gene_correlation_preservation(true, true) == pytest.approx(1.0)
    pred = rng.normal(size=(30, 6))
    iu = np.triu_indices(6, k=1)
    expected = stats.pearsonr(np.corrcoef(pred.T)[iu], np.corrcoef(true.T)[iu])[0]
    assert gene_gene_correlation_preservation(pred, true) == pytest.approx(expected, abs=1e-12)
    pred[:, 5] = 1.0  # a constant gene is dropped, not a NaN source
    iu5 = np.triu_indices(5, k=1)
    expected5 = stats.pearsonr(np.corrcoef(pred[:, :5].T)[iu5], np.corrcoef(true[:, :5].T)[iu5])[0]
    assert gene_gene_correlation_preservation(pred, true) == pytest.approx(expected5, abs=1e-12)
    assert math.isnan(gene_gene_correlation_preservation(true[:, :2], true[:, :2]))  # one pair only
    vr = variance_ratio(0.5 * true, true)
    np.testing.assert_allclose(vr, 0.25)
    true[:, 0] = 2.0
    assert np.isnan(variance_ratio(true, true)[0]) and median_variance_ratio(0.5 * true, true) == pytest.approx(0.25)


# ------------------------------------------------------------------------------------ evaluate / tables
def _small_case():
    rng = np.random.default_rng(1)
    true = rng.gamma(2.0, size=(40, 12))
    pred = true + rng.normal(0, 0.5, size=true.shape)
    pred[:, 11] = 1.0  # constant gene → NaN, excluded
    return pred, true, [f"g{i}" for i in range(12)]


def test_evaluate_arrays_values():
    pred, true, genes = _small_case()
    out = evaluate_arrays(pred, true, genes, markers=["g0", "g1"], n_top=3)
    r = pearson_per_gene(pred, true)
    assert out["pcc_acg"] == pytest.approx(np.nanmean(r))
    heg = np.argsort(-true.mean(0), kind="stable")[:3]
    hvg = np.argsort(-true.var(0), kind="stable")[:3]
    assert out["pcc_heg3"] == pytest.approx(np.nanmean(r[heg]))
    assert out["pcc_hvg3"] == pytest.approx(np.nanmean(r[hvg]))
    assert out["n_nan_genes"] == 1 and out["n_genes"] == 12
    assert out["pcc_mg"] == pytest.approx(r[:2].mean())
    assert out["n_r_gt_0.3"] == int(np.sum(r[:11] > 0.3))
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)))
    assert out["hit_at_10"] == pytest.approx(hit_at_t(pred, true, 10))


def test_evaluate_prediction_aligns_anndata_by_name():
    pred, true, genes = _small_case()
    pa = anndata.AnnData(pred.astype(np.float32), var=pd.DataFrame(index=genes))
    ta = anndata.AnnData(true.astype(np.float32), var=pd.DataFrame(index=genes))
    out = evaluate_prediction(pa, ta)
    assert set(out) == EVALUATE_KEYS | {"n_genes_unmeasured"} and out["n_genes_unmeasured"] == 0
    json.dumps(out)  # flat and serialisable
    assert math.isnan(out["pcc_mg"])  # no markers
    assert out["pcc_acg"] == pytest.approx(np.nanmean(pearson_per_gene(pred, true)), abs=1e-5)
    shuffled = ta[:, genes[::-1]].copy()  # gene order does not matter, names do
    assert evaluate_prediction(pa, shuffled)["pcc_acg"] == pytest.approx(out["pcc_acg"], abs=1e-6)
    # A gene the true slide did not measure is not scored (not scored as zeros), and is counted.
    with pytest.warns(UserWarning, match="1 predicted gene.*not measured.*g11"):
        part = evaluate_prediction(pa, ta[:, :11])
    assert part["n_genes"] == 11 and part["n_genes_unmeasured"] == 1
    assert part["pcc_acg"] == pytest.approx(np.nanmean(pearson_per_gene(pred[:, :11], true[:, :11])), abs=1e-5)
    with pytest.raises(ValueError, match="none of the predicted genes"):
        evaluate_prediction(pa[:, :3], ta[:, 3:])


def test_per_gene_table():
    pred, true, genes = _small_case()
    table = per_gene_table(pred, true, genes, n_top=3)
    assert list(table.columns) == ["gene", "pearson", "mean_true", "var_true", "in_heg", "in_hvg"]
    assert table["in_heg"].sum() == 3 and table["in_hvg"].sum() == 3
    assert np.isnan(table.loc[11, "pearson"])
    assert table.loc[0, "var_true"] == pytest.approx(true[:, 0].var())
    top_mean = table.sort_values("mean_true", ascending=False).head(3)
    assert top_mean["in_heg"].all()


def test_mean_profile_pearson_is_nan_not_zero():
    true = np.random.default_rng(2).normal(size=(10, 4))
    pred = np.repeat(true.mean(0, keepdims=True), 10, axis=0)
    out = evaluate_arrays(pred, true, list("abcd"))
    assert math.isnan(out["pcc_acg"]) and out["n_nan_genes"] == 4


# ---------------------------------------------------------------------------------------------- reports
def test_summary_and_markdown(tmp_path):
    rows = [{"method": "a", "fold": "1", "pcc_acg": 0.2, "rmse": 1.0},
            {"method": "a", "fold": "2", "pcc_acg": 0.4, "rmse": 2.0},
            {"method": "b|x", "fold": "1", "pcc_acg": float("nan"), "rmse": 1.5}]
    summary = summarize_folds(rows)
    assert list(summary.index) == ["a", "b|x"]
    assert summary.loc["a", ("pcc_acg", "mean")] == pytest.approx(0.3)
    assert summary.loc["a", ("pcc_acg", "sd")] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert summary.loc["a", ("n_folds", "")] == 2
    md = to_markdown_table(summary, ["pcc_acg", "rmse"])
    assert md.splitlines() == [
        "| method | pcc_acg | rmse |",
        "| --- | --- | --- |",
        "| a | 0.300 ± 0.141 | 1.500 ± 0.707 |",
        "| b\\|x | nan | 1.500 |",  # single fold: no sd; the pipe is escaped
    ]
    assert to_markdown_table(summary, ["rmse"], floatfmt=".1f").splitlines()[2] == "| a | 1.5 ± 0.7 |"
    flat = pd.DataFrame({"pcc_acg": [0.25]}, index=pd.Index(["m"], name="method"))
    assert to_markdown_table(flat, ["pcc_acg"]).splitlines()[2] == "| m | 0.250 |"
    with pytest.raises(KeyError, match="ssim"):
        to_markdown_table(summary, ["ssim"])
    with pytest.raises(ValueError, match="method"):
        summarize_folds([{"fold": 1, "x": 1.0}])


def test_summary_reads_json_nulls_back():
    rows = [{"method": "a", "fold": 1, "pcc": None}, {"method": "a", "fold": 2, "pcc": 0.5}]
    assert summarize_folds(rows).loc["a", ("pcc", "mean")] == pytest.approx(0.5)


def test_atomic_writers(tmp_path):
    path = write_json_atomic({"x": float("nan"), "v": np.array([1, 2]), "y": np.float32(0.5)}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"x": None, "v": [1, 2], "y": 0.5}
    frame = pd.DataFrame({"gene": ["a", "b"], "pearson": [0.1, np.nan]})
    csv = write_csv_atomic(frame, tmp_path / "sub" / "t.csv")
    back = pd.read_csv(csv)
    assert list(back.columns) == ["gene", "pearson"] and back["gene"].tolist() == ["a", "b"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r.json", "sub", "t.csv"]  # no temp files left
