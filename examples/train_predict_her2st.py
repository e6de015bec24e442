"""Train on HER2+ breast-cancer sections and predict a held-out one (what `make demo` does, from Python).

    python examples/train_predict_her2st.py --her2st ../shared/data/her2st   # configs/cpu/bleep.yaml
    python examples/train_predict_her2st.py --tiny                                       # smoke test
"""
from pathlib import Path

from _common import CONFIGS, HER2ST, parser, run, tiny_overrides

from stgraph.config import load_config
from stgraph.data.readers import read_her2st
from stgraph.inference import load_run, predict_slide, write_prediction
from stgraph.metrics import evaluate_arrays
from stgraph.training import train_model


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--her2st", default=str(HER2ST), help="HER2+ root (ST-cnts/, ST-spotfiles/, ST-imgs/)")
    p.add_argument("--config", default=str(CONFIGS / "cpu" / "bleep.yaml"))
    p.add_argument("--train", nargs="+", default=["C2", "C3"], help="training sections")
    p.add_argument("--test", default="C4", help="held-out section")
    args = p.parse_args(argv)
    out = Path(args.out) / "her2st"

    # read_her2st: counts + selected spots + the H&E image of one section → AnnData.
    train = [read_her2st(args.her2st, s) for s in args.train]
    test = read_her2st(args.her2st, args.test)

    overrides = tiny_overrides(out / "cache") if args.tiny else []
    config = load_config(args.config, overrides + ["data.harmony=false"])
    run = train_model(config, train, out=out / "run", force=True)

    pred = predict_slide(load_run(out / "run"), test)
    write_prediction(pred, out / f"pred_{args.test}.h5ad", force=True)
    scores = evaluate_arrays(pred.X, run.preprocessor.expression(test), run.genes)
    print(f"{args.test}: PCC(all genes) {scores['pcc_acg']:.3f}, PCC(HEG-50) {scores['pcc_heg50']:.3f}")
    return scores


if __name__ == "__main__":
    run(main)
