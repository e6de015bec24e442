"""Preprocessing: normalisation, train-only HVG union, gene lists, alignment, PCA, Harmony."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from stgraph.data import SlideCollection, SlideFormatError, make_synthetic_collection
from stgraph.data import pp

from tests.conftest import SHARED  # noqa: E402
GENE_LIST = SHARED / "data" / "her2st" / "her_hvg_cut_1000.npy"


def _counts(x, genes=None, slide_id="s"):
    x = np.asarray(x, dtype=np.float32)
    genes = genes or [f"g{i}" for i in range(x.shape[1])]
    ad = anndata.AnnData(sp.csr_matrix(x), var=pd.DataFrame(index=genes))
    ad.obs["slide_id"] = pd.Categorical([slide_id] * ad.n_obs)
    return ad


def test_normalize_log1p_hand_computed():
    ad = _counts([[1, 3], [0, 2]])
    out = pp.normalize_log1p(ad, target_sum=10, copy=True)
    np.testing.assert_allclose(out.X.toarray(), np.log1p([[2.5, 7.5], [0, 10]]), rtol=1e-6)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), [[1, 3], [0, 2]])
    np.testing.assert_array_equal(ad.X.toarray(), [[1, 3], [0, 2]])  # copy=True leaves the input alone
    assert pp.normalize_log1p(out, target_sum=10) is None  # in place, scanpy style
    # idempotent: re-normalises from layers['counts']
    np.testing.assert_allclose(out.X.toarray(), np.log1p([[2.5, 7.5], [0, 10]]), rtol=1e-6)



def test_log_normalised_is_counts_per_10000_whatever_the_slide_depth():
    # Two slides whose depths differ 20×: both land on log1p(counts per 10,000), the one scale every target,
    # prediction and truth shares (a per-slide median target would put the shallow slide on another curve).
    deep = _counts([[100, 300], [0, 200]])
    shallow = _counts([[5, 15], [0, 10]])
    for ad in (deep, shallow):
        np.testing.assert_allclose(pp.log_normalised(ad).X.toarray(), np.log1p([[2500, 7500], [0, 10000]]),
                                   rtol=1e-6)
    # a slide normalised another way (its own target) is redone from its counts layer
    other = pp.normalize_log1p(deep, target_sum=10, copy=True)
    np.testing.assert_allclose(pp.log_normalised(other).X.toarray(), np.log1p([[2500, 7500], [0, 10000]]),
                               rtol=1e-6)
    done = pp.normalize_log1p(deep, copy=True)
    assert pp.log_normalised(done) is done and pp.EXPRESSION_UNITS == "log1p(counts per 10,000)"

def _hvg_slides():
    """Three slides of 40 spots × 201 genes; ``leak`` varies only in the held-out slide ``test``.

    (Enough genes that scanpy's mean bins are populated: a gene alone in its bin gets a normalised
    dispersion of 1 and ties with the top genes.)
    """
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(200)] + ["leak"]
    slides = []
    for sid in ("train0", "train1", "test"):
        # every gene has mean ≈ 5 (one mean bin); g0–g2 are over-dispersed in every slide
        x = rng.poisson(5.0, size=(40, 201)).astype(np.float32)
        x[:, :3] = rng.poisson(rng.gamma(0.3, 5.0 / 0.3, size=(40, 3)))
        x[:, 200] = 5.0
        if sid == "test":
            x[:, 200] = rng.choice([0.0, 10.0], size=40)
        slides.append(_counts(x, genes, sid))
    return slides


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_hvg_union_uses_only_training_slides():
    train0, train1, test = _hvg_slides()
    genes = pp.select_hvg_union([train0, train1], n_top=3)
    assert "leak" not in genes
    # the union of each training slide's own top-3 (scanpy on that slide alone)
    per_slide = set()
    for ad in (train0, train1):
        table = sc.pp.highly_variable_genes(pp.normalize_log1p(ad, copy=True), n_top_genes=3, flavor="seurat",
                                            inplace=False)
        per_slide |= set(ad.var_names[table["highly_variable"].to_numpy()])
    assert set(genes) == per_slide and 3 <= len(genes) <= 6
    assert "leak" in pp.select_hvg_union([train0, train1, test], n_top=3)
    # deterministic: same genes in the same (first slide's) order whatever the slide order
    assert pp.select_hvg_union([train1, train0], n_top=3) == genes
    assert genes == [g for g in train0.var_names if g in set(genes)]


def test_hvg_union_restricted_to_shared_genes():
    train0, train1, _ = _hvg_slides()
    only_one = train0[:, [g for g in train0.var_names if g != "g0"]].copy()
    genes = pp.select_hvg_union([only_one, train1], n_top=3)
    assert "g0" not in genes


def test_load_gene_list(tmp_path):
    if GENE_LIST.exists():
        genes = pp.load_gene_list(GENE_LIST)
        assert len(genes) == 785 and genes[:2] == ["HPS6", "TNC"]
    (tmp_path / "genes.txt").write_text("# markers\nERBB2\n\nGNAS\n")
    assert pp.load_gene_list(tmp_path / "genes.txt") == ["ERBB2", "GNAS"]
    (tmp_path / "dup.txt").write_text("A\nB\nA\n")
    with pytest.raises(SlideFormatError, match="dup.txt repeats gene\\(s\\) \\['A'\\]"):
        pp.load_gene_list(tmp_path / "dup.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        pp.load_gene_list(tmp_path / "nope.txt")


def test_align_genes_reorders_fills_and_warns():
    ad = _counts([[1, 2, 3], [4, 5, 6]], ["a", "b", "c"])
    ad.layers["counts"] = ad.X.copy()
    with pytest.warns(UserWarning, match="lacks 1 of 3 genes.*: z"):
        out = pp.align_genes(ad, ["c", "z", "a"])
    assert list(out.var_names) == ["c", "z", "a"] and sp.issparse(out.X)
    np.testing.assert_array_equal(out.X.toarray(), [[3, 0, 1], [6, 0, 4]])
    np.testing.assert_array_equal(out.layers["counts"].toarray(), [[3, 0, 1], [6, 0, 4]])
    dense = ad.copy()
    dense.X = dense.X.toarray()
    with pytest.warns(UserWarning):
        filled = pp.align_genes(dense, ["b", "y"], fill_value=-1.0)
    np.testing.assert_array_equal(filled.X, [[2, -1], [5, -1]])
    many = [f"m{i}" for i in range(25)]
    with pytest.warns(UserWarning, match="lacks 25 of 25 genes.*m19 and 5 more"):
        pp.align_genes(ad, many)
    with pytest.raises(ValueError, match="repeats"):
        pp.align_genes(ad, ["a", "a"])


def test_run_pca_transforms_queries():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(30, 8)), rng.normal(size=(5, 8))
    fitted = pp.run_pca(_counts(train), n_comps=3)
    ref = PCA(3, random_state=0).fit(train.astype(np.float32))
    np.testing.assert_allclose(np.abs(fitted.transform(query)), np.abs(ref.transform(query)), rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match="exceeds"):
        assert pp.run_pca(train[:4], n_comps=10).n_components_ == 4


def test_harmony_shapes_orientation_and_correction():
    slides = make_synthetic_collection(n_slides=3, n_rows=12, n_cols=12, n_genes=20, spacing=8)
    normed = [pp.normalize_log1p(ad, copy=True) for ad in slides]
    normed[1].X = normed[1].X.toarray() + 1.5  # a batch shift on slide1
    before = [np.asarray(ad.X.toarray() if sp.issparse(ad.X) else ad.X).mean(0) for ad in normed]
    corrected = pp.harmony_correct(normed, n_pcs=5, seed=0)
    assert [c.shape for c in corrected] == [(144, 20)] * 3 and corrected[0].dtype == np.float32
    for ad in normed:
        assert ad.obsm["X_pca_harmony"].shape == (144, 5) and ad.obsm["X_pca"].shape == (144, 5)
    after = [c.mean(0) for c in corrected]
    gap_before = np.linalg.norm(before[1] - before[0])  # 7.5 (4.4 of it is layout, not batch)
    gap_after = np.linalg.norm(after[1] - after[0])  # 3.8 (4.0 without the shift)
    assert gap_after < 0.7 * gap_before
    # X_corr = X + (Z_corr − Z) W: the residual outside the PCA subspace is unchanged
    x = np.concatenate([np.asarray(ad.X.toarray() if sp.issparse(ad.X) else ad.X) for ad in normed])
    shift = np.concatenate(corrected) - x
    z_shift = np.concatenate([ad.obsm["X_pca_harmony"] - ad.obsm["X_pca"] for ad in normed])
    assert np.linalg.matrix_rank(shift, tol=1e-3) <= 5
    assert np.abs(shift).max() > 0 and np.abs(z_shift).max() > 0


def test_harmony_orientation_helper():
    class Fake:
        def __init__(self, z):
            self.Z_corr = z

    z = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(pp._harmony_z(Fake(z), n_cells=4, n_pcs=3), z)
    np.testing.assert_array_equal(pp._harmony_z(Fake(z.T), n_cells=4, n_pcs=3), z)
    with pytest.raises(ValueError, match="shape"):
        pp._harmony_z(Fake(np.zeros((5, 5))), n_cells=4, n_pcs=3)


def test_harmony_needs_aligned_genes():
    a = _counts(np.ones((4, 2)), ["a", "b"], "s1")
    b = _counts(np.ones((4, 2)), ["b", "a"], "s2")
    with pytest.raises(ValueError, match="align_genes"):
        pp.harmony_correct([a, b], n_pcs=1)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="numba's pool equals torch's on a 1-core machine")
def test_normalisation_keeps_torch_thread_count():
    """scanpy's numba kernels reset the process's OpenMP pool to every core; a process told OMP_NUM_THREADS=1
    must stay at 1 torch thread after normalising and HVG selection (a fresh interpreter: numba sets the pool
    once per process; an explicit torch.set_num_threads survives, the environment's setting did not)."""
    code = (
        "import numpy as np, scipy.sparse as sp, torch, anndata as ad\n"
        "from stgraph.data import pp\n"
        "a = ad.AnnData(sp.random(200, 300, density=0.3, format='csr', dtype=np.float32, random_state=0) * 10)\n"
        "pp.normalize_log1p(a)\n"
        "pp.select_hvg_union([a], n_top=50)\n"
        "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1"
