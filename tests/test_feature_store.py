"""The on-disk per-slide feature store: keys (a changed key is a miss), atomic writes, batch reads."""
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from stgraph.data.feature_store import FeatureStore, StoreKeyError, weights_identity

KEY = {"kind": "features", "backbone": "test_resnet", "weights": "random", "input_size": 32,
       "patches": {"coords_hash": "abc", "size": 16}}


def test_rows_read_by_batch_equal_the_array_in_any_order(tmp_path):
    x = np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float32)
    store = FeatureStore(tmp_path)
    arr = store.write("s/1", KEY, x, chunk_rows=64)
    rows = np.array([999, 3, 3, 500, 64, 63, 0, 127, 128])  # chunk edges, repeats, unsorted
    np.testing.assert_array_equal(arr[rows], x[rows])
    np.testing.assert_array_equal(arr[10:300], x[10:300])
    assert arr[np.array([], int)].shape == (0, 7)
    again = pickle.loads(pickle.dumps(arr))  # what a DataLoader worker receives: reopens the file itself
    np.testing.assert_array_equal(again[rows[::-1]], x[rows[::-1]])
    with pytest.raises(IndexError, match="out of range"):
        arr[[1000]]


def test_sparse_rows_are_csr_slices(tmp_path):
    m = sp.random(300, 50, density=0.1, format="csr", random_state=1, dtype=np.float32)
    store = FeatureStore(tmp_path)
    stored = store.write("a", {"kind": "expr"}, m)
    rows = np.array([5, 4, 200, 201, 202, 0, 299, 5])
    got = stored[rows]
    assert sp.issparse(got) and got.shape == (8, 50)
    np.testing.assert_array_equal(got.toarray(), m[rows].toarray())
    np.testing.assert_array_equal(stored[100:110].toarray(), m[100:110].toarray())


@pytest.mark.parametrize("field,value", [("backbone", "test_vit"), ("weights", "sha256:0123"),
                                         ("input_size", 64), ("patches", {"coords_hash": "abd", "size": 16})])
def test_a_changed_key_is_a_miss_never_a_stale_hit(tmp_path, field, value):
    store = FeatureStore(tmp_path)
    store.write("a", KEY, np.ones((4, 3), np.float32))
    other = {**KEY, field: value}
    assert store.has("a", KEY) and not store.has("a", other)
    with pytest.raises(StoreKeyError, match="'a'"):
        store.open("a", other)


def test_a_file_under_the_right_name_with_another_key_inside_is_not_trusted(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("a", KEY, np.ones((4, 3), np.float32))
    other = {**KEY, "backbone": "x"}
    store.path("a", KEY).rename(store.path("a", other))  # e.g. a digest collision or a copied file
    assert not store.has("a", other)
    store.path("a", other).write_bytes(b"not hdf5")  # a damaged file is a miss too
    assert not store.has("a", other)


def test_an_interrupted_write_leaves_the_old_entry_and_no_temporary(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("a", KEY, np.zeros((4, 3), np.float32))

    bad = np.zeros((4, 3), object)  # h5py cannot store object arrays: fails mid-write
    with pytest.raises(Exception):
        store.write("a", KEY, bad)
    assert [p.name for p in tmp_path.iterdir()] == [store.path("a", KEY).name]
    np.testing.assert_array_equal(store.open("a", KEY).read_all(), np.zeros((4, 3)))


def test_weights_identity_is_the_file_content(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"one")
    first = weights_identity(w)
    w.write_bytes(b"two")  # same name, new weights
    import os
    os.utime(w, ns=(1, 1))
    assert weights_identity(w) != first and weights_identity(w).startswith("sha256:")
    assert weights_identity(None, pretrained=False) == "random"
    assert weights_identity("hf-hub:org/model") == "id:hf-hub:org/model"


def test_training_features_come_from_the_store_without_cutting_patches(tiny_config, synthetic_slides,
                                                                        monkeypatch, tmp_path):
    """prepare_slide fills the store once; a second preparation reads it and cuts no patch; new spot
    coordinates are a miss."""
    import stgraph.preprocess.prepare as prepare
    from stgraph.models import create_model

    config = tiny_config("cpu/bleep.yaml", f"data.cache_dir={tmp_path / 'cache'}")
    encoder = create_model(config, 8).image_encoder
    slide = synthetic_slides[0].copy()
    first = prepare.prepare_slide(slide, config, image_encoder=encoder)
    files = list((tmp_path / "cache" / "features").glob("*.h5"))
    assert len(files) == 1 and first.features is not None

    def no_patches(*a, **k):
        raise AssertionError("patches cut although the store holds the features")

    monkeypatch.setattr(prepare, "extract_patches", no_patches)
    second = prepare.prepare_slide(slide, config, image_encoder=encoder)
    np.testing.assert_array_equal(second.features, first.features)
    moved = slide.copy()
    moved.obsm["spatial"] = moved.obsm["spatial"] + 1.0
    with pytest.raises(AssertionError, match="patches cut"):
        prepare.prepare_slide(moved, config, image_encoder=encoder)


def test_every_image_encoder_setting_that_changes_features_changes_their_key(tiny_config, synthetic_slides, tmp_path):
    """Each field of model.image_encoder either changes the feature store's key (varied here one at a time) or
    is listed, with the reason, in NOT_IN_FEATURE_KEY (and then does not change the spot's key): a new setting
    fails this test until it is classified. model_kwargs were once missing (a `global_pool: max` run reused
    average-pooled features)."""
    import copy
    import dataclasses

    from stgraph.config.schema import ImageEncoderConfig
    from stgraph.preprocess.prepare import NOT_IN_FEATURE_KEY, feature_key

    (tmp_path / "w.pth").write_bytes(b"weights")
    varied = {"name": "another_encoder", "options": {"drop_rate": 0.1}, "backbone": "resnet18",
              "pretrained": True, "weights": str(tmp_path / "w.pth"), "input_size": 64,
              "model_kwargs": {"global_pool": "max"}, "architecture": "resnet18"}
    fields = {f.name for f in dataclasses.fields(ImageEncoderConfig)}
    assert fields == set(varied) | set(NOT_IN_FEATURE_KEY), "classify the new image encoder setting"
    config = tiny_config("stgraph.yaml")
    slide = synthetic_slides[0]
    base = feature_key(slide, config)
    for name, value in varied.items():
        other = copy.deepcopy(config)
        assert getattr(other.model.image_encoder, name) != value, name
        setattr(other.model.image_encoder, name, value)
        assert feature_key(slide, other) != base, f"model.image_encoder.{name} does not change the feature key"
    for name in NOT_IN_FEATURE_KEY:
        other = copy.deepcopy(config)
        value = getattr(other.model.image_encoder, name)
        setattr(other.model.image_encoder, name, (not value) if isinstance(value, bool) else 3.0)
        assert feature_key(slide, other) == base, name
    # the context view's own key holds its side: another context_scale, another key
    assert feature_key(slide, config, patch_um=64.0, microns_per_pixel=1.0) != \
        feature_key(slide, config, patch_um=96.0, microns_per_pixel=1.0)
