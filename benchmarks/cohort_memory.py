"""A cohort that does not fit in memory: BLEEP on frozen features streamed from the feature store.

    python benchmarks/cohort_memory.py [--slides 200 --spots 5000 --features 1280 --genes 2000]
                                       [--store /tmp/stgraph_cohort_bench] [--workers 2] [--epochs 1]

A synthetic cohort (default 200 slides × 5,000 spots = 1e6 spots, 1,280-d float16 features as a frozen
mobilenetv2_100 would give, 2,000 genes at 5 % density as CSR) is written straight into a
:class:`~stgraph.data.feature_store.FeatureStore` (the backbone pass itself is the feature-extraction
benchmark's business), then three phases run, each in its own process so that each peak RSS is its own:

- ``raw``: the store's raw sequential read rate (every slide's features and expression, front to back, in
  4,096-row reads), before and after every loader run;
- ``loader``: ``--repeats`` epochs of the training data path alone, each in a fresh process (:class:`~stgraph.training.stream.CohortSource`:
  block-shuffled plan, ``DataLoader`` workers reading, batches as tensors), its rate in stored bytes/s;
- ``train``: ``--epochs`` of BLEEP (configs/cpu/bleep.yaml heads, batch 256) through
  :class:`~stgraph.training.Trainer` on that source: epoch time, the share of it spent waiting for data,
  and the peak RSS of the training process and of its largest loader worker.

Targets (issues 18 and 26): peak RSS < 4 GiB per process on 2 cores; the training data path ≥ 0.8× the raw
sequential read rate, compared between the median runs of each. The store files are fresh, so both rates are
mostly page-cache reads ("warm"); every figure carries the load average of its run. Results:
benchmarks/results/cohort_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _rss() -> dict:
    kib = 1024.0
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
            "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}


def _key(kind: str, i: int, args) -> dict:
    return {"kind": kind, "bench": "cohort_memory", "slide": i, "spots": args.spots, "features": args.features,
            "genes": args.genes}


def build(args) -> dict:
    import scipy.sparse as sp

    from stgraph.data.feature_store import FeatureStore

    store = FeatureStore(args.store)
    rng0 = np.random.default_rng(0)
    n_dom, nnz = 6, max(1, int(0.05 * args.genes))
    centroids = rng0.normal(size=(n_dom, args.features)).astype(np.float32)
    pools = [rng0.choice(args.genes, size=min(args.genes, 4 * nnz), replace=False) for _ in range(n_dom)]
    t0 = time.perf_counter()
    written = 0
    for i in range(args.slides):
        fkey, ekey = _key("features", i, args), _key("expression", i, args)
        if store.has(f"s{i}", fkey) and store.has(f"s{i}", ekey):
            continue
        rng = np.random.default_rng(1000 + i)
        dom = np.sort(rng.integers(0, n_dom, args.spots))  # spatially contiguous domains along the rows
        feats = centroids[dom] + rng.normal(scale=1.0, size=(args.spots, args.features)).astype(np.float32)
        store.write(f"s{i}", fkey, feats, chunk_rows=args.chunk_rows, dtype=np.float16)
        del feats
        own = np.stack([rng.choice(pools[d], size=nnz, replace=False) for d in dom[:: max(1, args.spots // 64)]])
        cols = own[np.minimum(np.arange(args.spots) // max(1, args.spots // 64), len(own) - 1)]
        cols = np.sort(cols, 1)
        vals = np.log1p(rng.poisson(3.0, size=cols.shape) + 1).astype(np.float32)
        expr = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, args.spots * nnz + 1, nnz)),
                             shape=(args.spots, args.genes))
        store.write(f"s{i}", ekey, expr)
        written += 1
    size = sum(p.stat().st_size for p in store.entries())
    return {"slides_written": written, "build_seconds": time.perf_counter() - t0, "store_bytes": size, **_rss()}


def _stored(args):
    from stgraph.data.feature_store import FeatureStore
    from stgraph.preprocess.cohort import StoredSlide

    store = FeatureStore(args.store)
    out = []
    for i in range(args.slides):
        f, e = store.open(f"s{i}", _key("features", i, args)), store.open(f"s{i}", _key("expression", i, args))
        side = int(np.ceil(np.sqrt(args.spots)))
        coords = np.stack([np.arange(args.spots) % side, np.arange(args.spots) // side], 1).astype(np.int64)
        out.append(StoredSlide(f"s{i}", args.spots, f, e, e, coords))
    return out


def _stored_bytes(slides, blocks=None) -> int:
    """Bytes as stored of the features and expression rows of ``blocks`` (default: everything)."""
    total = 0
    for i, s in enumerate(slides):
        ptr = s.expr._ptr()
        row_bytes = int(np.prod(s.features.shape[1:])) * s.features.dtype.itemsize
        for _, a, b in ([(i, 0, s.n_spots)] if blocks is None else [bk for bk in blocks if bk[0] == i]):
            total += (b - a) * row_bytes + int(ptr[b] - ptr[a]) * (s.expr.dtype.itemsize + 4) + (b - a) * 8
    return total


def raw(args) -> dict:
    slides = _stored(args)
    t0 = time.perf_counter()
    for s in slides:
        for a in range(0, s.n_spots, 4096):
            s.features.read_range(a, min(a + 4096, s.n_spots))
            s.expr.read_range(a, min(a + 4096, s.n_spots))
    dt = time.perf_counter() - t0
    nbytes = _stored_bytes(slides)
    return {"raw_seconds": dt, "raw_bytes": nbytes, "raw_mb_per_s": nbytes / dt / 1e6, **_rss()}


def _config(args):
    from stgraph.config import load_config

    return load_config(REPO / "configs" / "cpu" / "bleep.yaml", [
        "data.harmony=false", f"train.epochs={args.epochs}", "train.batch_size=256",
        f"train.num_workers={args.workers}", "train.val_fraction=0", "train.progress=false",
        f"data.cache_dir={args.store}"])


def loader(args) -> dict:
    from stgraph.training.stream import CohortSource

    slides = _stored(args)
    source = CohortSource(slides, _config(args), buffer_blocks=args.buffer_blocks, block_rows=args.block_rows)
    t0 = time.perf_counter()
    rows = steps = 0
    for batch, _ in source.steps(train=True, epoch=0):
        rows += len(batch["features"])
        steps += 1
    dt = time.perf_counter() - t0
    nbytes = _stored_bytes(slides, source.train_blocks)
    return {"loader_seconds": dt, "loader_rows": rows, "loader_steps": steps, "loader_bytes": nbytes,
            "loader_mb_per_s": nbytes / dt / 1e6, **_rss()}


def train(args) -> dict:
    import torch

    from stgraph.models import create_model
    from stgraph.training import Trainer
    from stgraph.training.stream import CohortSource

    torch.set_num_threads(args.threads)
    slides = _stored(args)
    config = _config(args)
    config.model.image_encoder.weights = str(REPO.parent / "shared" / "weights" / "mobilenetv2_100.imagenet.pth")
    if not Path(config.model.image_encoder.weights).is_file():
        config.model.image_encoder.weights = None
        config.model.image_encoder.pretrained = False
    source = CohortSource(slides, config, buffer_blocks=args.buffer_blocks, block_rows=args.block_rows)
    waits = []
    steps_fn = source.steps

    def timed(train: bool, epoch: int):
        it = steps_fn(train, epoch)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            waits.append(time.perf_counter() - t)
            yield item

    source.steps = timed
    model = create_model(config, args.genes)
    trainer = Trainer(model, config, [], source=source)
    result = trainer.fit()
    hist = result.history.query("split == 'train'")
    epoch_s = hist["seconds"].to_list()
    nbytes = _stored_bytes(slides, source.train_blocks)
    return {"epoch_seconds": epoch_s, "data_wait_seconds": float(np.sum(waits)),
            "data_wait_fraction": float(np.sum(waits) / np.sum(epoch_s)), "train_steps": len(waits),
            "train_mb_per_s": nbytes * len(epoch_s) / float(np.sum(epoch_s)) / 1e6,
            "loss": hist["total"].to_list(), **_rss()}


PHASES = {"build": build, "raw": raw, "loader": loader, "train": train}


def _run_phase(phase: str, argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    load0 = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, "--phase", phase] + argv, capture_output=True, text=True,
                         env=env)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"phase {phase} failed")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["loadavg_1min_before"], result["loadavg_1min_after"] = load0, os.getloadavg()[0]
    print(phase, json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--spots", type=int, default=5000)
    ap.add_argument("--features", type=int, default=1280)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--chunk-rows", type=int, default=256)
    ap.add_argument("--buffer-blocks", type=int, default=8)
    ap.add_argument("--block-rows", type=int, default=1024, help="rows per shuffled block (whole chunks)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs (0: no training phase)")
    ap.add_argument("--repeats", type=int, default=3, help="loader runs, each between two raw runs")
    ap.add_argument("--store", default="/tmp/stgraph_cohort_bench")
    ap.add_argument("--name", default="cohort_memory")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args), default=float))
        return
    argv = [a for a in sys.argv[1:]]
    results = {"args": {k: v for k, v in vars(args).items() if k != "phase"},
               "conditions": "store files fresh, reads mostly from the page cache (warm); one training process + "
                             "its DataLoader workers; raw and loader runs alternate, each in a fresh process"}
    results["build"] = _run_phase("build", argv)
    raws, loaders = [], []
    for _ in range(args.repeats):
        raws.append(_run_phase("raw", argv))
        loaders.append(_run_phase("loader", argv))
    raws.append(_run_phase("raw", argv))
    results["raw_runs"], results["loader_runs"] = raws, loaders
    # the median run of each (the machine's own noise moves single runs by ±20 %)
    results["raw"] = sorted(raws, key=lambda r: r["raw_mb_per_s"])[len(raws) // 2]
    results["loader"] = sorted(loaders, key=lambda r: r["loader_mb_per_s"])[len(loaders) // 2]
    if args.epochs:
        results["train"] = _run_phase("train", argv)
    raw_rate, loader_rate = results["raw"]["raw_mb_per_s"], results["loader"]["loader_mb_per_s"]
    results["summary"] = {
        "spots": args.slides * args.spots,
        "raw_mb_per_s": [r["raw_mb_per_s"] for r in raws],
        "loader_mb_per_s": [r["loader_mb_per_s"] for r in loaders],
        "loader_over_raw": loader_rate / raw_rate,
        "loader_over_raw_runs": [lo["loader_mb_per_s"] / ((ra["raw_mb_per_s"] + rb["raw_mb_per_s"]) / 2)
                                 for lo, ra, rb in zip(loaders, raws, raws[1:])],
        "peak_rss_loader_mib": results["loader"]["peak_rss_mib"],
        "peak_rss_worker_mib": results["loader"]["peak_rss_children_mib"],
        "peak_rss_build_mib": results["build"]["peak_rss_mib"],
    }
    if "train" in results:
        results["summary"].update(epoch_seconds=results["train"]["epoch_seconds"],
                                  data_wait_fraction=results["train"]["data_wait_fraction"],
                                  peak_rss_train_mib=results["train"]["peak_rss_mib"],
                                  peak_rss_train_worker_mib=results["train"]["peak_rss_children_mib"])
    print(json.dumps(results["summary"], indent=2))
    print("wrote", write_results(args.name, results))


if __name__ == "__main__":
    main()
