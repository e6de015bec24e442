"""Seed-aware summaries and paired ablation intervals, against values computed by hand."""
import math

import numpy as np
import pandas as pd
import pytest

from stgraph.evaluation.stats import (NO_EFFECT, ablation_pairs_by_name, ablation_table, format_difference,
                                      paired_difference, seed_means, summarize_seeds)
from stgraph.metrics import summarize_folds


def _rows(values: dict) -> pd.DataFrame:
    """``{method: {fold: [per-seed values]}}`` → rows (method, fold, seed, pcc_acg)."""
    return pd.DataFrame([{"method": m, "fold": f, "seed": s, "pcc_acg": v}
                         for m, folds in values.items() for f, seeds in folds.items() for s, v in enumerate(seeds)])


# Seed means: full 0.10, 0.20, 0.30; ablation 0.11, 0.23, 0.32 → fold differences 0.01, 0.03, 0.02.
THREE = _rows({"full": {"f1": [0.09, 0.11], "f2": [0.20, 0.20], "f3": [0.28, 0.32]},
               "abl": {"f1": [0.10, 0.12], "f2": [0.22, 0.24], "f3": [0.32, 0.32]}})


def test_seed_means_and_summary_by_hand():
    table = seed_means(THREE, "pcc_acg")
    np.testing.assert_allclose(table.loc["full"].to_numpy(), [0.10, 0.20, 0.30])
    summary = summarize_seeds(THREE, ["pcc_acg"])
    assert summary.loc["full", ("pcc_acg", "mean")] == pytest.approx(0.20)
    assert summary.loc["full", ("pcc_acg", "sd")] == pytest.approx(0.10)  # sd of 0.1, 0.2, 0.3 (ddof 1)
    assert summary.loc["full", ("n_folds", "")] == 3 and summary.loc["full", ("n_seeds", "")] == 2
    # summarize_folds counts each fold once too (not each seed): same mean and sd.
    plain = summarize_folds(THREE)
    assert plain.loc["abl", ("pcc_acg", "mean")] == pytest.approx((0.11 + 0.23 + 0.32) / 3)
    assert plain.loc["abl", ("n_folds", "")] == 3


def test_paired_t_interval_covering_zero_is_no_effect():
    # d = 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t(2, 0.975) = 4.302653 → half width 0.024841.
    r = paired_difference(THREE, "abl", "full", "pcc_acg")
    assert r["diff"] == pytest.approx(0.02)
    assert r["sd"] == pytest.approx(0.01)
    assert r["lo"] == pytest.approx(0.02 - 0.024841, abs=1e-6)
    assert r["hi"] == pytest.approx(0.02 + 0.024841, abs=1e-6)
    assert r["effect"] is False
    assert format_difference(r).endswith(f"({NO_EFFECT})")


def test_paired_t_interval_above_zero_is_an_effect():
    # d = 0.02, 0.03, 0.04, 0.03: mean 0.03, sd 0.0081650, t(3, 0.975) = 3.182446 → [0.017008, 0.042992].
    rows = _rows({"full": {f"f{i}": [0.1 * i] for i in range(4)},
                  "abl": {f"f{i}": [0.1 * i + d] for i, d in enumerate([0.02, 0.03, 0.04, 0.03])}})
    r = paired_difference(rows, "abl", "full", "pcc_acg")
    assert (r["lo"], r["hi"]) == pytest.approx((0.017008, 0.042992), abs=1e-6)
    assert r["effect"] is True
    assert NO_EFFECT not in format_difference(r)
    table = ablation_table(rows, {"abl": "full", "missing": "full"}, ["pcc_acg"])
    assert list(table["method"]) == ["abl"] and table.loc[0, "pcc_acg"].startswith("+0.030 [+0.017, +0.043]")


def test_one_fold_has_no_interval():
    rows = _rows({"full": {"f1": [0.1, 0.2]}, "abl": {"f1": [0.3, 0.3]}})
    r = paired_difference(rows, "abl", "full", "pcc_acg")
    assert r["diff"] == pytest.approx(0.15) and math.isnan(r["lo"]) and r["effect"] is False


def test_unknown_method_is_named():
    with pytest.raises(KeyError, match="nope"):
        paired_difference(THREE, "nope", "full", "pcc_acg")


def test_pairs_by_name_take_the_longest_prefix():
    methods = ["stgraph", "stgraph-no_context_crop", "stgraph+smoothing", "stgraph_graph",
               "stgraph_graph-no_residual", "stgchb", "stgchb-no_nHSIC", "baseline:ridge"]
    assert ablation_pairs_by_name(methods) == {
        "stgraph-no_context_crop": "stgraph", "stgraph+smoothing": "stgraph",
        "stgraph_graph-no_residual": "stgraph_graph", "stgchb-no_nHSIC": "stgchb"}


def test_ablation_configs_pair_with_their_base_file(tmp_path):
    from stgraph.evaluation.stats import ablation_pairs_by_base

    (tmp_path / "full.yaml").write_text("name: full\n")
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "no_x.yaml").write_text("base: ../full.yaml\nname: no_x\n")
    (tmp_path / "other.yaml").write_text("base: full.yaml\nname: other\n")
    paths = {"full": tmp_path / "full.yaml", "no_x": tmp_path / "abl" / "no_x.yaml"}
    assert ablation_pairs_by_base(paths) == {"no_x": "full"}
    assert ablation_pairs_by_base({"no_x": paths["no_x"]}) == {}  # its base is not evaluated: no pair


def test_evaluate_refuses_bad_seeds_and_pairs_before_reading_slides(tmp_path, capsys):
    from cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\nmodel:\n  image_encoder:\n    pretrained: false\n")
    missing = tmp_path / "no_such_root"  # never read: the errors come first
    assert main(["evaluate", "--config", str(cfg), "--her2st", str(missing), "--out", str(tmp_path / "o"),
                 "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["evaluate", "--config", str(cfg), "--her2st", str(missing), "--out", str(tmp_path / "o2"),
                 "--ablation", "c=nope"]) == 2
    assert "--ablation" in capsys.readouterr().err


def test_ablation_pairs_by_base_takes_shipped_config_names():
    """`stgraph evaluate --config stgchb ablations/stgchb_no_hsic` pairs the two, as paths do."""
    from stgraph.evaluation.stats import ablation_pairs_by_base

    assert ablation_pairs_by_base({"full": "stgchb", "no_hsic": "ablations/stgchb_no_hsic"}) == {"no_hsic": "full"}


def test_two_folds_give_no_interval_and_no_effect():
    """A t-interval over two folds rests on one degree of freedom: no interval and no "effect" below three."""
    import pandas as pd

    from stgraph.evaluation.stats import format_difference, paired_difference

    frame = pd.DataFrame({"method": ["full", "full", "abl", "abl"], "fold": ["a", "b", "a", "b"],
                          "seed": 0, "pcc_acg": [0.10, 0.12, 0.20, 0.21]})
    got = paired_difference(frame, "abl", "full", "pcc_acg")
    assert got["n_folds"] == 2 and got["effect"] is False
    assert "too few folds for an interval: 2, at least 3 needed" in format_difference(got)
    three = pd.concat([frame, pd.DataFrame({"method": ["full", "abl"], "fold": ["c", "c"], "seed": 0,
                                            "pcc_acg": [0.11, 0.20]})])
    assert paired_difference(three, "abl", "full", "pcc_acg")["effect"] is True
