"""Predict expression for a whole-slide image with no spatial transcriptomics: tissue → spot grid → streamed
patches at the run's physical resolution → features → retrieval → a Visium-like AnnData.

Memory is bounded by the chunk size, not the slide: patches are read band by band through the pyramid
(:func:`stgraph.data.wsi.iter_patches_at_mpp`), turned into backbone features chunk by chunk and dropped; only
the (n_spots, F) features and the (n_spots, G) prediction are kept. The optional feature cache lives in a
user cache directory (:func:`user_cache_dir`), never in the working directory, and its size is logged.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch
from anndata import AnnData

from ..errors import StgraphError
from ..keys import Key
from ..runfolder import Run
from ..preprocess.prepare import PreparedSlide, needs_graph
from ..preprocess.resolution import (QueryResolution, check_tissue_extent, query_resolution,
                                     require_physical_resolution)
from ..data.transforms import grid_coordinates, normalize_batch, patch_batch
from ..utils import atomic_save_npy, folder_size, prefetch, user_cache_dir
from .predict import check_interval, check_k, predict_prepared

__all__ = ["WSIPredictionError", "user_cache_dir", "parse_grid", "expand_slide_paths", "wsi_features",
           "predict_wsi"]

log = logging.getLogger("stgraph")


class WSIPredictionError(StgraphError, ValueError):
    """A whole-slide prediction that cannot run as asked (bad grid, bad paths)."""


def parse_grid(value: Union[str, float]) -> Union[str, float]:
    """``"visium"``, ``"st"`` or a pitch in µm (``"150"``, ``150``) → the ``kind`` of :func:`spot_grid`."""
    from ..data.wsi.grid import GRID_KINDS

    if isinstance(value, str) and value.lower() in GRID_KINDS:
        return value.lower()
    try:
        pitch = float(value)
    except (TypeError, ValueError):
        raise WSIPredictionError(f"--grid must be one of {sorted(GRID_KINDS)} or a pitch in µm, got {value!r}") from None
    if not (np.isfinite(pitch) and pitch > 0):
        raise WSIPredictionError(f"--grid pitch must be a positive number of µm, got {value!r}")
    return pitch


def expand_slide_paths(values: Iterable[str]) -> list[Path]:
    """Paths and globs (``"slides/*.svs"``) → existing paths, in order, without duplicates."""
    out: list[Path] = []
    for value in values:
        if any(ch in value for ch in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(value)))
            if not matches:
                raise FileNotFoundError(f"no slide matches {value!r}")
            out += [Path(m) for m in matches]
        else:
            path = Path(value).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"whole-slide image not found: {path}")
            out.append(path)
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _backbone_id(run: Run) -> str:
    cfg = run.config.model.image_encoder
    weights = hashlib.blake2b(b"".join(t.detach().cpu().numpy().tobytes()
                                       for t in run.model.image_encoder.state_dict().values()),
                              digest_size=8).hexdigest()
    return f"{cfg.backbone}:{cfg.input_size}:{weights}"


def _cache_file(cache_dir: Path, wsi, xy: np.ndarray, patch_um: float, target_mpp: float, run: Run) -> Path:
    from ..utils.io import file_fingerprint

    key = json.dumps({"image": file_fingerprint(wsi.source),
                      "mpp": wsi.mpp, "xy": hashlib.blake2b(np.ascontiguousarray(xy, np.float64).tobytes(),
                                                            digest_size=8).hexdigest(),
                      "patch_um": round(patch_um, 6), "target_mpp": round(target_mpp, 9),
                      "backbone": _backbone_id(run)}, sort_keys=True)
    digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
    return cache_dir / "features" / f"{Path(wsi.source).name.split('.')[0]}_{digest}.npy"


@torch.no_grad()
def wsi_features(run: Run, wsi, xy: np.ndarray, patch_um: float, target_mpp: float, chunk_size: int = 256,
                 batch_size: int = 64, progress: bool = False, cache_dir: Optional[Path] = None,
                 desc: str = "patches", prefetch_chunks: int = 1) -> np.ndarray:
    """(n, F) backbone features of ``patch_um`` µm patches at ``target_mpp`` µm/px centred on ``xy``.

    Patches are read ``chunk_size`` at a time (:func:`iter_patches_at_mpp`), encoded ``batch_size`` at a time
    and discarded; the progress bar counts patches. A background thread reads (and resamples) the next
    ``prefetch_chunks`` chunks while the backbone encodes the current one (:func:`stgraph.utils.prefetch`;
    0 reads in the calling thread), so at most ``prefetch_chunks + 2`` chunks of patches are held at once.
    With ``cache_dir`` the features are stored in
    ``<cache_dir>/features/`` (keyed by the image file, the spots, the geometry and the backbone weights)
    and reused.
    """
    from tqdm.auto import tqdm

    from ..data.wsi.image import iter_patches_at_mpp

    path = _cache_file(cache_dir, wsi, xy, patch_um, target_mpp, run) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            feats = np.load(path)
            if feats.shape[0] == len(xy):
                log.info("features from the cache %s", path)
                return feats
        except (OSError, ValueError):
            pass  # a damaged entry is recomputed
    encoder = run.model.image_encoder
    device = next(run.model.parameters()).device
    input_size = getattr(encoder, "input_size", None)
    was_training = encoder.training
    encoder.eval()
    feats: Optional[np.ndarray] = None
    with tqdm(total=len(xy), desc=desc, unit="patch", disable=not progress, leave=False) as bar:
        chunks = iter_patches_at_mpp(wsi, xy, patch_um, target_mpp, batch_size=chunk_size)
        for idx, patches in prefetch(chunks, prefetch_chunks):
            for start in range(0, len(idx), batch_size):
                x = normalize_batch(patch_batch(patches[start : start + batch_size], input_size, device))
                f = encoder(x).float().cpu().numpy()
                if feats is None:
                    feats = np.empty((len(xy), f.shape[1]), dtype=np.float32)
                feats[idx[start : start + batch_size]] = f
            bar.update(len(idx))
    encoder.train(was_training)
    if feats is None:
        feats = np.zeros((0, getattr(encoder, "num_features", 0)), np.float32)
    if path is not None:
        atomic_save_npy(path, feats)
        total = folder_size(path.parent)
        log.info("feature cache: wrote %s (%.1f MB); %s holds %.1f MB (delete it freely, or pass --no-cache)",
                 path.name, path.stat().st_size / 1e6, path.parent, total / 1e6)
    return feats


def predict_wsi(run: Run, path: Union[str, os.PathLike], grid: Union[str, float] = "visium",
                mpp: Optional[float] = None, slide_id: Optional[str] = None, k: Optional[int] = None,
                similarity: Optional[str] = None, aggregation: Optional[str] = None,
                backend: Optional[str] = None, cache: bool = False,
                cache_dir: Optional[Union[str, os.PathLike]] = None, chunk_size: int = 256,
                batch_size: int = 64, progress: bool = False, prefetch_chunks: int = 1,
                train_mpp: Optional[float] = None, max_spots: Optional[int] = None,
                allow_scale_mismatch: bool = False, interval: Optional[float] = None, **mask_kwargs) -> AnnData:
    """Predict a whole-slide image's expression on a spot grid laid over its tissue.

    Parameters
    ----------
    run
        A trained :class:`~stgraph.runfolder.Run`.
    path
        ``.tif``/``.tiff``/``.svs``/``.ndpi``/... (see :mod:`stgraph.data.wsi`).
    grid
        ``"visium"``, ``"st"`` or a square pitch in µm (:func:`stgraph.data.wsi.grid.spot_grid`).
    mpp
        µm per level-0 pixel when the file does not state it (``--mpp``); it also overrides the file.
    cache, cache_dir
        Keep the features in ``user_cache_dir(cache_dir)/features`` and reuse them on the next call.
    chunk_size, batch_size
        Patches read per band, and per backbone forward.
    prefetch_chunks
        Chunks read ahead by a background thread while the backbone runs (0: no thread).
    train_mpp
        µm per pixel of the training images, for a run that records no physical resolution (``--train-mpp``);
        without it such a run is refused (:class:`~stgraph.preprocess.resolution.UnknownResolutionError`).
    max_spots
        Bound on the grid's spots (default :data:`~stgraph.data.wsi.grid.DEFAULT_MAX_SPOTS`), checked on an
        estimate from the tissue area before the grid, its features or its output are allocated.
    allow_scale_mismatch
        Predict a slide whose tissue, at its stated pixel size, is longer than tissue on a glass slide can be
        (:func:`~stgraph.preprocess.resolution.check_tissue_extent`) instead of refusing it.
    **mask_kwargs
        Passed to :func:`stgraph.data.wsi.tissue.tissue_mask`.

    Returns
    -------
    AnnData
        As :func:`~stgraph.inference.predict_slide`: ``X`` (n_spots, G), ``obsm['spatial']`` in level-0 px,
        ``array_row``/``array_col``, ``uns['spatial']`` with ``hires``/``lowres`` thumbnails and scale factors
        (``spot_diameter_fullres`` included), and in ``uns['stgraph']`` the slide, its pixel size, the grid
        and the resampling (``patch_um``, ``target_mpp``, ``resample_factor``, ``level``).

    Raises
    ------
    SlideFormatError
        No pixel size in the file and no ``mpp``; an unreadable file.
    NoTissueError
        No tissue detected.
    """
    from ..data.wsi.grid import DEFAULT_MAX_SPOTS, GridTooLargeError, wsi_spot_grid
    from ..data.wsi.image import WSIImage, level_for_mpp

    config = run.config
    require_physical_resolution(run.resolution, config, train_mpp)  # before the slide is opened
    check_interval(run, interval)
    kind = parse_grid(grid)
    check_k(k)
    max_spots = DEFAULT_MAX_SPOTS if max_spots is None else int(max_spots)
    if max_spots < 1:
        raise WSIPredictionError(f"--max-spots must be ≥ 1, got {max_spots}")
    cfg = config.model.image_encoder
    with WSIImage(path, mpp=mpp) as wsi:
        res = query_resolution(run.resolution, config, wsi.mpp, train_mpp=train_mpp)
        level = level_for_mpp(wsi, res.target_mpp)
        log.info("%s: %d × %d px at %.4g µm/px (%s), %d level(s)", Path(wsi.source).name, wsi.shape[1],
                 wsi.shape[0], wsi.mpp, wsi.mpp_source, wsi.level_count)
        log.info("%s; read from level %d (downsample %.3g)", res.describe(), level, wsi.level_downsamples[level])
        lw, lh = wsi.level_dimensions[level]
        # Decode one tile of the level the patches come from now (an unreadable level or a missing codec
        # fails here, before tissue detection and the backbone run).
        wsi.read_level_region(level, lw // 2, lh // 2, min(64, lw), min(64, lh))
        try:
            adata = wsi_spot_grid(wsi, kind=kind, slide_id=slide_id, max_spots=max_spots, **mask_kwargs)
        except GridTooLargeError as err:
            # What the estimate would hold in memory: backbone features and the (n, G) float32 prediction.
            width = int(getattr(run.model.image_encoder, "num_features", 0) or 0) + len(run.genes)
            raise WSIPredictionError(f"{Path(wsi.source).name}: {err} (about {err.estimate * width * 4 / 2**30:.3g} GiB "
                                     "of features and predictions)") from None
        if adata.n_obs == 0:
            h0, w0 = wsi.shape[:2]
            raise WSIPredictionError(
                f"{Path(wsi.source).name}: no spot of the {kind} grid falls on the tissue (the slide is "
                f"{w0 * wsi.mpp:.4g} × {h0 * wsi.mpp:.4g} µm); is the --grid pitch larger than the tissue?")
        meta = next(iter(adata.uns[Key.uns.spatial].values()))[Key.uns.metadata]
        pitch = float(meta["grid_pitch_um"])
        spots = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
        extent = float((spots.max(0) - spots.min(0)).max()) * wsi.mpp + pitch
        check_tissue_extent(extent, Path(wsi.source).name, wsi.mpp, allow=allow_scale_mismatch)  # before features
        log.info("grid %s: %d spots over the tissue, pitch %g µm", meta["grid_kind"], adata.n_obs, pitch)
        if pitch < res.patch_um:
            log.warning("the grid pitch (%g µm) is smaller than the patch (%g µm): neighbouring spots' patches "
                        "overlap (as HEST's 112 µm patches on Visium's 100 µm pitch); each spot still gets its "
                        "own patch centred on it", pitch, res.patch_um)
        xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
        cache_root = user_cache_dir(cache_dir) if cache else None
        name = next(iter(adata.uns[Key.uns.spatial]))
        stream = dict(chunk_size=chunk_size, batch_size=batch_size, progress=progress, cache_dir=cache_root,
                      prefetch_chunks=prefetch_chunks)
        features = wsi_features(run, wsi, xy, res.patch_um, res.target_mpp, desc=f"patches {name}", **stream)
        edge_index = None
        if needs_graph(config, query=True):
            from ..graph import spatial_graph, to_edge_index

            g = config.data.graph
            edge_index = to_edge_index(spatial_graph(adata, radius=g.radius, radius_factor=g.radius_factor,
                                                     knn=g.knn, self_loops=g.self_loops, radius_um=g.radius_um))
        if cfg.context_scale is not None:
            s = float(cfg.context_scale)
            ctx = wsi_features(run, wsi, xy, res.patch_um * s, res.target_mpp * s, desc=f"context {name}",
                               **stream)
            features = np.concatenate([features, ctx], 1)
        if cfg.neighbour_context:
            from ..nn.context import neighbour_mean

            features = np.concatenate([features, neighbour_mean(torch.as_tensor(features), edge_index).numpy()], 1)
        query = PreparedSlide(slide_id=name, barcodes=list(map(str, adata.obs_names)),
                              coords=grid_coordinates(adata), xy=xy.astype(np.float32),
                              features=features.astype(np.float32, copy=False), edge_index=edge_index)
        provenance = {"wsi": str(Path(wsi.source).resolve()), "wsi_mpp": float(wsi.mpp),
                      "wsi_mpp_source": wsi.mpp_source, "grid": str(kind), "patch_um": float(res.patch_um),
                      "target_mpp": float(res.target_mpp), "resample_factor": float(res.factor),
                      "physical_resolution": bool(res.physical), "level": int(level)}
    return predict_prepared(run, adata, query, k=k, similarity=similarity, aggregation=aggregation,
                            backend=backend, provenance=provenance, interval=interval)
