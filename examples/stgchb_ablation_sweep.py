"""An ST-GCHB ablation sweep: the same config with one module switched off at a time (dotted overrides),
each trained on the same slides with the same seed and scored on a held-out slide.

    python examples/stgchb_ablation_sweep.py          # configs/cpu/stgchb.yaml, 20 epochs per ablation
    python examples/stgchb_ablation_sweep.py --tiny   # smoke test
"""
from pathlib import Path

import pandas as pd
from _common import CONFIGS, parser, run, tiny_overrides

from stgraph.config import load_config
from stgraph.data import make_synthetic_collection
from stgraph.inference import predict_slide
from stgraph.metrics import evaluate_arrays
from stgraph.training import train_model

#: ablation name → overrides (configs/ablations/*.yaml hold the same switches as files)
ABLATIONS = {
    "full": [],
    "no_hsic": ["model.hsic.enabled=false"],
    "no_image_dgi": ["model.image_dgi.enabled=false"],
    "no_gene_dgi": ["model.spot_dgi.enabled=false"],
    "no_pca": ["model.spot_input=expression"],
}


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out = Path(args.out) / "ablations"
    slides = list(make_synthetic_collection(n_slides=3, n_rows=10, n_cols=10, n_genes=40, spacing=32))
    base = (tiny_overrides(out / "cache", epochs=1) if args.tiny else ["train.epochs=20"]) + ["data.harmony=false"]
    rows = []
    ablations = dict(list(ABLATIONS.items())[:2]) if args.tiny else ABLATIONS  # smoke test: two of them
    for name, switches in ablations.items():
        config = load_config(CONFIGS / "cpu" / "stgchb.yaml", base + ["data.genes=shared"] + switches)
        run = train_model(config, slides[:2])  # in memory: no run folder
        pred = predict_slide(run, slides[2])   # a trained Run predicts directly
        scores = evaluate_arrays(pred.X, run.preprocessor.expression(slides[2]), run.genes)
        rows.append({"ablation": name, **{k: scores[k] for k in ("pcc_acg", "rmse")}})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    run(main)
