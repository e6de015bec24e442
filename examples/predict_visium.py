"""Predict a 10x Visium slide (a Space Ranger output folder) with a model trained on HER2+ sections.

Only the query's image and spot positions are used; its own counts, if any, are ignored. The prediction is
written as .h5ad over the model's genes.

    python examples/predict_visium.py                   # trains cpu/bleep on two HER2+ sections, predicts visium_tiny
    python examples/predict_visium.py --tiny            # the same with a tiny random backbone (smoke test)

With your own data: ``--visium PATH/TO/spaceranger/outs --model RUN`` (a run folder from ``stgraph train``).
"""
from pathlib import Path

from _common import CONFIGS, HER2ST, parser, run, tiny_overrides

from stgraph.config import load_config
from stgraph.data import read_slide
from stgraph.data.readers import read_her2st
from stgraph.inference import load_run, predict_slide, write_prediction
from stgraph.training import train_model

VISIUM = HER2ST.parent / "visium_tiny" / "1.0.0"


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--visium", default=str(VISIUM), help="Space Ranger folder (or any slide read_slide reads)")
    p.add_argument("--model", default=None, help="run folder from `stgraph train` (default: train a new one)")
    args = p.parse_args(argv)
    out = Path(args.out) / "visium"

    model_dir = args.model
    if model_dir is None:
        overrides = tiny_overrides(out / "cache") if args.tiny else []
        config = load_config(CONFIGS / "cpu" / "bleep.yaml", overrides + ["data.harmony=false"])
        train_model(config, [read_her2st(HER2ST, s) for s in ("C2", "C3")], out=out / "run", force=True)
        model_dir = out / "run"

    query = read_slide(args.visium)  # auto-detects the Space Ranger layout
    pred = predict_slide(load_run(model_dir), query)
    path = write_prediction(pred, out / "pred_visium.h5ad", force=True)
    print(f"{pred.n_obs} spots x {pred.n_vars} genes -> {path}")
    return pred


if __name__ == "__main__":
    run(main)
