"""ReferenceStore: HDF5 round trip, refusal to overwrite, corrupt files, extension with new slides."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from stgraph.retrieval.reference import ReferenceStore, ReferenceStoreError

GENES = ["EPCAM", "ERBB2", "CD3E", "MS4A1"]


def make_store(n_per_slide=12, slides=("A1", "B1"), dim=6, sparse=False, seed=0) -> ReferenceStore:
    rng = np.random.default_rng(seed)
    n = n_per_slide * len(slides)
    expr = rng.poisson(1.0, (n, len(GENES))).astype(np.float32)
    return ReferenceStore(
        embeddings=rng.standard_normal((n, dim)).astype(np.float32),
        expression=sp.csr_matrix(expr) if sparse else expr,
        genes=list(GENES),
        slide_ids=np.repeat(slides, n_per_slide),
        spot_ids=np.array([f"{x}x{y}" for x in range(len(slides)) for y in range(n_per_slide)]),
        kind="image",
        meta={"method": "bleep", "similarity": "cosine", "epochs": 3},
    )


def mapped(a) -> bool:
    """Whether an array's memory is a file mapping (anywhere down its chain of bases)."""
    import mmap

    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def dense(x):
    return x.toarray() if sp.issparse(x) else x


@pytest.mark.parametrize("sparse", [False, True])
def test_save_load_round_trip_keeps_arrays_and_predictions(tmp_path, sparse):
    store = make_store(sparse=sparse)
    path = store.save(tmp_path / "reference.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["reference.h5"]  # no temporary file left behind
    loaded = ReferenceStore.load(path)
    assert loaded.is_sparse == sparse
    np.testing.assert_array_equal(loaded.embeddings, store.embeddings)
    np.testing.assert_array_equal(dense(loaded.expression), dense(store.expression))
    np.testing.assert_array_equal(loaded.slide_ids, store.slide_ids)
    np.testing.assert_array_equal(loaded.spot_ids, store.spot_ids)
    assert loaded.genes == GENES and loaded.kind == "image" and loaded.meta == store.meta
    assert (loaded.n_spots, loaded.n_genes) == (24, 4)
    query = np.random.default_rng(1).standard_normal((5, 6))
    for aggregation in ("mean", "inverse_square"):
        np.testing.assert_array_equal(loaded.predict(query, k=4, aggregation=aggregation),
                                      store.predict(query, k=4, aggregation=aggregation))


def test_predict_with_k1_on_own_embeddings_returns_own_profiles():
    store = make_store()
    np.testing.assert_array_equal(store.predict(store.embeddings, k=1), store.expression)


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    path = make_store(seed=0).save(tmp_path / "reference.h5")
    other = make_store(seed=1)
    with pytest.raises(FileExistsError, match="reference.h5"):
        other.save(path)
    np.testing.assert_array_equal(ReferenceStore.load(path).embeddings, make_store(seed=0).embeddings)
    other.save(path, overwrite=True)
    np.testing.assert_array_equal(ReferenceStore.load(path).embeddings, other.embeddings)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        ReferenceStore.load(tmp_path / "nowhere.h5")


def test_junk_bytes_raise_reference_store_error_naming_the_file(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"this is not an HDF5 file" * 40)
    with pytest.raises(ReferenceStoreError, match="junk.h5"):
        ReferenceStore.load(path)


def test_truncated_file_raises_reference_store_error_naming_the_file(tmp_path):
    path = make_store(n_per_slide=200).save(tmp_path / "cut.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReferenceStoreError, match="cut.h5"):
        ReferenceStore.load(path)


@pytest.mark.parametrize("sparse", [False, True])
def test_a_loaded_store_is_mapped_from_the_file_and_never_writes_to_it(tmp_path, sparse):
    store = make_store(n_per_slide=50, sparse=sparse)
    path = store.save(tmp_path / "ref.h5")
    loaded = ReferenceStore.load(path)
    emb = loaded.embeddings
    assert mapped(emb) and emb.flags.writeable  # copy-on-write: no up-front read
    values = loaded.expression.data if sparse else loaded.expression
    values[:] = -1.0
    emb[:] = 0.0
    again = ReferenceStore.load(path)
    np.testing.assert_array_equal(again.embeddings, store.embeddings)
    np.testing.assert_array_equal(dense(again.expression), dense(store.expression))


def test_a_compressed_store_is_read_rather_than_mapped(tmp_path):
    store = make_store(n_per_slide=50)
    loaded = ReferenceStore.load(store.save(tmp_path / "ref.h5", compression="gzip"))
    assert not mapped(loaded.embeddings)
    np.testing.assert_array_equal(loaded.embeddings, store.embeddings)
    np.testing.assert_array_equal(loaded.expression, store.expression)


def test_a_dataset_reaching_past_the_end_of_its_file_is_refused_before_mapping_it(tmp_path, monkeypatch):
    """HDF5 refuses a truncated file when opening it; the size check guards the mapping itself (a file that
    shrank after opening): the store's file reports fewer bytes than the expression's extent."""
    import os

    from stgraph.retrieval import reference

    path = make_store(n_per_slide=400).save(tmp_path / "cut.h5")
    with h5py.File(path, "r") as f:
        cut = f["expression"].id.get_offset() + 8  # the file as if it ended inside the expression
    real = os.path.getsize
    monkeypatch.setattr(reference.os.path, "getsize", lambda p: cut if str(p) == str(path) else real(p))
    with pytest.raises(ReferenceStoreError, match=r"cut\.h5.*truncated: /expression ends at byte"):
        ReferenceStore.load(path)


def test_hdf5_that_is_not_a_store_or_is_inconsistent_is_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ReferenceStoreError, match="other.h5.*not a stgraph reference store"):
        ReferenceStore.load(other)

    path = make_store().save(tmp_path / "nan.h5")
    with h5py.File(path, "r+") as f:
        f["embeddings"][0, 0] = np.nan
    with pytest.raises(ReferenceStoreError, match="nan.h5.*NaN"):
        ReferenceStore.load(path)

    path = make_store().save(tmp_path / "short.h5")
    with h5py.File(path, "r+") as f:
        del f["spot_ids"]
    with pytest.raises(ReferenceStoreError, match=r"short.h5.*lacks \['spot_ids'\]"):
        ReferenceStore.load(path)


@pytest.mark.parametrize("sparse", [False, True])
def test_extend_appends_a_new_slide(sparse):
    store = make_store(sparse=sparse)
    rng = np.random.default_rng(9)
    new_emb = rng.standard_normal((5, 6)).astype(np.float32) + 20.0  # far from the old spots
    new_expr = np.full((5, 4), 7.0, np.float32)
    bigger = store.extend(new_emb, new_expr, GENES, "C1", [f"c{i}" for i in range(5)])
    assert bigger.n_spots == store.n_spots + 5 and store.n_spots == 24  # the original is untouched
    assert bigger.is_sparse == sparse
    np.testing.assert_array_equal(bigger.slide_ids[-5:], ["C1"] * 5)
    np.testing.assert_array_equal(bigger.embeddings[:24], store.embeddings)
    np.testing.assert_array_equal(dense(bigger.expression)[-5:], new_expr)
    np.testing.assert_array_equal(bigger.predict(new_emb, k=1, similarity="l2"), new_expr)


def test_extend_rejects_gene_mismatch_duplicate_slide_and_bad_shapes():
    store = make_store()
    emb, expr = np.zeros((2, 6), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="position 1 is 'CD3E'.*'ERBB2'"):
        store.extend(emb, expr, ["EPCAM", "CD3E", "ERBB2", "MS4A1"], "C1", ["a", "b"])
    with pytest.raises(ValueError, match="3 given, the store has 4"):
        store.extend(emb, expr[:, :3], GENES[:3], "C1", ["a", "b"])
    with pytest.raises(ValueError, match=r"\['B1'\] are already in the reference store"):
        store.extend(emb, expr, GENES, ["C1", "B1"], ["a", "b"])
    with pytest.raises(ValueError, match=r"must be \(n, 6\)"):
        store.extend(np.zeros((2, 5)), expr, GENES, "C1", ["a", "b"])
    with pytest.raises(ValueError, match=r"must be \(2, 4\)"):
        store.extend(emb, np.zeros((2, 3)), GENES, "C1", ["a", "b"])


def test_predict_defaults_to_the_similarity_recorded_in_meta():
    # A query whose cosine and l2 nearest neighbours differ: r0 points the same way but is far away.
    store = ReferenceStore(embeddings=np.array([[10.0, 0.0], [1.0, 1.0]]), expression=np.eye(2, 4),
                           genes=GENES, slide_ids=["A1", "A1"], spot_ids=["a", "b"], meta={"similarity": "l2"})
    query = np.array([[1.0, 0.0]])
    np.testing.assert_array_equal(store.predict(query, k=1), np.eye(2, 4)[[1]])
    np.testing.assert_array_equal(store.predict(query, k=1, similarity="cosine"), np.eye(2, 4)[[0]])


def test_constructor_validates_shapes_and_kind():
    store = make_store()
    fields = dict(embeddings=store.embeddings, expression=store.expression, genes=GENES,
                  slide_ids=store.slide_ids, spot_ids=store.spot_ids)
    with pytest.raises(ValueError, match="expression has 23 rows but embeddings have 24"):
        ReferenceStore(**{**fields, "expression": store.expression[:23]})
    with pytest.raises(ValueError, match="3 genes"):
        ReferenceStore(**{**fields, "genes": GENES[:3]})
    with pytest.raises(ValueError, match="spot_ids has 2 entries"):
        ReferenceStore(**{**fields, "spot_ids": ["a", "b"]})
    with pytest.raises(ValueError, match="kind must be one of"):
        ReferenceStore(**fields, kind="gene")
    with pytest.raises(ValueError, match="JSON"):
        ReferenceStore(**fields, meta={"bad": object()})


def test_to_anndata():
    store = make_store()
    adata = store.to_anndata()
    assert adata.shape == (24, 4) and list(adata.var_names) == GENES
    np.testing.assert_array_equal(adata.X, store.expression)
    np.testing.assert_array_equal(adata.obsm["X_emb"], store.embeddings)
    assert list(adata.obs["slide_id"].cat.categories) == ["A1", "B1"]


# ------------------------------------------------------------------------------- saved kNN index
def _saved_indexes(path):
    return sorted(p.name for p in path.parent.glob(f"{path.name}.*.faiss"))


def test_knn_index_is_saved_beside_the_store_and_read_back(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from stgraph.retrieval.knn import FaissKNN
    from stgraph.retrieval.reference import ReferenceStore as Store

    path = make_store().save(tmp_path / "reference.h5")
    rng = np.random.default_rng(1)
    query = rng.standard_normal((9, 6)).astype(np.float32)
    first = Store.load(path).predict(query, k=5, backend="faiss")
    assert len(_saved_indexes(path)) == 1  # written on the first prediction

    def no_build(self, reference):
        raise AssertionError("the saved index should have been read, not rebuilt")

    monkeypatch.setattr(FaissKNN, "_fit", no_build)
    again = Store.load(path).predict(query, k=5, backend="faiss")
    np.testing.assert_allclose(again, first, rtol=1e-6)


def test_saved_knn_index_is_invalidated_by_new_embeddings_settings_and_damage(tmp_path):
    pytest.importorskip("faiss")
    from stgraph.retrieval.reference import ReferenceStore as Store

    path = make_store().save(tmp_path / "reference.h5")
    query = np.random.default_rng(1).standard_normal((9, 6)).astype(np.float32)
    Store.load(path).predict(query, k=5, backend="faiss")
    (old,) = _saved_indexes(path)

    # Other backend settings: another key; the stale file is replaced, not read.
    Store.load(path).predict(query, k=5, backend="faiss", similarity="l2")
    (other,) = _saved_indexes(path)
    assert other != old

    # extend + save over the file: the saved indexes go with the old embeddings.
    grown = Store.load(path).extend(np.ones((3, 6), np.float32), np.zeros((3, 4), np.float32), GENES, "C1",
                                    ["a", "b", "c"])
    grown.save(path, overwrite=True)
    assert _saved_indexes(path) == []
    expected = grown.predict(query, k=5, backend="torch")
    np.testing.assert_allclose(Store.load(path).predict(query, k=5, backend="faiss"), expected, rtol=1e-5,
                               atol=1e-6)
    (fresh,) = _saved_indexes(path)

    # A damaged index file is rebuilt (and rewritten), never trusted.
    (path.parent / fresh).write_bytes(b"not a faiss index")
    np.testing.assert_allclose(Store.load(path).predict(query, k=5, backend="faiss"), expected, rtol=1e-5,
                               atol=1e-6)
    assert (path.parent / fresh).stat().st_size > 100
    # Files that only look alike are not ours to delete.
    (tmp_path / "reference.h5.mine.faiss").write_bytes(b"x")
    grown.save(path, overwrite=True)
    assert _saved_indexes(path) == ["reference.h5.mine.faiss"]


def test_saved_knn_index_counts_as_a_run_folder_file_of_ours(tmp_path):
    from stgraph.runfolder import foreign_entries

    (tmp_path / "run.json").write_text('{"state": "complete"}')
    (tmp_path / "reference.h5").write_bytes(b"")
    (tmp_path / f"reference.h5.{'0a' * 10}.faiss").write_bytes(b"")
    (tmp_path / f".reference.h5.{'0a' * 10}.faiss.x1y2.tmp").write_bytes(b"")
    assert foreign_entries(tmp_path) == []  # --force may replace this folder
    (tmp_path / "reference.h5.mine.faiss").write_bytes(b"")
    assert foreign_entries(tmp_path) == ["reference.h5.mine.faiss"]
