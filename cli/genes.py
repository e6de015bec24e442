"""``stgraph genes``: how far each gene of a run can be trusted, from its trust record."""
from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("genes", parents=parents,
                       help="list a run's genes with their expected Pearson r on an unseen slide (its trust record)")
    p.add_argument("model", metavar="RUN", help="run folder written by `stgraph train`")
    p.add_argument("--min-r", type=float, default=None, metavar="R",
                   help="only the genes whose expected r is at least R (e.g. 0.2; default: all)")
    p.add_argument("--top", type=int, default=None, metavar="N", help="only the N most reliable genes")
    p.add_argument("--out", default=None, metavar="CSV", help="also write the table to a CSV file")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    import pandas as pd

    from stgraph.inference import load_run

    loaded = load_run(args.model)
    if loaded.trust is None:
        raise ValueError(f"run {args.model} has no trust record (trained with trust.reliability=false, on one slide, "
                         "in several processes, or before trust existed): retrain it to know its genes' reliability")
    trust = loaded.trust
    threshold = loaded.config.trust.reliable_r
    table = pd.DataFrame({"gene": trust.genes, "expected_r": trust.expected_r, "expected_r_sd": trust.expected_r_sd})
    table["reliable"] = table["expected_r"].fillna(-1) >= threshold
    table = table.sort_values("expected_r", ascending=False, na_position="last").reset_index(drop=True)
    if args.min_r is not None:
        table = table[table["expected_r"] >= args.min_r]
    if args.top is not None:
        table = table.head(args.top)
    if args.out:
        from stgraph.utils import check_output_file
        from stgraph.utils.io import atomic_path

        check_output_file(args.out, (".csv",), force=args.force, what="gene table")
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
    n = len(trust.genes)
    print(f"{args.model}: {int(np.sum(trust.expected_r >= threshold))} of {n} genes reliable (expected r ≥ "
          f"{threshold:g}, from {len(trust.fold_ids)} held-out training slides: {', '.join(trust.fold_ids)})")
    with pd.option_context("display.max_rows", None, "display.width", 120):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0
