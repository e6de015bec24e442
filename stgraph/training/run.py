"""The training job: slides + config → a self-contained run folder (layout: :mod:`stgraph.run.folder`)."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..config import save_config
from ..data.collection import SlideCollection
from ..data.slide_id import slide_id_of
from ..models import create_model
from ..retrieval.reference import ReferenceStore
from ..run.embed import embed_slide
from ..run.folder import RUN_FILES, Run, save_model  # noqa: F401 (RUN_FILES re-exported)
from ..run.prepare import PreparedSlide, fit_preprocessor, prepare_slide
from ..run.resolution import training_resolution
from ..utils import atomic_write_text, resolve_device, seed_everything
from .trainer import Trainer, TrainResult

__all__ = ["train_model", "build_reference", "RUN_FILES", "TrainedRun"]



#: The run ``train_model`` returns (the same class inference loads).
TrainedRun = Run


def _slides_of(slides) -> list[AnnData]:
    if isinstance(slides, SlideCollection):
        return [slides[i] for i in slides.ids]
    return list(slides)


def build_reference(model, config, slides: Sequence[PreparedSlide], genes: Sequence[str],
                    meta: Optional[dict] = None) -> ReferenceStore:
    """Embed the reference slides with the branch ``inference.reference`` names and pair them with their
    expression (n_ref, G)."""
    branch = config.inference.reference
    emb = np.concatenate([embed_slide(model, s, branch) for s in slides])
    expr = np.concatenate([s.expr for s in slides]).astype(np.float32)
    return ReferenceStore(
        embeddings=emb,
        expression=expr,
        genes=list(genes),
        slide_ids=np.concatenate([[s.slide_id] * s.n_spots for s in slides]).astype(str),
        spot_ids=np.concatenate([s.barcodes for s in slides]).astype(str),
        kind=branch,
        meta={"method": config.model.name, "similarity": config.inference.similarity, **(meta or {})},
    )


def _check_out_dir(out: Path, force: bool, resume: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (force or resume):
        raise FileExistsError(f"run folder {out} already exists and is not empty (use --force to replace it, "
                              "or --resume to continue its training)")
    if out.exists() and force and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def train_model(config, slides, out: Optional[str | Path] = None, force: bool = False, resume: bool = False,
                progress: Optional[bool] = None) -> Run:
    """Fit preprocessing on ``slides``, train, build the reference, and (with ``out``) save a run folder.

    Parameters
    ----------
    config
        :class:`~stgraph.config.Config`.
    slides
        Training slides (a :class:`~stgraph.data.SlideCollection` or AnnData list, raw counts).
    out
        Run folder; must not exist or be empty unless ``force`` (replace) or ``resume`` (continue).
    """
    progress = config.train.progress if progress is None else progress
    adatas = _slides_of(slides)
    if not adatas:
        raise ValueError("no training slides given")
    run_dir = Path(out) if out is not None else None
    if run_dir is not None:
        _check_out_dir(run_dir, force, resume)
        save_config(config, run_dir / "config.yaml")

    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)  # before the model exists, so its initial weights are seeded too
    preprocessor, expr = fit_preprocessor(config, adatas)
    model = create_model(config, preprocessor.spot_in_dim).to(device)
    prepared = [
        prepare_slide(ad, config, preprocessor, expr=expr.get(slide_id_of(ad, default=f"slide{i}")), image_encoder=model.image_encoder,
                      device=str(device), progress=progress)
        for i, ad in enumerate(adatas)
    ]
    if run_dir is not None:
        preprocessor.save(run_dir)

    if getattr(model, "predicts_expression", False):
        # Closed-form models have no epochs: fit once, nothing to resume or log.
        model.fit(prepared)
        result = TrainResult(pd.DataFrame(), 0, float("nan"))
    else:
        trainer = Trainer(model, config, prepared, run_dir=run_dir)
        result = trainer.fit(resume=resume)
    reference = build_reference(model, config, prepared, preprocessor.genes)
    resolution = training_resolution(config, adatas)

    if run_dir is not None:
        save_model(run_dir / "model.pt", model, config, preprocessor.spot_in_dim, result.best_epoch)
        reference.save(run_dir / "reference.h5", overwrite=True)
        _plot_losses(run_dir)
        provenance = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": config.model.name,
            "config_name": config.name,
            "train_slides": [s.slide_id for s in prepared],
            "n_reference_spots": int(reference.embeddings.shape[0]),
            "n_genes": len(preprocessor.genes),
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "resolution": resolution,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        atomic_write_text(run_dir / "run.json", json.dumps(provenance, indent=2, default=float))
    return Run(model, config, preprocessor, reference, result, run_dir, info={"resolution": resolution})


def _plot_losses(run_dir: Path) -> None:
    log = run_dir / "log.csv"
    if not log.is_file():
        return
    from ..pl.training import plot_loss_curves

    import matplotlib.pyplot as plt

    fig = plot_loss_curves(str(log), path=run_dir / "loss_curve.png")
    plt.close(fig)
