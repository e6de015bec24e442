"""HEST-1k sample reader on a tiny fake sample built here."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from stgraph.data.errors import SlideFormatError
from stgraph.data.readers.hest import read_hest
from stgraph.data.wsi_synthetic import pink_texture, write_pyramidal_tiff


def _make_sample(root, sid="TENX00", n=12, wsi_mpp=None, meta_extra=None):
    rng = np.random.default_rng(0)
    (root / "st").mkdir(parents=True, exist_ok=True)
    (root / "wsis").mkdir(exist_ok=True)
    (root / "metadata").mkdir(exist_ok=True)
    counts = rng.poisson(3, size=(n, 5)).astype(np.int64)
    xy = np.column_stack([rng.uniform(10, 500, n), rng.uniform(10, 250, n)])
    obs = pd.DataFrame({"in_tissue": 1, "array_row": np.arange(n) // 4, "array_col": (np.arange(n) % 4) * 2,
                        "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]},
                       index=[f"AAAC-{i}" for i in range(n)])
    st = AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(5)]))
    st.obsm["spatial"] = xy
    st.write_h5ad(root / "st" / f"{sid}.h5ad")
    img = pink_texture((256, 512), rng)
    write_pyramidal_tiff(root / "wsis" / f"{sid}.tif", img, levels=2, mpp=wsi_mpp,
                         flavour="resolution" if wsi_mpp else "none")
    meta = {"pixel_size_um_estimated": 0.55, "spot_diameter": 55.0, "inter_spot_dist": 100.0,
            "st_technology": "Visium", "organ": "Bowel"}
    meta.update(meta_extra or {})
    (root / "metadata" / f"{sid}.json").write_text(json.dumps(meta))
    return counts, xy, img


def test_read_hest_sample(tmp_path):
    counts, xy, img = _make_sample(tmp_path, wsi_mpp=0.25)
    adata = read_hest(tmp_path, "TENX00", hires_max_side=128)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    np.testing.assert_allclose(adata.obsm["spatial"], xy)
    assert list(adata.obs["slide_id"].cat.categories) == ["TENX00"]
    assert adata.obs["array_row"].dtype == np.int64
    entry = adata.uns["spatial"]["TENX00"]
    assert entry["images"]["hires"].shape == (64, 128, 3)
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.25)
    # The metadata's estimated pixel size wins over the TIFF's (0.25).
    assert entry["metadata"]["microns_per_pixel"] == 0.55
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(100.0)
    assert entry["metadata"]["source_image"] == str((tmp_path / "wsis" / "TENX00.tif").resolve())
    assert entry["metadata"]["st_technology"] == "Visium"
    # Patches can be cut from the WSI the metadata names.
    from stgraph.data.image import load_fullres_image

    x, y = np.round(adata.obsm["spatial"][0]).astype(int)
    np.testing.assert_array_equal(load_fullres_image(adata).crop(x - 4, y - 4, x + 4, y + 4),
                                  img[y - 4 : y + 4, x - 4 : x + 4])


def test_pixel_size_from_the_wsi_when_metadata_lacks_it(tmp_path):
    _make_sample(tmp_path, wsi_mpp=0.25, meta_extra={"pixel_size_um_estimated": None})
    assert read_hest(tmp_path, "TENX00", hires_max_side=None).uns["spatial"]["TENX00"]["metadata"][
        "microns_per_pixel"] == pytest.approx(0.25)
    _make_sample(tmp_path, sid="NOMPP", wsi_mpp=None, meta_extra={"pixel_size_um_estimated": None})
    with pytest.raises(SlideFormatError, match=r"NOMPP\.tif.*--mpp"):
        read_hest(tmp_path, "NOMPP")


def test_missing_files_are_named(tmp_path):
    _make_sample(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"st/OTHER\.h5ad"):
        read_hest(tmp_path, "OTHER")
    (tmp_path / "wsis" / "TENX00.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"wsis/TENX00\.tif"):
        read_hest(tmp_path, "TENX00")
    with pytest.raises(FileNotFoundError, match="HEST data folder"):
        read_hest(tmp_path / "nope", "TENX00")


def test_spots_outside_the_wsi(tmp_path):
    _make_sample(tmp_path)
    import anndata

    st = anndata.read_h5ad(tmp_path / "st" / "TENX00.h5ad")
    st.obsm["spatial"][0] = [5000, 10]
    st.write_h5ad(tmp_path / "st" / "TENX00.h5ad")
    with pytest.raises(SlideFormatError, match=r"outside the whole-slide image .*TENX00\.tif"):
        read_hest(tmp_path, "TENX00")
