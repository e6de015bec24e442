"""Whole-slide prediction front end on a synthetic slide: tissue detection, Visium grid, every spot patch.

Usage::

    python benchmarks/wsi_grid.py [--size 40000] [--mpp 0.5] [--patch-um 112] [--target-mpp 0.5]
                                  [--workdir DIR] [--keep] [--out benchmarks/results/wsi_grid.json]

Steps, each timed (wall clock) with the process's peak resident set size (``ru_maxrss``) after it:

1. write a ``size`` × ``size`` px pyramidal TIFF (tiles of 512 px, zlib level 1; levels down to ≤ 1024 px)
   of pink tissue discs on white, streamed tile by tile (:func:`stgraph.data.wsi_synthetic.write_synthetic_wsi`);
2. open it and read a 2000 px thumbnail from the pyramid;
3. detect tissue (:func:`stgraph.data.wsi.tissue.tissue_mask`);
4. lay the Visium hex grid (100 µm pitch) over it (:func:`stgraph.data.wsi.grid.spot_grid`);
5. read every spot patch of ``patch_um`` µm at ``target_mpp`` µm/px (112 µm at 0.5 µm/px → 224 px) through
   the pyramid, in row-major batches (:func:`stgraph.data.wsi.iter_patches_at_mpp`); patches are reduced to
   their mean colour and dropped, as a model would consume them batch by batch.

Run small first (``--size 8000``): the full 40 000 px slide writes ~1–2 GB and takes minutes of CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, write_results  # noqa: E402


def main(argv=None) -> dict:
    import numpy as np

    from stgraph.data.wsi import WSIImage, iter_patches_at_mpp, level_for_mpp, spot_grid, tissue_mask
    from stgraph.data.wsi_synthetic import write_synthetic_wsi

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=40_000, help="level-0 side, px")
    parser.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 pixel of the synthetic slide")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--patch-um", type=float, default=112.0)
    parser.add_argument("--target-mpp", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=512, help="spots per batch of patches")
    parser.add_argument("--workdir", default=None, help="where the TIFF is written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the TIFF")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/wsi_grid.json; "
                                                    "wsi_grid_<size>.json for other sizes)")
    args = parser.parse_args(argv)
    name = "wsi_grid" if args.size == 40_000 else f"wsi_grid_{args.size}"

    # Importing stgraph (torch, scanpy, …) alone accounts for most of the peak; record it to tell apart.
    timings, rss = {}, {"after_imports_mib": peak_rss_mb()}
    folder = Path(tempfile.mkdtemp(prefix="wsi_grid_", dir=args.workdir))
    path = folder / f"synthetic_{args.size}.tif"
    try:
        t0 = time.perf_counter()
        write_synthetic_wsi(path, size=args.size, mpp=args.mpp, tile=args.tile, compression="zlib",
                            compression_level=1)
        timings["write_tiff_s"] = time.perf_counter() - t0
        rss["after_write_mib"] = peak_rss_mb()
        file_mib = path.stat().st_size / 2**20
        print(f"wrote {path.name}: {args.size} × {args.size} px, {file_mib:.0f} MiB in {timings['write_tiff_s']:.1f} s")

        t0 = time.perf_counter()
        wsi = WSIImage(path)
        thumb = wsi.thumbnail(2000)
        timings["open_thumbnail_s"] = time.perf_counter() - t0
        scale = (thumb.shape[1] / wsi.shape[1], thumb.shape[0] / wsi.shape[0])

        t0 = time.perf_counter()
        mask = tissue_mask(thumb, mpp=wsi.mpp / scale[0], source=str(path))
        timings["tissue_mask_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        grid = spot_grid(mask, scale, wsi.mpp, kind="visium", image_size=(wsi.shape[1], wsi.shape[0]))
        timings["grid_s"] = time.perf_counter() - t0
        rss["after_grid_mib"] = peak_rss_mb()
        print(f"levels {wsi.level_dimensions}; thumbnail {thumb.shape[1]} × {thumb.shape[0]}; "
              f"tissue {mask.mean():.1%} of the slide; {grid.n_spots} Visium spots")

        side = int(round(args.patch_um / args.target_mpp))
        level = level_for_mpp(wsi, args.target_mpp)
        t0 = time.perf_counter()
        n_done, colour = 0, np.zeros(3)
        for idx, patches in iter_patches_at_mpp(wsi, grid.xy, args.patch_um, args.target_mpp,
                                                batch_size=args.batch):
            n_done += len(idx)
            colour += patches.reshape(-1, 3).mean(axis=0) * len(idx)
        timings["patches_s"] = time.perf_counter() - t0
        rss["after_patches_mib"] = peak_rss_mb()
        wsi.close()
        rate = n_done / timings["patches_s"] if timings["patches_s"] > 0 else float("nan")
        print(f"{n_done} patches of {side} × {side} px ({args.patch_um:g} µm at {args.target_mpp:g} µm/px, "
              f"level {level}) in {timings['patches_s']:.1f} s = {rate:.0f} patches/s; "
              f"mean colour {np.round(colour / max(n_done, 1), 1).tolist()}")
        total = sum(timings.values())
        print(f"total {total:.1f} s; peak RSS {peak_rss_mb():.0f} MiB")
        payload = {
            "benchmark": "wsi_grid",
            "size_px": args.size, "mpp": args.mpp, "tile": args.tile, "compression": "zlib level 1",
            "levels": wsi.level_dimensions, "file_mib": file_mib,
            "tissue_fraction": float(mask.mean()), "n_spots": int(grid.n_spots),
            "patch_um": args.patch_um, "target_mpp": args.target_mpp, "patch_px": side, "read_level": level,
            "batch": args.batch, "timings_s": timings, "total_s": total, "patches_per_s": rate,
            "peak_rss_mib": rss,
        }
        out = Path(args.out) if args.out else None
        if out is None:
            written = write_results(name, payload)
        else:
            from common import machine
            import json

            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
            written = out
        print(f"results → {written}")
        return payload
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
