"""End to end on real HER2+ sections: CPU config, real ImageNet backbone, the real 785-gene list."""
import numpy as np
import pytest

from tests.conftest import CONFIGS, HER2ST, MOBILENET, require_shared


@pytest.fixture(scope="module")
def her2st_slides():
    require_shared(HER2ST)
    require_shared(MOBILENET)
    from stgraph.data.readers import read_her2st

    return {s: read_her2st(HER2ST, s) for s in ("C2", "C3", "C4")}


def test_train_two_sections_predict_a_third(her2st_slides, tmp_path):
    from stgraph.config import load_config
    from stgraph.inference import load_run, predict_slide
    from stgraph.metrics import evaluate_arrays
    from stgraph.training import train_model

    cfg = load_config(CONFIGS / "cpu" / "bleep.yaml", [
        f"data.genes={HER2ST / 'her_hvg_cut_1000.npy'}", f"data.cache_dir={tmp_path / 'cache'}",
        "train.epochs=30", "train.progress=false", "data.harmony=false"])
    run = train_model(cfg, [her2st_slides["C2"], her2st_slides["C3"]], out=tmp_path / "run")
    assert len(run.preprocessor.genes) == 785
    hist = run.result.history.query("split == 'train'")["total"].to_numpy()
    assert hist[-5:].mean() < hist[:5].mean()

    test = her2st_slides["C4"]
    pred = predict_slide(load_run(tmp_path / "run"), test)
    assert pred.n_obs == 184 and pred.n_vars == 785  # C4: 184 selected spots with counts
    true = run.preprocessor.expression(test)
    scores = evaluate_arrays(pred.X, true, run.preprocessor.genes)
    # Sections C2–C4 are serial sections of one patient: retrieval must find real signal.
    assert scores["pcc_heg50"] > 0.2, scores
    assert np.isfinite(scores["rmse"])
