"""Your own AnnData and images without a converter: explicit reader options (coordinate columns or key, axis
order, micrometres, image file, pixel size) in Python and as ``--read KEY=VALUE`` on the command line."""
from __future__ import annotations

import anndata
import numpy as np
import pytest
from PIL import Image

from stgraph.data import read_slide
from stgraph.data.errors import SlideFormatError

MPP = 0.5


def _foreign(slide, folder, name: str):
    """``slide`` as a user's file from elsewhere: centres as obs columns in µm, no obsm['spatial'], no
    uns['spatial'], the H&E beside it as a PNG."""
    lib = next(iter(slide.uns["spatial"]))
    image = folder / f"{name}.png"
    Image.fromarray(slide.uns["spatial"][lib]["images"]["fullres"]).save(image)
    ad = slide.copy()
    ad.obs["x_centroid"] = ad.obsm["spatial"][:, 0] * MPP
    ad.obs["y_centroid"] = ad.obsm["spatial"][:, 1] * MPP
    ad.obsm["cell_rc"] = ad.obsm["spatial"][:, ::-1].copy()
    del ad.obsm["spatial"], ad.uns["spatial"], ad.obs["slide_id"]
    path = folder / f"{name}.h5ad"
    ad.write_h5ad(path)
    return path, image


def test_columns_in_micrometres_and_a_separate_image_read_into_the_convention(tmp_path, synthetic_slides):
    slide = synthetic_slides[0]
    path, image = _foreign(slide, tmp_path, "cells")
    ad = read_slide(path, x="x_centroid", y="y_centroid", coordinates="um", image=image, mpp=MPP)
    np.testing.assert_allclose(ad.obsm["spatial"], slide.obsm["spatial"])
    lib = ad.obs["slide_id"].iloc[0]
    assert lib == "cells" and ad.uns["spatial"][lib]["metadata"]["microns_per_pixel"] == MPP
    assert ad.uns["spatial"][lib]["metadata"]["source_image_path"] == str(image.resolve())
    # the same centres as (row, column) pixels under another obsm key
    yx = read_slide(path, spatial_key="cell_rc", axis_order="yx", image=image, mpp=MPP, slide_id="s1")
    np.testing.assert_allclose(yx.obsm["spatial"], slide.obsm["spatial"])
    assert yx.obs["slide_id"].iloc[0] == "s1"


def test_a_file_without_coordinates_names_its_candidates_and_the_options(tmp_path, synthetic_slides):
    path, _ = _foreign(synthetic_slides[0], tmp_path, "cells")
    with pytest.raises(SlideFormatError) as err:
        read_slide(path)
    msg = str(err.value)
    assert "no obsm['spatial']" in msg and "x_centroid" in msg and "y_centroid" in msg and "cell_rc" in msg
    assert "--read x=x_centroid --read y=y_centroid" in msg and "coordinates='um'" in msg


@pytest.mark.parametrize("options, needle", [
    ({"x": "x_um", "y": "y_centroid"}, "no obs column 'x_um'"),
    ({"x": "x_centroid"}, "both x= and y="),
    ({"x": "x_centroid", "y": "y_centroid", "coordinates": "um"}, "needs mpp="),
    ({"spatial_key": "nope"}, "no obsm['nope']"),
    ({"x": "x_centroid", "y": "y_centroid", "mpp": "-1"}, "positive number"),
    ({"x": "x_centroid", "y": "y_centroid", "axis_order": "zx"}, "axis_order"),
    ({"x": "x_centroid", "y": "y_centroid", "coordinates": "um", "mpp": "0.05", "image": None}, None),
    ({"x_col": "x_centroid"}, "takes no option 'x_col'"),
])
def test_bad_options_name_the_file_and_the_problem(tmp_path, synthetic_slides, options, needle):
    path, image = _foreign(synthetic_slides[0], tmp_path, "cells")
    if needle is None:  # centres 10x too far for the image: refused against it
        with pytest.raises(SlideFormatError, match="outside image"):
            read_slide(path, **{**options, "image": image})
        return
    with pytest.raises(SlideFormatError, match="cells.h5ad") as err:
        read_slide(path, **options)
    assert needle in str(err.value)


def test_the_command_line_trains_predicts_and_plots_foreign_files_with_read_options(tmp_path, synthetic_slides,
                                                                                     capsys):
    from cli.main import main
    from tests.conftest import CONFIGS, tiny_overrides

    paths = [_foreign(s, tmp_path, f"cells{i}") for i, s in enumerate(synthetic_slides)]
    read = ["--read", "x=x_centroid", "--read", "y=y_centroid", "--read", "coordinates=um",
            "--read", f"mpp={MPP}"]
    run = tmp_path / "run"
    train_files = []  # trained on files in the convention; the query is a file from elsewhere
    for i, s in enumerate(synthetic_slides[:2]):
        p = tmp_path / f"train{i}.h5ad"
        s.write_h5ad(p)
        train_files.append(str(p))
    assert main(["train", "--config", str(CONFIGS / "bleep.yaml"), "--data", *train_files, "--out", str(run),
                 *tiny_overrides(tmp_path / "cache", epochs=1), "data.harmony=false"]) == 0
    path, image = paths[2]
    out = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(run), "--slide", str(path), "--out", str(out), *read,
                 "--read", f"image={image}"]) == 0
    pred = anndata.read_h5ad(out)
    np.testing.assert_allclose(pred.obsm["spatial"], synthetic_slides[2].obsm["spatial"])
    assert [str(x) for x in pred.uns["stgraph"]["source_slide"]["read"]][:2] == ["x=x_centroid", "y=y_centroid"]
    png = tmp_path / "maps.png"
    assert main(["plot", "--pred", str(out), "--true", "--genes", "gene_3", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--slide", str(path), "--out", str(tmp_path / "p2.h5ad"),
                 "--read", "x_col=x_centroid"]) == 2
    assert "takes no option 'x_col'" in capsys.readouterr().err
    assert main(["predict", "--model", str(run), "--slide", str(path), "--out", str(tmp_path / "p3.h5ad"),
                 "--read", "x"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def _with_mpp(slide, mpp: float):
    ad = slide.copy()
    lib = next(iter(ad.uns["spatial"]))
    ad.uns["spatial"][lib]["metadata"]["microns_per_pixel"] = mpp
    return ad, lib


@pytest.mark.parametrize("mpp, size_um", [(0.5, 48.0), (0.2125, 55.0)])
def test_pseudospots_are_exact_squares_in_micrometres_holding_the_counts_of_their_units(synthetic_slides, mpp,
                                                                                        size_um):
    from stgraph.data.pp import pool_pseudospots

    slide, lib = _with_mpp(synthetic_slides[0], mpp)
    pooled = pool_pseudospots(slide, size_um)
    xy_um = slide.obsm["spatial"] * mpp
    cell = np.floor(xy_um / size_um).astype(int)  # (col, row) of every unit, by hand
    counts = slide.X.toarray()
    assert pooled.X.sum() == counts.sum() and pooled.obs["n_units"].sum() == slide.n_obs
    for i in range(pooled.n_obs):
        r, c = pooled.obs["array_row"].iloc[i], pooled.obs["array_col"].iloc[i]
        members = (cell[:, 0] == c) & (cell[:, 1] == r)
        np.testing.assert_array_equal(pooled.X[i].toarray()[0], counts[members].sum(0))
        # the square's centre, exactly on the µm grid
        np.testing.assert_allclose(pooled.obsm["spatial"][i] * mpp, [(c + 0.5) * size_um, (r + 0.5) * size_um],
                                   rtol=0, atol=1e-9)
    meta = pooled.uns["spatial"][lib]
    assert meta["scalefactors"]["spot_diameter_fullres"] == pytest.approx(size_um / mpp, rel=1e-12)
    assert meta["metadata"]["unit_shape"] == "square" and meta["metadata"]["pool_um"] == size_um
    assert "fullres" in meta["images"] and pooled.obs["slide_id"].iloc[0] == lib


def test_pseudospots_need_the_pixel_size_and_read_slide_pools_on_request(tmp_path, synthetic_slides):
    from stgraph.data.pp import pool_pseudospots

    with pytest.raises(SlideFormatError, match="pixel size"):
        pool_pseudospots(synthetic_slides[0], 55)  # the synthetic slide records none
    slide, _ = _with_mpp(synthetic_slides[0], 0.5)
    path = tmp_path / "s.h5ad"
    slide.write_h5ad(path)
    pooled = read_slide(path, pseudospot_um="48")  # a string, as --read passes it
    assert pooled.n_obs < slide.n_obs and pooled.X.sum() == slide.X.sum()
    with pytest.raises(SlideFormatError, match="s.h5ad"):
        read_slide(path, pseudospot_um="big")


def test_options_keep_the_files_image_and_pixel_size_and_command_line_text_is_typed(tmp_path, synthetic_slides):
    """A new slide id or a new image keeps what the file had (its image, its pixel size); ``--read`` text
    becomes the type each reader's option takes."""
    from stgraph.data.readers import read_slide as read

    slide, lib = _with_mpp(synthetic_slides[0], 0.5)
    path = tmp_path / "own.h5ad"
    slide.write_h5ad(path)
    renamed = read(path, slide_id="renamed")
    entry = renamed.uns["spatial"]["renamed"]
    assert "fullres" in entry["images"] and entry["metadata"]["microns_per_pixel"] == 0.5
    image = tmp_path / "he.png"
    Image.fromarray(slide.uns["spatial"][lib]["images"]["fullres"]).save(image)
    assert read(path, image=image).uns["spatial"][lib]["metadata"]["microns_per_pixel"] == 0.5
    with pytest.raises(SlideFormatError, match="axis_order goes with spatial_key"):
        read(path, x="array_col", y="array_row", axis_order="yx")
    with pytest.raises(SlideFormatError, match="spot_diameter_um=.*must be a float"):
        read(path, spot_diameter_um="wide")


def test_command_line_text_becomes_each_readers_own_types():
    import inspect

    from stgraph.data.readers import _typed
    from stgraph.data.readers.visium_hd import read_visium_hd

    params = inspect.signature(read_visium_hd).parameters
    assert _typed("16", params["pool_um"], "p") == 16.0 and _typed("false", params["load_images"], "p") is False
    assert _typed("8", params["bin_size_um"], "p") == 8
    with pytest.raises(SlideFormatError, match="load_images='maybe' must be a bool"):
        _typed("maybe", params["load_images"], "p")
