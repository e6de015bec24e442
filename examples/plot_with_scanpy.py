"""Plot a prediction with scanpy (and squidpy, when installed): a prediction is an ordinary AnnData with
obsm['spatial'] and the input's uns['spatial'], so the usual spatial plots draw it over the H&E.

    python examples/plot_with_scanpy.py --tiny
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script writing files; in a notebook leave the backend alone
import matplotlib.pyplot as plt  # noqa: E402
import scanpy as sc  # noqa: E402
from api_on_anndata import main as train_and_predict  # noqa: E402

from stgraph.keys import Key  # noqa: E402
from stgraph.pl import plot_genes  # noqa: E402


def main(argv=None):
    from _common import parser

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out = Path(args.out) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    pred = train_and_predict(argv)
    genes = list(pred.var_names[:2])

    # scanpy: spot colours over the image stored in uns['spatial'][library_id]
    library_id = next(iter(pred.uns[Key.uns.spatial]))
    images = pred.uns[Key.uns.spatial][library_id][Key.uns.images]
    img_key = "hires" if "hires" in images else next(iter(images), None)  # a spot table keeps its input's
    sc.pl.spatial(pred, color=genes, library_id=library_id, img_key="hires" if "hires" in images else None,
                  spot_size=20, show=False)
    plt.savefig(out / "scanpy_spatial.png", dpi=80)
    plt.close("all")

    try:  # squidpy, if installed
        import squidpy as sq

        sq.pl.spatial_scatter(pred, color=genes, library_id=library_id, img_res_key=img_key)
        plt.savefig(out / "squidpy_spatial.png", dpi=80)
        plt.close("all")
    except ImportError:
        pass

    # stgraph's own: predicted (and true) maps side by side
    fig = plot_genes(pred, genes, path=out / "stgraph_maps.png")
    plt.close(fig)
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
