"""Memory soak: whole-slide prediction of ~1e5 spots under an address-space limit (``ulimit -v``).

Usage::

    python benchmarks/wsi_soak.py [--limit-gib 4] [--size 40000] [--mpp 1] [--grid visium] [--patch 112]
                                  [--workdir DIR] [--out NAME]   # → benchmarks/results/NAME.json (default wsi_soak)

Runs :mod:`benchmarks.wsi_predict` (synthetic pyramidal TIFF, tiny run, :func:`stgraph.inference.wsi.predict_wsi`)
in a child process whose virtual address space is capped with ``resource.setrlimit(RLIMIT_AS, ...)`` (what
``ulimit -v`` sets). torch's shared libraries alone map ~3.7 GiB of address space at import (CUDA builds map
their GPU kernels even on a CPU machine; resident ~1 GiB), so a flat 4 GiB cap fails in the first tensor
allocation whatever stgraph does. The child therefore imports everything first, reads its ``VmSize``, and caps
the address space at that baseline + ``--limit-gib``: the budget is what prediction itself may map
(``--absolute`` caps at ``--limit-gib`` flat instead). ``MALLOC_ARENA_MAX=2`` keeps glibc from reserving
64 MiB of address space per thread. At ``--mpp 1`` the 40 000 px slide is 40 mm wide and holds ~1e5 Visium
spots, under the default ``--max-spots`` bound (2e5). The child's own figures (spots, peak RSS, rate) are
copied into the result when it completed.

Run small first (``--size 8000``): the full slide writes ~1–2 GB and takes minutes of CPU. On a small CPU
machine, ``--size 16000 --grid 30 --patch 32`` lays ~1.1e5 spots (a 30 µm square grid over ~1 cm² of
tissue) with 32 px patches, which keeps the backbone's share of the time small.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, write_results  # noqa: E402


#: Run in the child: import what prediction maps, cap the address space, then run wsi_predict.main.
_CHILD = """
import os, re, resource, sys
sys.path.insert(0, {here!r})
import torch, stgraph.inference.wsi, stgraph.training  # noqa: F401 (their mappings are the baseline)
import wsi_predict
base = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
limit = {limit} if {absolute} else base + {limit}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print(f"address space: {{base / 2**30:.2f}} GiB mapped after imports; capped at {{limit / 2**30:.2f}} GiB", flush=True)
wsi_predict.main({argv!r})
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit-gib", type=float, default=4.0, help="address-space limit of the child (GiB)")
    parser.add_argument("--size", type=int, default=40_000)
    parser.add_argument("--mpp", type=float, default=1.0)
    parser.add_argument("--grid", default="visium")
    parser.add_argument("--patch", type=int, default=112, help="patch side, px (µm at the run's 1 µm/px)")
    parser.add_argument("--absolute", action="store_true", help="cap at --limit-gib in all, imports included")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default="wsi_soak")
    args = parser.parse_args(argv)

    inner = f"{args.out}_inner"
    argv = ["--size", str(args.size), "--mpp", str(args.mpp), "--grid", args.grid, "--patch", str(args.patch),
            "--threads", "1", "--out", inner]
    if args.workdir:
        argv += ["--workdir", args.workdir]
    limit = int(args.limit_gib * 2**30)
    code = _CHILD.format(here=str(HERE), limit=limit, absolute=args.absolute, argv=argv)
    print(f"wsi_predict {' '.join(argv)} with {args.limit_gib:g} GiB of address space "
          f"{'in all' if args.absolute else 'beyond the imports'}", flush=True)
    inner_file = RESULTS / f"{inner}.json"
    inner_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    completed = proc.returncode == 0
    mapped = re.search(r"([\d.]+) GiB mapped after imports", proc.stdout)
    result = {"limit_gib": args.limit_gib, "limit_counts_imports": args.absolute,
              "mapped_after_imports_gib": float(mapped.group(1)) if mapped else None, "size_px": args.size,
              "mpp": args.mpp, "grid": args.grid, "patch_px": args.patch,
              "completed": completed, "returncode": proc.returncode, "wall_s": round(wall, 1)}
    if completed and inner_file.is_file():
        result["inner"] = json.loads(inner_file.read_text())
        inner_file.unlink()
    else:
        result["stderr_tail"] = proc.stderr[-2000:]
    print(f"{'completed' if completed else 'FAILED'} with {args.limit_gib:g} GiB of address space "
          f"(exit {proc.returncode}, {wall:.0f} s)")
    if not completed:
        print(proc.stderr[-2000:], file=sys.stderr)
    write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
