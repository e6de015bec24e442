"""The Python API on AnnData objects you already have: train on some slides, predict another.

Any AnnData in the stgraph convention works (raw counts in X, spot centres x, y in full-resolution pixels
in obsm['spatial'], the image in uns['spatial'][library_id] as scanpy/squidpy store it). Here: synthetic
slides, so the script runs anywhere.

    python examples/api_on_anndata.py           # configs/cpu/bleep.yaml (frozen mobilenetv2_100 features)
    python examples/api_on_anndata.py --tiny    # smoke test: a tiny random backbone
"""
from pathlib import Path

from _common import CONFIGS, parser, run, tiny_overrides

from stgraph.config import load_config
from stgraph.data import make_synthetic_collection
from stgraph.inference import load_run, predict_slide
from stgraph.metrics import evaluate_arrays
from stgraph.training import train_model


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out = Path(args.out) / "api_on_anndata"

    # 1. Your slides: a list of AnnData (here 3 synthetic 10x10-spot slides sharing expression programmes).
    slides = list(make_synthetic_collection(n_slides=3, n_rows=10, n_cols=10, n_genes=40, spacing=32))
    train, query = slides[:2], slides[2]

    # 2. A config: one of configs/*.yaml plus dotted overrides (the same strings the CLI takes).
    overrides = ["data.genes=shared", "data.harmony=false"]
    if args.tiny:
        overrides = tiny_overrides(out / "cache") + overrides
    config = load_config(CONFIGS / "cpu" / "bleep.yaml", overrides)

    # 3. Train: fits preprocessing on the training slides only, trains, builds the reference, writes a run folder.
    run = train_model(config, train, out=out / "run", force=True)

    # 4. Predict the query slide from its image alone (its expression, if any, is ignored) ...
    pred = predict_slide(load_run(out / "run"), query)
    print(pred)  # AnnData: X = predicted log-normalised expression, obsm['spatial'], uns['spatial']

    # 5. ... and score it against the truth, normalised the way the model saw it.
    scores = evaluate_arrays(pred.X, run.preprocessor.expression(query), run.genes)
    print({k: round(v, 3) for k, v in scores.items() if k in ("pcc_acg", "rmse", "ssim")})
    return pred


if __name__ == "__main__":
    run(main)
