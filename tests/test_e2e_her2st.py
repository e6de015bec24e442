"""End to end on real HER2+ sections: CPU config, real ImageNet backbone, the real 785-gene list."""
import numpy as np
import pytest

from tests.conftest import CONFIGS, HER2ST, MOBILENET, require_shared

# Real sections, real backbone: minutes on a CPU. `make test` leaves them out; `.ci/run` runs them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def her2st_slides():
    require_shared(HER2ST)
    require_shared(MOBILENET)
    from stgraph.data.readers import read_her2st

    return {s: read_her2st(HER2ST, s) for s in ("B4", "C2", "C3", "C4", "C5")}


def test_train_two_sections_predict_a_third(her2st_slides, tmp_path, shared_cache):
    from stgraph.config import load_config
    from stgraph.inference import load_run, predict_slide
    from stgraph.metrics import evaluate_arrays
    from stgraph.training import train_model

    cfg = load_config(CONFIGS / "cpu" / "bleep.yaml", [
        f"data.genes={HER2ST / 'her_hvg_cut_1000.npy'}", f"data.cache_dir={shared_cache}",
        f"model.image_encoder.weights={MOBILENET}", "train.epochs=30", "train.progress=false", "data.harmony=false"])
    run = train_model(cfg, [her2st_slides["C2"], her2st_slides["C3"]], out=tmp_path / "run")
    assert len(run.preprocessor.genes) == 785
    hist = run.result.history.query("split == 'train'")["total"].to_numpy()
    assert hist[-5:].mean() < hist[:5].mean()

    test = her2st_slides["C4"]
    pred = predict_slide(load_run(tmp_path / "run"), test)
    assert pred.n_obs == 184 and pred.n_vars == 785  # C4: 184 selected spots with counts
    true = run.preprocessor.expression(test)
    scores = evaluate_arrays(pred.X, true, run.preprocessor.genes)
    # Against the ablation that removes the training: the same config and data with a learning rate of 1e-12
    # (heads at their initialisation), in this test.
    still_cfg = load_config(CONFIGS / "cpu" / "bleep.yaml", [
        f"data.genes={HER2ST / 'her_hvg_cut_1000.npy'}", f"data.cache_dir={shared_cache}",
        f"model.image_encoder.weights={MOBILENET}", "train.epochs=2", "train.lr=1e-12", "train.progress=false",
        "data.harmony=false"])
    train_model(still_cfg, [her2st_slides["C2"], her2st_slides["C3"]], out=tmp_path / "still")
    still = evaluate_arrays(predict_slide(load_run(tmp_path / "still"), test).X, true, run.preprocessor.genes)
    assert scores["pcc_heg50"] - still["pcc_heg50"] > 0.1, (scores, still)
    assert np.isfinite(scores["rmse"])


def _train_log(config: str, slides, out, cache, *overrides):
    from stgraph.config import load_config
    from stgraph.training import train_model

    cfg = load_config(CONFIGS / "cpu" / config, [
        f"data.genes={HER2ST / 'her_hvg_cut_1000.npy'}", f"data.cache_dir={cache}", "train.progress=false",
        f"model.image_encoder.weights={MOBILENET}", *overrides])
    run = train_model(cfg, slides, out=out)
    return run.result.history.query("split == 'train'").reset_index(drop=True)


#: Epochs and seeds of the ST-GCHB health check, and its margin below chance. Measured (issue 16, this
#: config, 20 epochs, seeds 0/1/2): median of the last third of epochs 1.12/1.16/1.18 (dgi_image) and
#: 1.20/1.21/1.21 (dgi_spot); the largest spread over seeds is 0.06, and the bound 2 ln 2 − 0.08 = 1.306
#: sits 0.10 (1.7 spreads) above the worst seed. Before the 1/H discriminator fix, seed 0 gave 1.65 for
#: dgi_image (epochs 14–19: 3.94 2.84 2.23 1.06 0.88 0.92): the old module fails this test.
DGI_EPOCHS, DGI_SEEDS, DGI_MARGIN = 20, (0, 1, 2), 0.08


def last_third_median(values) -> float:
    """Median of the last third of the epochs: one noisy epoch cannot decide a verdict."""
    values = np.asarray(values, dtype=float)
    return float(np.median(values[len(values) - max(1, len(values) // 3):]))


def test_stgchb_five_section_fold_every_term_is_live(her2st_slides, tmp_path, shared_cache, recwarn):
    """The standard fold (train on B4 C2 C3 C4 C5), three seeds: both DGI terms are finite, never stuck at
    −ln 1e-15 = 34.54, and the median of the last third of epochs is clearly below chance (2 ln 2) in every
    seed; align falls (same robust statistic against the first third); every term moves between epochs."""
    from stgraph.training.monitor import LossTermWarning

    chance = 2 * np.log(2)
    terms = ["align", "dgi_image", "dgi_spot", "hsic_image", "hsic_spot"]
    medians = {}
    for seed in DGI_SEEDS:
        log = _train_log("stgchb.yaml", list(her2st_slides.values()), tmp_path / f"run{seed}", shared_cache,
                         f"train.epochs={DGI_EPOCHS}", f"train.seed={seed}")
        assert set(terms) <= set(log.columns)
        for term in terms:
            values = log[term].to_numpy()
            assert np.isfinite(values).all(), (seed, term)
            assert len(np.unique(np.round(values, 4))) >= DGI_EPOCHS - 2, (seed, term, values)
        medians[seed] = {t: last_third_median(log[t]) for t in terms}
        medians[seed]["align_first_third"] = float(np.median(log["align"].to_numpy()[: DGI_EPOCHS // 3]))
        for term in ("dgi_image", "dgi_spot"):
            assert log[term].max() < 30, (seed, term, log[term].tolist())
            assert medians[seed][term] < chance - DGI_MARGIN, (seed, term, log[term].round(3).tolist())
        # Measured: the last third sits 1.1–1.7 below the first third.
        assert medians[seed]["align"] < medians[seed]["align_first_third"] - 0.5, (seed, log["align"].tolist())
    assert not [w for w in recwarn if issubclass(w.category, LossTermWarning)], medians


@pytest.mark.parametrize("config", ["bleep.yaml", "heclip.yaml", "mclstexp.yaml"])
def test_published_cpu_configs_have_no_stuck_term(config, her2st_slides, tmp_path, shared_cache, recwarn):
    from stgraph.training.monitor import LossTermWarning

    slides = [her2st_slides[s] for s in ("C2", "C3", "C4")]
    log = _train_log(config, slides, tmp_path / "run", shared_cache, "train.epochs=6", "data.harmony=false")
    terms = [c for c in log.columns if c not in ("epoch", "split", "seconds", "total")]
    assert terms, log.columns
    for term in terms:
        assert np.isfinite(log[term]).all() and log[term].nunique() == len(log), (term, log[term].tolist())
    assert not [w for w in recwarn if issubclass(w.category, LossTermWarning)]
