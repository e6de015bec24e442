"""Shared by the examples: paths, and the overrides of ``--tiny`` (a tiny random backbone, a few epochs) that
the smoke tests use so every example runs in seconds on a CPU."""
from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
HER2ST = REPO.parent / "shared" / "data" / "her2st"


def tiny_overrides(cache_dir: Path, epochs: int = 2) -> list[str]:
    """Keep a config's modules, shrink everything else (untrained 'test_resnet' backbone, 32-px patches)."""
    return [
        "model.image_encoder.backbone=test_resnet", "model.image_encoder.pretrained=false",
        "model.image_encoder.weights=null", "model.image_encoder.input_size=32", "model.embed_dim=16",
        "model.pca_components=8", "model.image_dgi.hidden_dim=16", "model.spot_dgi.hidden_dim=16",
        "model.spot_encoder.heads=2", "model.spot_encoder.dim_head=8", "data.patch_size=32",
        "data.n_top_hvg=20", "data.harmony_pcs=5", f"data.cache_dir={cache_dir}", f"train.epochs={epochs}",
        "train.batch_size=32", "train.progress=false", "train.device=cpu", "inference.k=5",
    ]


def run(main) -> None:
    """Run an example's ``main`` as a command: a stgraph error (a missing weights file offline, a bad path)
    is one ``error:`` line and exit status 2, as the ``stgraph`` command prints it, not a traceback."""
    import sys

    from stgraph.errors import StgraphError

    try:
        main()
    except (StgraphError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default="runs/examples", help="output folder")
    p.add_argument("--tiny", action="store_true", help="tiny settings (smoke test): random small backbone")
    return p
