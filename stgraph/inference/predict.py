"""Predict a new slide's expression from its image: load a run folder, embed, retrieve, write AnnData."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from anndata import AnnData

from ..data.pp import EXPRESSION_UNITS
from ..data.slide_id import slide_id_of
from ..errors import StgraphError
from ..models import model_spec
from ..retrieval.reference import ReferenceStore
from ..preprocess.embed import embed_slide
from ..runfolder import ModelFolderError, Run
from ..preprocess.prepare import needs_graph, prepare_slide
from ..utils import atomic_path
from ..keys import Key
from .smoothing import smooth_on_graph

__all__ = ["predict_slide", "predict_prepared", "write_prediction", "prediction_table", "apply_trust",
           "check_output_path", "PredictionOutputError", "extend_reference", "GeneOverlapError",
           "MIN_GENE_OVERLAP", "check_k", "PredictionOptionError", "check_retrieval_options", "check_interval"]




class PredictionOptionError(StgraphError, ValueError):
    """A prediction option out of its range (``k`` < 1, ...)."""


def check_interval(loaded: Run, interval: Optional[float]) -> None:
    """An interval level is in [0.50, 0.99] and the run has a trust record to calibrate it; checked before any
    feature is computed."""
    level = interval if interval is not None else loaded.config.trust.interval
    if level is None:
        return
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.5 <= float(level) <= 0.99:
        raise PredictionOptionError(f"--interval must be a level in [0.50, 0.99] (e.g. 0.9), got {level!r}")
    if getattr(loaded, "trust", None) is None:
        raise PredictionOptionError(f"--interval {level}: the run has no trust record to calibrate intervals "
                                    f"({NO_TRUST})")


def check_k(k: Optional[int]) -> None:
    """``k`` (neighbours) is an integer ≥ 1 when given; checked before any feature is computed."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise PredictionOptionError(f"--k (neighbours) must be an integer ≥ 1, got {k!r}")


def predict_slide(loaded: Run, adata: AnnData, k: Optional[int] = None,
                  similarity: Optional[str] = None, aggregation: Optional[str] = None,
                  backend: Optional[str] = None, progress: bool = False,
                  allow_scale_mismatch: bool = False, interval: Optional[float] = None) -> AnnData:
    """Predict the expression of every spot of ``adata`` from its image alone.

    Parameters
    ----------
    loaded
        A :class:`~stgraph.runfolder.Run`: from :func:`load_run` or :func:`~stgraph.training.train_model`.
    adata
        The query slide: spot centres in ``obsm['spatial']`` and its image; expression, if any, is ignored.
    k, similarity, aggregation, backend
        Override the run's ``inference`` settings.
    interval
        Also write per-spot prediction intervals at this level (``layers['lower'/'upper']``; default the run's
        ``trust.interval``), calibrated on the training slides (:mod:`stgraph.trust`).
    allow_scale_mismatch
        Predict a query whose pixel size is probably wrong (none stated while the run has one, or a spot
        spacing far from the training slides'; :func:`~stgraph.preprocess.resolution.check_query_scale`)
        instead of refusing it.

    Returns
    -------
    AnnData
        ``X`` (n_spots, G) predicted log-normalised expression over the reference genes, ``obsm['spatial']``,
        ``obs`` (array coordinates, slide id), the input's ``uns['spatial']`` (so ``sc.pl.spatial`` draws it
        over the H&E), and provenance in ``uns['stgraph']``.
    """
    if loaded.reference.kind != "image" and loaded.config.inference.reference == "image":
        raise ModelFolderError("the reference holds spot embeddings but the config asks for image retrieval")
    check_k(k)
    check_interval(loaded, interval)
    from ..preprocess.resolution import check_query_scale

    check_query_scale(loaded.resolution, adata, name=f"slide {slide_id_of(adata, default='query')!r}",
                      allow=allow_scale_mismatch)  # before any feature is computed

    device = str(next(loaded.model.parameters()).device)
    config, provenance = query_config(loaded, adata)
    query = prepare_slide(adata, config, preprocessor=None, image_encoder=loaded.model.image_encoder,
                          device=device, progress=progress, with_graph=needs_graph(config, query=True))
    return predict_prepared(loaded, adata, query, k=k, similarity=similarity, aggregation=aggregation,
                            backend=backend, provenance=provenance, interval=interval)


def query_config(loaded: Run, adata: AnnData):
    """The run's config with ``data.patch_um`` set so the query's patches cover the µm the run was trained on
    (resampled to ``data.patch_size``), and the provenance of that decision (logged).

    A query without a pixel size, or a run without a physical resolution (HER2+ read without
    ``microns_per_pixel``), keeps the pixel behaviour: ``patch_size`` query pixels.
    """
    import copy
    import logging

    from ..preprocess.resolution import query_resolution, slide_mpp

    log = logging.getLogger("stgraph")
    config = loaded.config
    mpp = slide_mpp(adata)
    res = loaded.resolution or {}
    physical = res.get("patch_um") is not None or config.data.patch_um is not None
    if mpp is None:
        if config.data.patch_um is not None:
            raise ValueError(f"the run cuts {config.data.patch_um:g} µm patches (data.patch_um) but the query "
                             "states no pixel size: pass --mpp (metadata['microns_per_pixel'])")
        if physical:  # allowed by --allow-scale-mismatch (check_query_scale refuses it otherwise)
            log.warning("the query states no pixel size (metadata['microns_per_pixel'], --mpp): its patches are "
                        "%d of its pixels, not resampled to the %s µm the run was trained on",
                        config.data.patch_size, res.get("patch_um"))
        return config, {"physical_resolution": False}
    qres = query_resolution(res, config, mpp)
    log.info("%s", qres.describe())
    provenance = {"physical_resolution": bool(qres.physical), "patch_um": float(qres.patch_um),
                  "target_mpp": float(qres.target_mpp), "resample_factor": float(qres.factor),
                  "query_mpp": float(mpp)}
    if qres.physical and config.data.patch_um is None:
        config = copy.deepcopy(config)
        config.data.patch_um = qres.patch_um
    return config, provenance


def predict_prepared(loaded: Run, adata: AnnData, query, k: Optional[int] = None,
                     similarity: Optional[str] = None, aggregation: Optional[str] = None,
                     backend: Optional[str] = None, provenance: Optional[dict] = None,
                     interval: Optional[float] = None) -> AnnData:
    """Embed an already prepared query slide (:class:`~stgraph.preprocess.PreparedSlide`, features or patches),
    retrieve (or predict) its expression and build the output AnnData (see :func:`predict_slide`);
    ``provenance`` is merged into ``uns['stgraph']``."""
    config = loaded.config
    icfg = config.inference
    spec = model_spec(config)
    if not spec.retrieves:
        check_retrieval_options(config, k=k, similarity=similarity, aggregation=aggregation, backend=backend)
    query_emb = embed_slide(loaded.model, query, "image")
    if spec.retrieves:
        pred, used = loaded.reference.predict_configured(query_emb, icfg, k, similarity, aggregation, backend)
        how = {"values": f"{EXPRESSION_UNITS}, the {used['aggregation']} of the {used['k']} nearest reference "
                         "profiles", "reference_kind": loaded.reference.kind,
               "n_reference_spots": int(loaded.reference.n_spots), **used}
    else:
        pred = loaded.model.predict_prepared(query)
        how = {"values": f"{EXPRESSION_UNITS}, predicted by the model (model.kind {config.model.kind})"}
    if icfg.smoothing > 0:
        pred = smooth_on_graph(pred, _adjacency(query), alpha=icfg.smoothing, steps=icfg.smoothing_steps)
        how["smoothing"] = {"alpha": float(icfg.smoothing), "steps": int(icfg.smoothing_steps)}
    # log1p(counts per 10,000) is never negative; a regression head can undershoot: clip at 0.
    pred = np.maximum(np.asarray(pred, dtype=np.float32), 0.0)
    obs_cols = [c for c in ("array_row", "array_col", "slide_id", "in_tissue") if c in adata.obs]
    out = AnnData(
        X=np.asarray(pred, dtype=np.float32),
        obs=adata.obs[obs_cols].copy() if obs_cols else pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=pd.Index(loaded.genes, dtype=str)),
    )
    out.obsm[Key.obsm.spatial] = np.asarray(adata.obsm[Key.obsm.spatial]).copy()
    out.obsm[Key.obsm.embedding] = query_emb
    if Key.uns.spatial in adata.uns:
        out.uns[Key.uns.spatial] = adata.uns[Key.uns.spatial]
    out.uns[Key.uns.stgraph] = {
        "model": str(getattr(loaded, "run_dir", "") or ""),
        "method": config.model.name,
        "model_kind": config.model.kind,
        "config_name": config.name,
        "units": EXPRESSION_UNITS,
        **how,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if provenance:
        out.uns[Key.uns.stgraph].update(provenance)
    apply_trust(out, loaded, pred, query_emb, interval=interval)
    return out


#: What a prediction says of a run without a trust record.
NO_TRUST = ("no trust record: the run was trained with trust.reliability=false, on one slide, in several "
            "processes, or before trust existed")


def apply_trust(out: AnnData, loaded: Run, pred: np.ndarray, query_emb: np.ndarray,
                interval: Optional[float] = None) -> None:
    """Write the run's trust record (:mod:`stgraph.trust`) onto a prediction, in place:

    * ``var``: ``expected_r``, ``expected_r_sd`` (over the held-out training slides), ``expected_r_slide``
      (adjusted to this slide's predicted variation) and ``reliable`` (both ≥ ``trust.reliable_r``);
    * ``obs``: ``ood_score`` and ``in_distribution``; ``uns['stgraph']['ood_fraction']``, and a warning naming
      the slide when its median spot lies beyond ``trust.ood_slide_quantile`` of the training distances;
    * with ``interval`` (or ``trust.interval``): ``layers['lower']`` / ``layers['upper']``, the conformal
      interval at that level (``uns['stgraph']['interval_level']``).
    """
    import logging

    from ..trust import intervals, ood_scores, slide_expected_r, slide_out_of_distribution

    info = out.uns[Key.uns.stgraph]
    trust = getattr(loaded, "trust", None)
    cfg = loaded.config.trust
    level = interval if interval is not None else cfg.interval
    if trust is None:
        info["trust"] = NO_TRUST
        if level is not None:
            raise PredictionOptionError(f"--interval {level}: the run has no trust record to calibrate intervals "
                                        f"({NO_TRUST})")
        return
    expected = trust.expected_r
    slide = slide_expected_r(expected, trust.fold_pred_sd, pred)
    out.var[Key.var.expected_r] = expected.astype(np.float32)
    out.var[Key.var.expected_r_sd] = trust.expected_r_sd.astype(np.float32)
    out.var[Key.var.expected_r_slide] = slide.astype(np.float32)
    out.var[Key.var.reliable] = np.nan_to_num(np.minimum(expected, slide), nan=-1.0) >= cfg.reliable_r
    from ..trust.conformal import level_index

    low, high = trust.marginal[level_index(0.98)]
    out.var[Key.var.train_low], out.var[Key.var.train_high] = low.astype(np.float32), high.astype(np.float32)
    score, inside = ood_scores(query_emb, trust.ood_reference, trust.ood_calibration, trust.ood_k, cfg.ood_quantile,
                               scale=trust.ood_scale)
    out.obs[Key.obs.ood_score] = score
    out.obs[Key.obs.in_distribution] = inside
    fraction = float(1.0 - inside.mean()) if len(inside) else 0.0
    info.update({"trust": trust.method, "reliable_r": float(cfg.reliable_r), "n_reliable": int(out.var[Key.var.reliable].sum()),
                 "ood_fraction": fraction, "ood_quantile": float(cfg.ood_quantile), "trust_folds": list(trust.fold_ids)})
    info["ood_median_score"] = float(np.median(score)) if len(score) else float("nan")
    info["ood_warning"] = bool(slide_out_of_distribution(score, trust.ood_calibration, cfg.ood_slide_quantile))
    if info["ood_warning"]:
        name = slide_id_of(out, default=str(info.get("wsi") or "the query"))
        logging.getLogger("stgraph").warning(
            "slide %s looks unlike the training slides: its median spot lies beyond the %.3g quantile of the "
            "training slides' own distances to each other (%.0f%% of its spots out of distribution); another "
            "tissue, stain, scanner or a non-tissue image? Its predictions are not to be trusted",
            name, cfg.ood_slide_quantile, 100 * fraction)
    if level is not None:
        lower, upper = intervals(pred, trust.scale, trust.quantiles, float(level))
        out.layers[Key.layers.lower], out.layers[Key.layers.upper] = lower, upper
        info["interval_level"] = float(level)


def check_retrieval_options(config, **given) -> None:
    """Refuse retrieval settings (``k``, ``similarity``, ``aggregation``, ``backend``) for a model that
    predicts expression itself: they would silently do nothing."""
    set_ = [name for name, value in given.items() if value is not None]
    if set_ and not model_spec(config).retrieves:
        raise PredictionOptionError(
            f"{', '.join('--' + n for n in set_)}: the run's model (model.kind {config.model.kind}) predicts "
            "expression itself and retrieves nothing from its reference; leave retrieval options out")


def _adjacency(slide):
    """The prepared slide's spot graph as a sparse (n, n) adjacency."""
    import scipy.sparse as sp

    ei = slide.edge_index.cpu().numpy()
    return sp.csr_matrix((np.ones(ei.shape[1], dtype=np.float32), (ei[0], ei[1])), shape=(slide.n_spots,) * 2)


class PredictionOutputError(StgraphError, ValueError):
    """An output path stgraph cannot write (unknown suffix, a missing optional writer)."""


#: Output suffixes ``write_prediction`` understands: the AnnData, a table export, or a SpatialData store (a
#: ``.zarr`` folder, :mod:`stgraph.inference.spatialdata_out`).
OUTPUT_SUFFIXES = (".h5ad", ".csv", ".parquet", ".zarr")


def prediction_table(adata: AnnData) -> pd.DataFrame:
    """The prediction as a table: one row per spot (index ``spot``: the spot's name, e.g. its barcode), ``x``,
    ``y`` (full-resolution px), ``array_row``/``array_col``/``slide_id`` when present, then one column per
    gene."""
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    frame = pd.DataFrame(index=pd.Index(adata.obs_names.copy(), name="spot"))
    xy = np.asarray(adata.obsm[Key.obsm.spatial])
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    for col in (Key.obs.array_row, Key.obs.array_col, Key.obs.slide_id):
        if col in adata.obs:
            frame[col] = adata.obs[col].to_numpy()
    genes = pd.DataFrame(np.asarray(x, dtype=np.float32), index=frame.index, columns=list(adata.var_names))
    return pd.concat([frame, genes], axis=1)


def check_output_path(path: str | Path, force: bool = False) -> Path:
    """Validate an output path before any compute: a known suffix, parquet's (or spatialdata's) writer
    importable, and no existing file (or ``.zarr`` store) unless ``force``."""
    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise PredictionOutputError(f"output must end in one of {', '.join(OUTPUT_SUFFIXES)}, got {path}")
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise PredictionOutputError(f"writing {path} needs pyarrow, which is not installed "
                                        "(pip install pyarrow), or write .csv or .h5ad instead") from None
    if path.suffix == ".zarr":
        import importlib.util

        if importlib.util.find_spec("spatialdata") is None:
            raise PredictionOutputError(f"writing {path} needs spatialdata, which is not installed "
                                        "(pip install 'stgraph[spatialdata]'), or write .h5ad instead")
    elif path.is_dir():
        raise PredictionOutputError(f"output {path} is an existing folder, not a file")
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (use --force to replace it)")
    from ..utils.io import check_not_in_run_folder, check_replaceable, check_writable_dir

    if path.exists() or path.is_symlink():
        check_replaceable(path)  # --force replaces an earlier prediction, never the user's other files
    check_writable_dir(path.parent, what=f"folder of output {path.name}")  # before any slide is read
    check_not_in_run_folder(path)
    return path


def write_prediction(adata: AnnData, path: str | Path, force: bool = False) -> Path:
    """Write ``adata`` to ``path`` atomically; refuse to replace an existing file unless ``force``.

    ``.h5ad``: the AnnData (plottable with ``sc.pl.spatial``); ``.csv`` / ``.parquet`` (needs pyarrow): the
    :func:`prediction_table` export; ``.zarr``: a SpatialData store with the H&E, one shape per spot and the
    prediction as its table (needs spatialdata, :func:`~stgraph.inference.spatialdata_out.write_spatialdata`).
    """
    path = check_output_path(path, force=True)
    if path.suffix == ".zarr":
        from .spatialdata_out import write_spatialdata

        return write_spatialdata(adata, path, force=force)
    from ..utils.io import check_free_space

    x = adata.X
    check_free_space(path, (x.data.nbytes if hasattr(x, "data") and hasattr(x, "indices") else np.asarray(x).nbytes)
                     + sum(np.asarray(v).nbytes for v in adata.obsm.values()), what="prediction")
    with atomic_path(path, overwrite=force) as tmp:
        if path.suffix == ".h5ad":
            adata.write_h5ad(tmp)
        elif path.suffix == ".csv":
            prediction_table(adata).to_csv(tmp)
        else:
            prediction_table(adata).to_parquet(tmp)
    return path


#: Fewest of the run's genes a slide added to the reference must measure (its other genes would enter as zeros).
MIN_GENE_OVERLAP = 0.5


class GeneOverlapError(StgraphError, ValueError):
    """A slide shares too few genes with the run to be added to its reference."""


def _check_gene_overlap(adata: AnnData, genes: list, min_overlap: float) -> None:
    have = set(map(str, adata.var_names))
    missing = [g for g in genes if g not in have]
    shared = len(genes) - len(missing)
    if shared < min_overlap * len(genes) or shared == 0:
        name = slide_id_of(adata, default="slide")
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise GeneOverlapError(
            f"slide {name!r} measures only {shared} of the run's {len(genes)} genes (at least "
            f"{min_overlap:.0%} needed); missing: {', '.join(missing[:20])}{more}")


def extend_reference(loaded: Run, slides, save: bool = True,
                     min_gene_overlap: float = MIN_GENE_OVERLAP) -> ReferenceStore:
    """Embed new slides (with expression) with the trained model and append them to its reference.

    No retraining: each slide is preprocessed with the run's fitted preprocessing, embedded with the branch
    the reference holds, and its spots are appended. With ``save`` (and a run folder), the new reference
    replaces ``reference.h5`` atomically and the previous one is kept as ``reference.prev.h5``.

    Returns the extended store (also set on ``loaded``).
    """
    if save and loaded.run_dir is not None:
        from ..utils.lock import FolderLock

        # One writer at a time: refused (naming the owner) while train/--force/--resume/extend writes it.
        with FolderLock(loaded.run_dir) as lock:
            return _extend_reference(loaded, slides, True, min_gene_overlap, lock)
    return _extend_reference(loaded, slides, save, min_gene_overlap)


def _extend_reference(loaded: Run, slides, save: bool, min_gene_overlap: float, lock=None) -> ReferenceStore:
    store = loaded.reference
    if save and loaded.run_dir is not None:
        from ..runfolder import STATE_COMPLETE, clean_stale_files, read_run_info, run_state

        info = read_run_info(loaded.run_dir)
        if run_state(info) != STATE_COMPLETE:  # it was complete when loaded; a writer interrupted it since
            raise ModelFolderError(f"run {loaded.run_dir} is not complete (run.json state: {run_state(info)!r}); "
                                   "finish it with `stgraph train --resume` before extending it")
        if info.get("n_reference_spots") != loaded.info.get("n_reference_spots"):
            raise ModelFolderError(f"run {loaded.run_dir} changed since it was loaded (another writer extended "
                                   "it): load it again before extending it")
        clean_stale_files(loaded.run_dir)  # what killed writers left (we hold the lock: none is alive)
    if not model_spec(loaded.config).retrieves:
        raise ValueError(f"the run {loaded.run_dir} ({loaded.config.model.name}) predicts from fitted weights, not "
                         "from its reference: extending the reference would not change its predictions; "
                         "retrain with the new slides instead")
    device = str(next(loaded.model.parameters()).device)
    slides = list(slides)
    for adata in slides:  # every slide is checked before any is embedded or anything is written
        if adata.n_vars == 0:
            raise ValueError("a slide added to the reference needs its expression")
        _check_gene_overlap(adata, list(store.genes), min_gene_overlap)
    added = []
    for adata in slides:
        prepared = prepare_slide(adata, loaded.config, loaded.preprocessor, image_encoder=loaded.model.image_encoder,
                                 device=device, with_graph=needs_graph(loaded.config))
        emb = embed_slide(loaded.model, prepared, store.kind)
        store = store.extend(emb, prepared.expr, list(store.genes), np.array([prepared.slide_id] * prepared.n_spots),
                             np.array(prepared.barcodes))
        added.append(str(prepared.slide_id))
    if save and loaded.run_dir is not None:
        import shutil

        from ..runfolder import file_records, read_run_info, verify_run_files, write_run_info

        # Just before writing: the lock is still ours, and the run is still the one the counts came from.
        lock.verify()
        info = read_run_info(loaded.run_dir)
        if info.get("n_reference_spots") != loaded.info.get("n_reference_spots"):
            raise ModelFolderError(f"run {loaded.run_dir} changed while the slides were embedded (another writer "
                                   "extended it): nothing was written; load it again and extend it")
        verify_run_files(loaded.run_dir, info)
        current = Path(loaded.run_dir) / "reference.h5"
        with atomic_path(current.with_name("reference.prev.h5")) as tmp:
            shutil.copy2(current, tmp)
        store.save(current, overwrite=True)
        lock.verify()
        info = {**info, "n_reference_spots": int(store.n_spots),
                "extended_with": list(info.get("extended_with", [])) + added}
        info["files"] = {**(info.get("files") or {}), **file_records(loaded.run_dir, ("reference.h5",))}
        write_run_info(loaded.run_dir, info)  # the provenance follows the reference it describes
        loaded.info = info
    loaded.reference = store
    return store
