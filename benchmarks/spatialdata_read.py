"""Read a SpatialData store of a million cells into stgraph: seconds and peak memory.

Usage::

    python benchmarks/spatialdata_read.py [--cells 1000000] [--genes 300] [--per-cell 30] [--image 4000]
        # → benchmarks/results/spatialdata_read.json

1. ``build`` (its own process): ``--cells`` cells as circles (radius 5) spread uniformly over a 40,000 ×
   40,000 coordinate system, a table of ``--genes`` genes with ``--per-cell`` non-zero counts per cell (CSR),
   and an H&E of ``--image`` px a side mapped onto the same system by a scale (a low-resolution image keeps
   the store small; the cells are what is measured), written with ``spatialdata``;
2. ``read`` (a fresh process): ``stgraph.read_slide(store)``, the call ``--slide store.zarr`` makes: seconds
   and the process's peak resident memory, and a check that the slide's counts stayed sparse and complete.

Targets (issue 25): a 1e6-cell table read in < 60 s and < 4 GiB.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

SIDE = 40_000.0  # extent of the cells' coordinate system


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(args) -> dict:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n, g, k = args.cells, args.genes, args.per_cell
    xy = rng.uniform(50, SIDE - 50, size=(n, 2))
    ids = np.arange(n, dtype=np.int64) + 1
    circles = ShapesModel.parse(xy, geometry=0, radius=np.full(n, 5.0), index=ids,
                                transformations={"global": Identity()})
    cols = np.sort(rng.integers(0, g, size=(n, k)), axis=1)  # repeats merge into one entry when summed
    x = sp.csr_matrix((rng.integers(1, 6, size=n * k).astype(np.float32), cols.ravel(),
                       np.arange(0, n * k + 1, k)), shape=(n, g))
    x.sum_duplicates()
    table = ad.AnnData(x, obs=pd.DataFrame({"region": pd.Categorical(["cells"] * n), "cell_id": ids},
                                           index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(g)]))
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    side = args.image
    image = Image2DModel.parse(np.full((3, side, side), 210, np.uint8), dims=("c", "y", "x"),
                               transformations={"global": Scale([SIDE / side, SIDE / side], axes=("y", "x"))})
    store = Path(args.store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd.SpatialData(images={"he": image}, shapes={"cells": circles}, tables={"table": table}).write(store)
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return {"build_seconds": time.perf_counter() - t0, "store_bytes": size, "nnz": int(x.nnz),
            "peak_rss_mib": _peak_rss_mib()}


def read(args) -> dict:
    import scipy.sparse as sp

    import stgraph

    base = _peak_rss_mib()
    t0 = time.perf_counter()
    slide = stgraph.read_slide(args.store)
    seconds = time.perf_counter() - t0
    assert slide.n_obs == args.cells and sp.issparse(slide.X), (slide.n_obs, type(slide.X))
    return {"read_seconds": seconds, "n_obs": int(slide.n_obs), "n_vars": int(slide.n_vars),
            "nnz": int(slide.X.nnz), "x_format": type(slide.X).__name__, "peak_rss_mib": _peak_rss_mib(),
            "peak_rss_before_read_mib": base}


PHASES = {"build": build, "read": read}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--per-cell", type=int, default=30, help="non-zero counts drawn per cell")
    ap.add_argument("--image", type=int, default=4000, help="side of the H&E in pixels")
    ap.add_argument("--store", default=None, help="where to write the store (default: a temporary folder)")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return
    with tempfile.TemporaryDirectory(prefix="stgraph_sd_read_") as tmp:
        store = args.store or str(Path(tmp) / "cells.zarr")
        argv = ["--cells", str(args.cells), "--genes", str(args.genes), "--per-cell", str(args.per_cell),
                "--image", str(args.image), "--store", store]
        results = {"args": {k: v for k, v in vars(args).items() if k not in ("phase", "store")}}
        for phase in ("build", "read"):
            out = subprocess.run([sys.executable, __file__, "--phase", phase] + argv, capture_output=True,
                                 text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"phase {phase} failed")
            results[phase] = json.loads(out.stdout.strip().splitlines()[-1])
            print(phase, results[phase], flush=True)
        r = results["read"]
        results["summary"] = {"cells": args.cells, "read_seconds": r["read_seconds"],
                              "peak_rss_gib": r["peak_rss_mib"] / 1024,
                              "target_met": r["read_seconds"] < 60 and r["peak_rss_mib"] / 1024 < 4}
        print(json.dumps(results["summary"], indent=2))
        print("wrote", write_results("spatialdata_read", results))


if __name__ == "__main__":
    main()
