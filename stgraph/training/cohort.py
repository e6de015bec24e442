"""The training job for a cohort that does not fit in memory (frozen features streamed from the store).

``train_cohort(config, cohort)``: the preprocessing is fitted by streaming over the slides
(:func:`~stgraph.preprocess.cohort.fit_cohort_preprocessor`; rank 0 fits, the other ranks receive it), each rank
writes and then streams only the slides of its shard (:meth:`~stgraph.data.LazySlideCollection.shard`), and
the :class:`~stgraph.training.Trainer` runs on a :class:`~stgraph.training.stream.CohortSource`.

The reference of a cohort run is built from at most ``reference_spots`` training spots (drawn evenly over
the slides, read from the store): :class:`~stgraph.retrieval.ReferenceStore` holds its expression in memory.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import save_config
from ..models import create_model
from ..preprocess.cohort import fit_cohort_preprocessor, prepare_cohort
from ..runfolder import STATE_COMPLETE, STATE_TRAINING, Run, file_records, save_model, write_run_info
from ..preprocess.prepare import PreparedSlide
from ..preprocess.resolution import resolution_record
from ..utils import resolve_device, seed_everything
from .distributed import DistEnv, init_distributed
from .job import build_reference, check_train_inputs
from .stream import CohortSource
from .trainer import Trainer

__all__ = ["train_cohort", "reference_sample"]


def reference_sample(slides, max_spots: int, seed: int = 0) -> list[PreparedSlide]:
    """At most ``max_spots`` spots of the stored slides, drawn evenly (same fraction of every slide), as small
    in-memory :class:`PreparedSlide` objects (features, spot input, expression) for the reference."""
    total = sum(s.n_spots for s in slides)
    frac = min(1.0, max_spots / max(total, 1))
    rng = np.random.default_rng(seed)
    out = []
    for s in slides:
        k = s.n_spots if frac >= 1 else max(1, int(round(frac * s.n_spots)))
        rows = np.sort(rng.choice(s.n_spots, size=min(k, s.n_spots), replace=False))
        x = s.spot_input[rows]
        expr = s.expr[rows].toarray().astype(np.float32)
        out.append(PreparedSlide(
            slide_id=s.slide_id, barcodes=[f"{s.slide_id}:{r}" for r in rows], coords=s.coords[rows],
            xy=s.coords[rows].astype(np.float32), expr=expr,
            spot_input=(x.toarray() if hasattr(x, "toarray") else x).astype(np.float32),
            features=s.features[rows].astype(np.float32)))
    return out


def _broadcast(obj, dist_env: DistEnv):
    if not dist_env.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_cohort(config, cohort, out: Optional[str | Path] = None, progress: Optional[bool] = None,
                 reference_spots: int = 100_000, feature_dtype=None, buffer_blocks: int = 8,
                 chunk_rows: int = 256) -> Run:
    """Train on a :class:`~stgraph.data.LazySlideCollection` with frozen features streamed from the store.

    Parameters
    ----------
    config
        A config with ``model.image_encoder.cache_features`` (frozen backbone) and ``data.harmony=false``.
    out
        A new (or empty) run folder: config, preprocessing, checkpoints, log, ``model.pt`` and a
        ``reference.h5`` of ``reference_spots`` spots.
    feature_dtype
        Stored feature dtype (``np.float16`` halves the store and its reads).
    buffer_blocks
        Blocks (HDF5 chunks) read and shuffled together (:mod:`stgraph.training.stream`).
    chunk_rows
        Rows per stored chunk = per block.
    """
    progress = config.train.progress if progress is None else progress
    check_train_inputs(config, out)
    device = resolve_device(config.train.device)
    dist_env = init_distributed(device)
    seed_everything(config.train.seed)
    prep = _broadcast(fit_cohort_preprocessor(config, cohort) if dist_env.is_main else None, dist_env)
    model = create_model(config, prep.spot_in_dim).to(device)
    mine = cohort.shard(dist_env.rank, dist_env.world_size) if dist_env.enabled else cohort
    stored = prepare_cohort(config, mine, prep, model.image_encoder, device=str(device),
                            progress=progress and dist_env.is_main, feature_dtype=feature_dtype,
                            chunk_rows=chunk_rows)
    run_dir = Path(out) if out is not None and dist_env.is_main else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, {"state": STATE_TRAINING, "method": config.model.name, "cohort": True})
        save_config(config, run_dir / "config.yaml")
        prep.save(run_dir)
    source = CohortSource(stored, config, dist_env, device, buffer_blocks=buffer_blocks)
    trainer = Trainer(model, config, [], run_dir=run_dir, dist_env=dist_env, device=device, source=source)
    result = trainer.fit()
    reference = None
    if dist_env.is_main:
        # Rank 0's shard only when distributed: the reference is a sample of training spots anyway.
        sample = reference_sample(stored, reference_spots, config.train.seed)
        reference = build_reference(model, config, sample, prep.genes, meta={"reference_sample": True})
    info = {"state": STATE_COMPLETE,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "resolution": resolution_record(config, [s.microns_per_pixel for s in stored]),
            "cohort_slides": len(cohort), "train_slides": cohort.ids, "world_size": dist_env.world_size,
            "n_reference_spots": 0 if reference is None else int(reference.embeddings.shape[0]),
            "reference_sample": True, "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            "method": config.model.name, "config_name": config.name}
    if run_dir is not None:
        save_model(run_dir / "model.pt", model, config, prep.spot_in_dim, result.best_epoch)
        reference.save(run_dir / "reference.h5", overwrite=True)
        info["files"] = file_records(run_dir)  # sizes and checksums, checked by load_run
        write_run_info(run_dir, info)  # last, atomically: the run is complete
    return Run(model, config, prep, reference, result, run_dir, info=info)

