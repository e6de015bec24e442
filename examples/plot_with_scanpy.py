"""Plot a prediction with squidpy (when installed) and scanpy: a prediction is an ordinary AnnData with
obsm['spatial'] and the input's uns['spatial'], so the usual spatial plots draw it over the H&E.

    python examples/plot_with_scanpy.py          # trains with examples/api_on_anndata.py first
    python examples/plot_with_scanpy.py --tiny   # smoke test
"""
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script writing files; in a notebook leave the backend alone
import matplotlib.pyplot as plt  # noqa: E402
import scanpy as sc  # noqa: E402
from _common import run  # noqa: E402
from api_on_anndata import main as train_and_predict  # noqa: E402

from stgraph.keys import Key  # noqa: E402
from stgraph.pl import plot_genes  # noqa: E402


def _save_with_image(path: Path) -> None:
    """Save the current figure, checking that the H&E is actually drawn under the spots."""
    fig = plt.gcf()
    if not any(ax.get_images() for ax in fig.axes):
        raise RuntimeError(f"{path.name}: no image under the spots")
    fig.savefig(path, dpi=80)
    plt.close("all")


def main(argv=None):
    from _common import parser

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out = Path(args.out) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    pred = train_and_predict(argv)
    genes = list(pred.var_names[:2])

    library_id = next(iter(pred.uns[Key.uns.spatial]))
    entry = pred.uns[Key.uns.spatial][library_id]
    images, factors = entry[Key.uns.images], entry[Key.uns.scalefactors]
    img_key = next(k for k in ("hires", "lowres", "fullres") if k in images)  # a spot table keeps its input's
    factors.setdefault(f"tissue_{img_key}_scalef", 1.0)  # a full-resolution image is at scale 1

    # squidpy: spot colours over the H&E (scanpy's own spatial plot points here too)
    try:
        import squidpy as sq
    except ImportError:
        print("squidpy is not installed (pip install squidpy): drawing with scanpy's spatial plot only")
    else:
        sq.pl.spatial_scatter(pred, color=genes, library_id=library_id, img_res_key=img_key)
        _save_with_image(out / "squidpy_spatial.png")

    # scanpy: the same over the same image (sc.pl.spatial; scanpy recommends squidpy's, above)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*squidpy.pl.spatial_scatter.*")
        sc.pl.spatial(pred, color=genes, library_id=library_id, img_key=img_key, alpha=0.75, show=False)
    _save_with_image(out / "scanpy_spatial.png")

    # stgraph's own: predicted (and true) maps side by side
    fig = plot_genes(pred, genes, path=out / "stgraph_maps.png")
    plt.close(fig)
    print(f"figures in {out}")


if __name__ == "__main__":
    run(main)
