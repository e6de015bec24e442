"""``stgraph plot``: draw predicted (and true) gene maps over the H&E image."""
from __future__ import annotations

from pathlib import Path

from .common import plot_maps

__all__ = ["add_parser", "run"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("plot", help="draw predicted (and true) gene maps over the H&E image", parents=parents)
    p.add_argument("--pred", required=True, help="prediction .h5ad")
    p.add_argument("--true", default=None, help="a slide with the true expression (any readable slide)")
    p.add_argument("--genes", nargs="+", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import anndata

    from stgraph.data import read_slide

    pred_path = Path(args.pred)
    if not pred_path.is_file():
        raise FileNotFoundError(f"prediction file not found: {pred_path}")
    try:
        pred = anndata.read_h5ad(pred_path)
    except Exception as err:  # h5py's OSError, a truncated file, an .h5ad of another layout
        raise ValueError(f"--pred {pred_path}: not a readable .h5ad prediction ({type(err).__name__})") from None
    true = read_slide(args.true) if args.true else None
    plot_maps(pred, true, args.genes, Path(args.out), force=args.force)
    return 0
