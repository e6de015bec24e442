"""Training: the loss goes down, a trained model beats trivial baselines, checkpoints and resume work."""
import numpy as np
import pandas as pd
import pytest

from stgraph.inference import predict_slide
from stgraph.training import load_checkpoint, train_model


def _mean_pearson(pred, true):
    pc, tc = pred - pred.mean(0), true - true.mean(0)
    denom = np.sqrt((pc ** 2).sum(0) * (tc ** 2).sum(0))
    ok = denom > 0
    return float(((pc * tc).sum(0)[ok] / denom[ok]).mean())


def _true_expression(run, adata):
    return run.preprocessor.expression(adata)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_slides):
    from stgraph.config import load_config
    from tests.conftest import CONFIGS, tiny_overrides

    tmp = tmp_path_factory.mktemp("bleep")
    config = load_config(CONFIGS / "bleep.yaml", tiny_overrides(tmp / "cache", epochs=25) + [
        "data.harmony=false", "train.lr=3e-3", "inference.k=10"])
    run = train_model(config, synthetic_slides[:2], out=tmp / "run")
    return config, run


def test_loss_goes_down(trained):
    _, run = trained
    hist = run.result.history
    train = hist[hist["split"] == "train"]["total"].to_numpy()
    assert train[-3:].mean() < 0.8 * train[0]


def test_trained_model_beats_trivial_baselines(trained, tmp_path, synthetic_slides):
    config, run = trained
    query = synthetic_slides[2]
    true = _true_expression(run, query)
    pred = predict_slide(run, query).X
    trained_r = _mean_pearson(pred, true)

    # Baseline 1: the same architecture without training (random heads), same retrieval.
    from stgraph.config import load_config
    from tests.conftest import CONFIGS, tiny_overrides

    cfg0 = load_config(CONFIGS / "bleep.yaml", tiny_overrides(tmp_path / "cache", epochs=1) + [
        "data.harmony=false", "inference.k=10"])
    cfg0.train.epochs = 0  # load_config refuses epochs < 1; this in-memory baseline wants no training at all
    run0 = train_model(cfg0, synthetic_slides[:2])
    untrained_r = _mean_pearson(predict_slide(run0, query).X, true)

    # Baseline 2: the mean training profile (MSE only; its Pearson is undefined).
    mean_profile = np.concatenate([run.preprocessor.expression(s) for s in synthetic_slides[:2]]).mean(0)
    mse_mean = float(((true - mean_profile) ** 2).mean())
    mse_trained = float(((true - pred) ** 2).mean())

    print("pearson trained/untrained, mse trained/mean:", trained_r, untrained_r, mse_trained, mse_mean)
    assert trained_r > 0.5, trained_r
    assert trained_r > untrained_r + 0.1, (trained_r, untrained_r)
    assert mse_trained < 0.8 * mse_mean, (mse_trained, mse_mean)


def test_run_folder_and_best_checkpoint(trained):
    _, run = trained
    d = run.run_dir
    for name in ("config.yaml", "genes.txt", "model.pt", "reference.h5", "run.json", "log.csv",
                 "checkpoints/best.pt", "checkpoints/last.pt", "loss_curve.png"):
        assert (d / name).is_file(), name
    log = pd.read_csv(d / "log.csv")
    val = log[log["split"] == "val"].set_index("epoch")["total"]
    assert run.result.best_epoch == int(val.idxmin())
    assert load_checkpoint(d / "checkpoints" / "best.pt")["epoch"] == run.result.best_epoch


def test_resume_continues_from_last_checkpoint(tiny_config, synthetic_slides, tmp_path):
    out = tmp_path / "run"
    train_model(tiny_config("bleep.yaml", "train.epochs=2", "data.harmony=false"), synthetic_slides[:2], out=out)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = train_model(tiny_config("bleep.yaml", "train.epochs=4", "data.harmony=false"),
                          synthetic_slides[:2], out=out, resume=True)
    epochs = resumed.result.history.query("split == 'train'")["epoch"].tolist()
    assert epochs == [0, 1, 2, 3]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 3


def test_existing_run_folder_is_not_overwritten(tiny_config, synthetic_slides, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        train_model(tiny_config("bleep.yaml", "train.epochs=1"), synthetic_slides[:2], out=out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_seeds_make_training_reproducible(tiny_config, synthetic_slides):
    cfg = tiny_config("mclstexp.yaml", "train.epochs=2")
    a = train_model(cfg, synthetic_slides[:2]).result.history["total"].to_numpy()
    b = train_model(cfg, synthetic_slides[:2]).result.history["total"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_data_loader_workers_give_the_same_training(tiny_config, synthetic_slides):
    """Patch batches built by two worker processes (cut, resized, flipped, colour-jittered) are the batches
    the training process builds itself: the same seeds per step, the same losses."""
    from stgraph.training import train_model

    logs = []
    for workers in (0, 2):
        config = tiny_config("bleep.yaml", "train.epochs=2", "train.augment=true", "train.color_jitter=0.2",
                             "model.image_head_dropout=0", "model.spot_head_dropout=0",
                             f"train.num_workers={workers}")
        assert not config.model.image_encoder.cache_features  # the patch path, fine-tuning the backbone
        logs.append(train_model(config, synthetic_slides).result.history)
    assert logs[0]["total"].notna().all()
    pd.testing.assert_frame_equal(logs[0].drop(columns="seconds"), logs[1].drop(columns="seconds"),
                                  rtol=1e-5)


def test_step_seeds_differ_by_epoch_rank_and_step():
    from stgraph.training.loader import step_seed

    seeds = {step_seed(0, e, r, s) for e in range(3) for r in range(2) for s in range(4)}
    assert len(seeds) == 24 and all(0 <= x < 2**63 for x in seeds)
    assert step_seed(0, 1, 0, 2) == step_seed(0, 1, 0, 2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_is_recorded(tiny_config, synthetic_slides, tmp_path, precision):
    """Autocast of the forward pass (fp16 with a gradient scaler): finite float32 losses that fall, close to
    the float32 run, and the precision in run.json."""
    import json

    runs = {}
    for p in ("32", precision):
        config = tiny_config("bleep.yaml", "train.epochs=4", f"train.precision={p}",
                             "model.image_head_dropout=0", "model.spot_head_dropout=0", "train.augment=false")
        runs[p] = train_model(config, synthetic_slides[:2], out=tmp_path / p)
    hist = runs[precision].result.history.query("split == 'train'")["total"].to_numpy()
    ref = runs["32"].result.history.query("split == 'train'")["total"].to_numpy()
    assert np.isfinite(hist).all() and hist[-1] < hist[0]
    if precision == "bf16":
        np.testing.assert_allclose(hist, ref, rtol=0.05)
    else:
        # The fp16 gradient scaler skips the first steps while it finds its scale (inf gradients at 2^16).
        np.testing.assert_allclose(hist[-1], ref[-1], rtol=0.3)
    assert json.loads((tmp_path / precision / "run.json").read_text())["precision"] == precision


def test_precision_is_validated(tiny_config):
    from stgraph.config import ConfigError

    assert tiny_config("bleep.yaml", "train.precision=32").train.precision == "32"  # YAML reads 32 as a number
    with pytest.raises(ConfigError, match="train.precision"):
        tiny_config("bleep.yaml", "train.precision=fp8")
@pytest.mark.parametrize("config_name", ["bleep.yaml", "stgchb.yaml"])
def test_harmony_shapes_the_targets_but_the_reference_keeps_uncorrected_expression(config_name, tiny_config,
                                                                                     synthetic_slides):
    from stgraph.data import pp
    from stgraph.preprocess.prepare import fit_preprocessor

    config = tiny_config(config_name, "data.harmony=true", "train.epochs=1")
    assert config.data.harmony
    train = [ad.copy() for ad in synthetic_slides[:2]]
    run = train_model(config, train)
    genes = run.preprocessor.genes
    # computed here from the counts, independently of training: log1p(normalised), aligned to the genes
    aligned = [pp.align_genes(pp.normalize_log1p(ad, copy=True), genes).X for ad in synthetic_slides[:2]]
    uncorrected = np.concatenate([np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
                                  for x in aligned])
    stored = np.asarray(run.reference.expression, dtype=np.float32)
    np.testing.assert_allclose(stored, uncorrected, rtol=1e-6, atol=1e-6)
    # Harmony did change the training targets (so the equality above is not vacuous)
    _, targets = fit_preprocessor(config, [ad.copy() for ad in synthetic_slides[:2]])
    corrected = np.concatenate(list(targets.values()))
    assert np.abs(corrected - uncorrected).max() > 1e-3
    assert stored.min() >= 0
    pred = predict_slide(run, synthetic_slides[2])
    x = np.asarray(pred.X)
    assert x.shape == (synthetic_slides[2].n_obs, len(genes)) and np.isfinite(x).all()
    assert x.min() >= 0
