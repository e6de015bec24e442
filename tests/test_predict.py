"""Prediction: reference round trip, self-retrieval, bad model folders, outputs."""
import anndata
import numpy as np
import pytest

from stgraph.inference import ModelFolderError, embed_slide, load_run, predict_slide, write_prediction
from stgraph.retrieval import ReferenceStore
from stgraph.training import prepare_slide, train_model


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_slides):
    from stgraph.config import load_config
    from tests.conftest import CONFIGS, tiny_overrides

    tmp = tmp_path_factory.mktemp("heclip")
    cfg = load_config(CONFIGS / "heclip.yaml", tiny_overrides(tmp / "cache", epochs=3) + ["data.harmony=false"])
    return train_model(cfg, synthetic_slides[:2], out=tmp / "run")


def test_reference_round_trip_gives_identical_predictions(run, synthetic_slides):
    loaded = load_run(run.run_dir)
    query = synthetic_slides[2]
    a = predict_slide(run, query)
    b = predict_slide(loaded, query)
    np.testing.assert_array_equal(a.X, b.X)
    assert list(b.var_names) == list(run.preprocessor.genes)


def test_prediction_is_a_standard_spatial_anndata(run, synthetic_slides, tmp_path):
    query = synthetic_slides[2]
    pred = predict_slide(run, query)
    assert pred.n_obs == query.n_obs and pred.X.dtype == np.float32
    np.testing.assert_array_equal(pred.obsm["spatial"], query.obsm["spatial"])
    assert "spatial" in pred.uns and pred.uns["stgraph"]["method"] == "heclip"
    path = write_prediction(pred, tmp_path / "pred.h5ad")
    back = anndata.read_h5ad(path)
    np.testing.assert_array_equal(back.X, pred.X)
    with pytest.raises(FileExistsError, match="pred.h5ad"):
        write_prediction(pred, path)
    write_prediction(pred, path, force=True)


def test_own_reference_with_k1_returns_own_profiles(run, synthetic_slides):
    """A slide embedded into its own reference and queried with k=1 gets its own profiles back."""
    slide = synthetic_slides[0]
    prepared = prepare_slide(slide, run.config, run.preprocessor, image_encoder=run.model.image_encoder)
    for branch in ("spot", "image"):
        emb = embed_slide(run.model, prepared, branch)
        store = ReferenceStore(emb, prepared.expr, run.preprocessor.genes,
                               np.array([prepared.slide_id] * prepared.n_spots), np.array(prepared.barcodes),
                               kind=branch)
        pred = store.predict(emb, k=1, similarity="cosine", aggregation="mean")
        np.testing.assert_allclose(pred, prepared.expr, atol=1e-6)


def test_query_without_expression_is_predicted(run, synthetic_slides):
    query = synthetic_slides[2]
    image_only = anndata.AnnData(X=np.zeros((query.n_obs, 0), np.float32), obs=query.obs[["slide_id"]].copy(),
                                 obsm={"spatial": query.obsm["spatial"]}, uns={"spatial": query.uns["spatial"]})
    np.testing.assert_allclose(predict_slide(run, image_only).X, predict_slide(run, query).X, atol=1e-5)


def test_incomplete_and_corrupt_model_folders(run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run.run_dir, broken)
    (broken / "reference.h5").unlink()
    with pytest.raises(ModelFolderError, match=r"incomplete.*reference.h5"):
        load_run(broken)
    shutil.copy(run.run_dir / "reference.h5", broken / "reference.h5")
    (broken / "model.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFolderError, match="model.pt"):
        load_run(broken)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_run(tmp_path / "nowhere")


def test_extend_reference_without_retraining(run, synthetic_slides, tmp_path):
    import shutil

    from stgraph.inference import extend_reference

    folder = tmp_path / "run"
    shutil.copytree(run.run_dir, folder)
    loaded = load_run(folder)
    n0 = loaded.reference.n_spots
    extend_reference(loaded, [synthetic_slides[2]])
    again = load_run(folder)
    assert again.reference.n_spots == n0 + synthetic_slides[2].n_obs
    assert (folder / "reference.prev.h5").is_file()
    # the added slide is now its own nearest neighbour for k=1 image retrieval (HECLIP reference)
    pred = predict_slide(again, synthetic_slides[2], k=1)
    own = again.reference.expression[n0:]
    np.testing.assert_allclose(pred.X, own, atol=1e-5)
    with pytest.raises(ValueError, match="slide2"):
        extend_reference(again, [synthetic_slides[2]])


def test_prediction_leaves_the_query_slide_untouched(tiny_config, synthetic_slides):
    """Preparing a slide builds its spot graph without writing obsp/uns into the caller's AnnData."""
    from stgraph.inference import predict_slide
    from stgraph.training import train_model

    config = tiny_config("cpu/stgchb.yaml", "train.epochs=1")
    run = train_model(config, synthetic_slides[:2])
    query = synthetic_slides[2].copy()
    before = (set(query.obsp.keys()), set(query.uns.keys()), set(query.obsm.keys()), query.X.copy())
    predict_slide(run, query)
    assert (set(query.obsp.keys()), set(query.uns.keys()), set(query.obsm.keys())) == before[:3]
    assert (query.X != before[3]).nnz == 0 if hasattr(query.X, "nnz") else (query.X == before[3]).all()
