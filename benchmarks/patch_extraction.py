"""Time and memory to extract every spot patch of one HER2+ section.

Usage::

    python benchmarks/patch_extraction.py [--section B4] [--size 224] [--root ../shared/data/her2st]

Prints the figures and writes them, with a description of the machine, to
``benchmarks/results/patch_extraction.json``. Three phases are timed separately: reading the section
(counts + spot table + image header), decoding the full-resolution JPEG, and cropping the patches; then the
whole ``extract_patches`` call (decode + crops), and a second call served from the patch cache.
Peak memory is given two ways: tracemalloc (Python + NumPy allocations; PIL's decoder buffers are not
traced) and the process's peak resident set size (``ru_maxrss``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mb as peak_rss_mib  # noqa: E402


def main(argv=None) -> dict:
    from stgraph.data.image import load_fullres_image
    from stgraph.data.patches import extract_patches
    from stgraph.data.readers import read_her2st
    from stgraph.utils.io import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "her2st"))
    parser.add_argument("--section", default="B4")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "patch_extraction.json"))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    adata = read_her2st(args.root, args.section, hires_max_side=None)
    t_read = time.perf_counter() - t0

    tracemalloc.start()
    t0 = time.perf_counter()
    image = load_fullres_image(adata)
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    import numpy as np

    half = args.size // 2
    centres = np.floor(np.asarray(adata.obsm["spatial"]) + 0.5).astype(int)
    crops = np.stack([image.crop(x - half, y - half, x - half + args.size, y - half + args.size)
                      for x, y in centres])
    t_crop = time.perf_counter() - t0
    del image, crops
    _, traced_decode_crop = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        patches = extract_patches(adata, size=args.size, cache_dir=cache)
        t_extract = time.perf_counter() - t0
        _, traced_extract = tracemalloc.get_traced_memory()
        t0 = time.perf_counter()
        cached = extract_patches(adata, size=args.size, cache_dir=cache)
        t_cached = time.perf_counter() - t0
        assert cached.shape == patches.shape
    tracemalloc.stop()

    n = adata.n_obs
    h, w = adata.uns["spatial"][args.section]["metadata"]["fullres_shape"]
    result = {
        "section": args.section,
        "n_spots": n,
        "patch_size": args.size,
        "image_px": [h, w],
        "patches_mib": round(patches.nbytes / 2**20, 1),
        "read_section_s": round(t_read, 3),
        "decode_jpeg_s": round(t_decode, 3),
        "crop_s": round(t_crop, 3),
        "crop_spots_per_s": round(n / t_crop, 1),
        "extract_patches_s": round(t_extract, 3),
        "extract_spots_per_s": round(n / t_extract, 1),
        "cached_extract_s": round(t_cached, 4),
        "tracemalloc_peak_decode_crop_mib": round(traced_decode_crop / 2**20, 1),
        "tracemalloc_peak_extract_mib": round(traced_extract / 2**20, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "machine": machine(),
    }
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        if key != "machine":
            print(f"{key:34s} {value}")
    print(f"{'machine':34s} {json.dumps(result['machine'])}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
