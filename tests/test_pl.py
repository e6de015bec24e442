"""Plots write real PNGs with the expected panels, over the right image at the right scale."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stgraph.data.synthetic import make_synthetic_slide
from stgraph.pl import plot_fold_pcc, plot_genes, plot_loss_curves, slide_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_SIGNATURE


def _map_axes(fig):
    return [ax for ax in fig.axes if ax.collections and ax.get_title()]


@pytest.fixture(scope="module")
def slide():
    return make_synthetic_slide(n_rows=5, n_cols=5, n_genes=4)


def _noisy_prediction(slide):
    pred = slide.copy()
    counts = np.asarray(slide.X.toarray(), dtype=np.float32)
    pred.X = counts + np.random.default_rng(0).normal(0, 2.0, size=counts.shape).astype(np.float32)
    return pred, counts


def test_slide_image_follows_the_convention(slide):
    img, scale = slide_image(slide)
    assert img.shape[2] == 3 and scale == 1.0
    np.testing.assert_array_equal(img, slide.uns["spatial"]["synthetic"]["images"]["fullres"])
    hires = slide.copy()
    entry = hires.uns["spatial"]["synthetic"]
    entry["images"]["hires"] = entry["images"]["fullres"][::2, ::2]
    entry["scalefactors"]["tissue_hires_scalef"] = 0.5
    img, scale = slide_image(hires)
    assert scale == 0.5 and img.shape[0] == entry["images"]["fullres"][::2].shape[0]
    with pytest.raises(KeyError, match="nope"):
        slide_image(slide, library_id="nope")


def test_gene_maps_over_the_image(slide, tmp_path):
    pred, counts = _noisy_prediction(slide)
    path = tmp_path / "maps.png"
    fig = plot_genes(pred, ["gene_0", "gene_1"], adata_true=slide, path=path)
    assert _is_png(path)
    maps = _map_axes(fig)
    assert len(maps) == 4  # 2 genes × (predicted, true)
    assert all(ax.get_images() for ax in maps)  # each over the H&E
    r = stats.pearsonr(np.asarray(pred.X)[:, 1], counts[:, 1])[0]
    assert maps[2].get_title().splitlines()[0] == f"gene_1 predicted · r = {r:.2f} here"
    assert maps[3].get_title().splitlines()[0] == "gene_1 true"
    assert maps[2].get_title().splitlines()[1] == f"mean {np.asarray(pred.X)[:, 1].mean():.2f}"
    np.testing.assert_allclose(maps[0].collections[0].get_offsets(), slide.obsm["spatial"])
    np.testing.assert_allclose(maps[0].collections[0].get_array(), np.asarray(pred.X)[:, 0])
    assert all(ax.collections[0].get_alpha() < 1 for ax in maps)  # spots translucent over the H&E
    bars = [a for a in fig.axes if a not in maps]
    assert len(bars) == 4 and all(b.get_ylabel().startswith("log1p(counts per 10,000)") for b in bars)
    plt.close(fig)
    shared = plot_genes(pred, ["gene_0"], adata_true=slide, shared_scale=True)
    both = np.concatenate([np.asarray(pred[:, "gene_0"].X).ravel(), slide[:, "gene_0"].X.toarray().ravel()])
    for ax in _map_axes(shared):  # one colour range per gene: [min, max] over both panels
        assert ax.collections[0].get_clim() == pytest.approx((both.min(), both.max()))
    plt.close(shared)


def test_each_panel_shows_its_own_pattern_but_never_stretches_noise(slide):
    """Default: each panel its own robust range (a shrunken prediction keeps its visible pattern), at least a
    quarter of the gene's usual range wide (a gene that hardly varies is drawn nearly flat, not vivid)."""
    from stgraph.pl.spatial import MIN_SPAN

    pred, _ = _noisy_prediction(slide)
    shrunk = pred.copy()
    shrunk.X = np.asarray(pred.X) * 0.1 + 1.0  # a prediction shrunk towards its mean, as a ridge's is
    fig = plot_genes(shrunk, ["gene_0"], adata_true=slide)
    pred_ax, true_ax = _map_axes(fig)
    lo, hi = pred_ax.collections[0].get_clim()
    values = np.asarray(shrunk[:, "gene_0"].X).ravel()
    assert hi - lo < 0.5 * np.ptp(slide[:, "gene_0"].X.toarray())  # its own, narrower range: the pattern shows
    assert "this panel's range" in fig.axes[-1].get_ylabel()
    plt.close(fig)
    flat = pred.copy()
    flat.X = np.full(pred.shape, 0.02, np.float32) + np.random.default_rng(1).normal(0, 0.001, pred.shape).astype(np.float32)
    flat.var["train_q01"], flat.var["train_q99"] = 0.0, 4.0  # the gene usually spans 0–4
    fig = plot_genes(flat, ["gene_0"])
    (ax,) = _map_axes(fig)
    lo, hi = ax.collections[0].get_clim()
    assert hi - lo >= MIN_SPAN * 4.0 - 1e-9  # noise of ±0.001 is not stretched over the whole colour map
    assert "training 0.00–4.00" in ax.get_title()
    plt.close(fig)


def test_an_unreliable_gene_is_marked_and_a_reliable_one_says_so(slide):
    pred, _ = _noisy_prediction(slide)
    pred.var["expected_r"] = [0.45, 0.02, 0.3, 0.3]
    pred.var["reliable"] = [True, False, True, True]
    fig = plot_genes(pred, ["gene_0", "gene_1"])
    good, bad = _map_axes(fig)
    assert good.get_title().endswith("expected r 0.45 · reliable")
    assert bad.get_title().endswith("expected r 0.02 · UNRELIABLE") and bad.title.get_color() == "firebrick"
    assert any(p.get_edgecolor()[:3] != (0, 0, 0) for p in bad.patches) and not good.patches
    plt.close(fig)


def test_gene_maps_scale_spots_to_the_hires_image(slide):
    hires = slide.copy()
    entry = hires.uns["spatial"]["synthetic"]
    entry["images"]["hires"] = entry["images"]["fullres"][::4, ::4]
    entry["scalefactors"]["tissue_hires_scalef"] = 0.25
    fig = plot_genes(hires, ["gene_2"])
    (ax,) = _map_axes(fig)
    assert ax.get_images()[0].get_array().shape[:2] == entry["images"]["hires"].shape[:2]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), 0.25 * slide.obsm["spatial"])
    assert ax.get_title().splitlines()[0] == "gene_2 predicted"
    plt.close(fig)


def test_gene_maps_reject_unknown_genes_and_unshared_spots(slide):
    with pytest.raises(KeyError, match="NOPE"):
        plot_genes(slide, ["gene_0", "NOPE"])
    other = slide.copy()
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    with pytest.raises(ValueError, match="share no spot"):
        plot_genes(slide, ["gene_0"], adata_true=other)


def test_loss_curves_from_csv(tmp_path):
    log = pd.DataFrame({"epoch": [0, 0, 1, 1], "split": ["train", "val"] * 2, "total": [3, 2.5, 2, 2.2],
                        "align": [3, 2.5, 2, 2.2], "dgi_spot": [0.7, np.nan, 0.6, np.nan],
                        "seconds": [1.0, np.nan, 1.0, np.nan]})
    log.to_csv(tmp_path / "log.csv", index=False)
    fig = plot_loss_curves(tmp_path / "log.csv", path=tmp_path / "loss.png")
    assert _is_png(tmp_path / "loss.png")
    assert [ax.get_title() for ax in fig.axes] == ["total", "align", "dgi_spot"]
    assert len(fig.axes[0].get_lines()) == 2 and len(fig.axes[2].get_lines()) == 1  # dgi_spot: train only
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), [2.5, 2.2])  # val curve
    plt.close(fig)
    with pytest.raises(ValueError, match="split"):
        plot_loss_curves(log.drop(columns="split"))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        plot_loss_curves(tmp_path / "missing.csv")


def test_fold_plot(tmp_path):
    df = pd.DataFrame({"method": ["a", "a", "b", "b", "c"], "fold": [1, 2, 1, 2, 1],
                       "pcc_acg": [0.1, 0.2, np.nan, np.nan, 0.3]})
    fig = plot_fold_pcc(df, path=tmp_path / "pcc.png")
    assert _is_png(tmp_path / "pcc.png")
    (ax,) = fig.axes
    # b is undefined on every fold: no empty "n/a" column, a note names it; the title says the metric in words.
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "c"]
    assert ax.get_title() == "Mean Pearson r, all genes, per held-out section"
    assert any("not shown" in t.get_text() and "b" in t.get_text() for t in fig.texts)
    assert not any(t.get_text() == "n/a" for t in ax.texts)
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    np.testing.assert_allclose(np.sort(dots), [0.1, 0.2, 0.3])  # every defined fold is drawn once
    plt.close(fig)
    from stgraph.pl.benchmark import metric_label

    assert metric_label("pcc_heg50") == "mean Pearson r, 50 most expressed genes"
    assert metric_label("hit_at_10") == "Hit@10" and metric_label("custom") == "custom"
    with pytest.raises(KeyError, match="ssim"):
        plot_fold_pcc(df, metric="ssim")
