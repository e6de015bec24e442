"""Visium HD binned outputs on a tiny fake Space Ranger folder written here."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from stgraph.data.errors import SlideFormatError
from stgraph.data.readers.visium_hd import pool_bins, read_visium_hd

MPP = 0.2738  # µm per full-resolution pixel
N_ROWS, N_COLS, N_GENES = 6, 10, 4


def _has_parquet_engine():
    try:
        import pyarrow  # noqa: F401
        return True
    except ImportError:
        try:
            import fastparquet  # noqa: F401
            return True
        except ImportError:
            return False


def _write_10x_h5(path, counts, barcodes, genes):
    """counts (bins × genes) in the 10x HDF5 layout (CSC of genes × barcodes = CSR of bins × genes)."""
    m = sp.csr_matrix(counts)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"] = m.data.astype(np.int32)
        g["indices"] = m.indices.astype(np.int64)
        g["indptr"] = m.indptr.astype(np.int64)
        g["shape"] = np.array([counts.shape[1], counts.shape[0]], dtype=np.int32)
        g["barcodes"] = np.array(barcodes, dtype="S")
        feats = g.create_group("features")
        feats["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feats["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")


def _make_hd(root, positions_format="csv", bin_um=8):
    rng = np.random.default_rng(0)
    folder = root / "sampleHD" / "outs" / "binned_outputs" / f"square_{bin_um:03d}um"
    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    rows, cols = np.divmod(np.arange(N_ROWS * N_COLS), N_COLS)
    barcodes = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)]
    counts = rng.poisson(2, size=(len(barcodes), N_GENES))
    in_tissue = np.ones(len(barcodes), int)
    in_tissue[-1] = 0  # one bin off tissue: dropped
    _write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, [f"G{i}" for i in range(N_GENES)])
    step = bin_um / MPP
    pos = pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue, "array_row": rows, "array_col": cols,
                        "pxl_row_in_fullres": 100 + rows * step, "pxl_col_in_fullres": 200 + cols * step})
    if positions_format == "parquet":
        pos.to_parquet(spatial / "tissue_positions.parquet")
    elif positions_format == "parquet-stub":
        (spatial / "tissue_positions.parquet").write_bytes(b"PAR1 not really")
    else:
        pos.to_csv(spatial / "tissue_positions.csv", index=False)
    sf = {"microns_per_pixel": MPP, "bin_size_um": float(bin_um), "spot_diameter_fullres": bin_um / MPP,
          "tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.03, "regist_target_img_scalef": 0.5}
    (spatial / "scalefactors_json.json").write_text(json.dumps(sf))
    Image.fromarray(np.full((30, 40, 3), 240, np.uint8)).save(spatial / "tissue_hires_image.png")
    return root / "sampleHD" / "outs", counts, rows, cols, in_tissue


def test_read_bins(tmp_path):
    outs, counts, rows, cols, in_tissue = _make_hd(tmp_path)
    adata = read_visium_hd(outs, bin_size_um=8)
    assert adata.n_obs == N_ROWS * N_COLS - 1 and adata.n_vars == N_GENES
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), counts[in_tissue == 1])
    np.testing.assert_allclose(adata.obsm["spatial"][1], [200 + 8 / MPP, 100])
    assert list(adata.obs["slide_id"].cat.categories) == ["sampleHD"]
    entry = adata.uns["spatial"]["sampleHD"]
    assert entry["metadata"]["microns_per_pixel"] == MPP and entry["metadata"]["bin_size_um"] == 8
    assert entry["images"]["hires"].shape == (30, 40, 3)
    assert entry["scalefactors"]["tissue_hires_scalef"] == 0.1
    # The square_008um folder itself works too.
    assert read_visium_hd(outs / "binned_outputs" / "square_008um").n_obs == adata.n_obs


def test_pool_into_pseudo_spots(tmp_path):
    outs, counts, rows, cols, in_tissue = _make_hd(tmp_path)
    pooled = read_visium_hd(outs, pool_um=32, chunk_size=7)  # 4 × 4 bins; tiny chunks exercise the loop
    keep = in_tissue == 1
    br, bc = rows[keep] // 4, cols[keep] // 4
    # Blocks: rows 0–3 and 4–5 × cols 0–3, 4–7, 8–9 = 6 blocks.
    assert pooled.n_obs == 6
    for i in range(pooled.n_obs):
        r, c = pooled.obs["array_row"].iloc[i], pooled.obs["array_col"].iloc[i]
        sel = (br == r) & (bc == c)
        np.testing.assert_array_equal(pooled.X[i].toarray()[0], counts[keep][sel].sum(axis=0))
        assert pooled.obs["n_bins"].iloc[i] == sel.sum()
    assert pooled.obs["n_bins"].sum() == keep.sum()
    assert pooled.X.sum() == counts[keep].sum()
    np.testing.assert_array_equal(pooled.obs["array_row"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(pooled.obs["array_col"], [0, 1, 2, 0, 1, 2])
    # Block (0, 0): the mean of its 16 bin centres.
    np.testing.assert_allclose(pooled.obsm["spatial"][0], [200 + 1.5 * 8 / MPP, 100 + 1.5 * 8 / MPP])
    assert pooled.uns["spatial"]["sampleHD"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(32 / MPP)
    with pytest.raises(ValueError, match="multiple"):
        read_visium_hd(outs, pool_um=20)


def test_pool_bins_chunking_is_exact():
    rng = np.random.default_rng(3)
    n = 500
    rows, cols = rng.integers(0, 40, n), rng.integers(0, 40, n)
    x = sp.random(n, 30, density=0.2, random_state=1, format="csr") * 10
    full, r1, c1, m1 = pool_bins(x, rows, cols, 5, chunk_size=10**9)
    chunked, r2, c2, m2 = pool_bins(x, rows, cols, 5, chunk_size=13)
    np.testing.assert_allclose(full.toarray(), chunked.toarray(), rtol=1e-6)
    np.testing.assert_array_equal(r1, r2)
    dense = np.zeros((full.shape[0], 30))
    np.add.at(dense, m1, x.toarray())
    np.testing.assert_allclose(full.toarray(), dense, rtol=1e-5)


def test_parquet_positions(tmp_path):
    if _has_parquet_engine():
        outs, counts, *_ = _make_hd(tmp_path, positions_format="parquet")
        assert read_visium_hd(outs).n_obs == N_ROWS * N_COLS - 1
    else:
        outs, *_ = _make_hd(tmp_path, positions_format="parquet-stub")
        with pytest.raises(SlideFormatError, match=r"tissue_positions\.parquet.*pip install pyarrow"):
            read_visium_hd(outs)


def test_missing_parts_are_named(tmp_path):
    outs, *_ = _make_hd(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"square_016um \(bin folders present: \['square_008um'\]\)"):
        read_visium_hd(outs, bin_size_um=16)
    (outs / "binned_outputs" / "square_008um" / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="tissue_positions.parquet"):
        read_visium_hd(outs)
