"""Plots write real PNGs with the expected panels."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from stgraph.data.synthetic import make_synthetic_slide
from stgraph.pl import plot_fold_pcc, plot_genes, plot_loss_curves, slide_image


def test_gene_maps_over_the_image(tmp_path):
    slide = make_synthetic_slide(n_rows=6, n_cols=6, n_genes=5)
    img, scale = slide_image(slide)
    assert img.shape[2] == 3 and scale == 1.0
    path = tmp_path / "maps.png"
    fig = plot_genes(slide, ["gene_0", "gene_1"], adata_true=slide, path=path)
    assert path.stat().st_size > 5000
    image_axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(image_axes) == 4  # 2 genes × (predicted, true)
    assert "r = 1.00" in image_axes[0].get_title()
    plt.close(fig)


def test_loss_curves_and_fold_plot(tmp_path):
    log = pd.DataFrame({"epoch": [0, 0, 1, 1], "split": ["train", "val"] * 2, "total": [3, 2.5, 2, 2.2],
                        "align": [3, 2.5, 2, 2.2], "dgi_spot": [0.7, np.nan, 0.6, np.nan]})
    fig = plot_loss_curves(log, path=tmp_path / "loss.png")
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "total"
    plt.close(fig)
    df = pd.DataFrame({"method": ["a", "a", "b", "b"], "fold": [1, 2, 1, 2], "pcc_acg": [0.1, 0.2, np.nan, np.nan]})
    fig = plot_fold_pcc(df, path=tmp_path / "pcc.png")
    assert (tmp_path / "pcc.png").stat().st_size > 2000
    plt.close(fig)
