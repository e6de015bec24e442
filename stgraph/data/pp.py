"""Preprocessing verbs on slides (scanpy under the hood).

Everything fitted — the gene list, PCA, Harmony — is fitted on the slides the caller passes; pass only the
training slides, so a held-out slide never shapes its own preprocessing.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .errors import SlideFormatError, require_file
from .slide_id import slide_id_of
from ..keys import Key
from ..utils.threads import keep_torch_threads

__all__ = [
    "COUNTS_PER",
    "EXPRESSION_UNITS",
    "normalize_log1p",
    "log_normalised",
    "select_hvg_union",
    "select_highly_expressed",
    "shared_genes",
    "load_gene_list",
    "align_genes",
    "run_pca",
    "harmony_correct",
    "pool_pseudospots",
]


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x)


def _slide_name(adata: AnnData, i: int) -> str:
    return slide_id_of(adata, default=f"slide{i}")


#: Library size every spot is scaled to before the log: the one expression space of training targets, reference
#: profiles, predictions and the truth they are scored against. A fixed total (scanpy's ``normalize_total(target_sum=1e4)``,
#: what the field scores) keeps slides of different depth on one scale; the per-slide median would not (HER2+ B4's
#: median is 648 counts against ~10,000 for C2–C6, which put its truth on another curve of the log).
COUNTS_PER = 1e4
#: The unit of every expression value stgraph writes or scores.
EXPRESSION_UNITS = "log1p(counts per 10,000)"


def normalize_log1p(adata: AnnData, target_sum: float = COUNTS_PER, copy: bool = False) -> Optional[AnnData]:
    """Library-size normalisation and log: ``X = log1p(counts / Σ_g counts × target_sum)`` (default
    :data:`COUNTS_PER`: log1p of counts per 10,000, :data:`EXPRESSION_UNITS`).

    Raw counts are kept in ``layers['counts']``; when that layer already exists it is the input (so calling
    twice gives the same result). ``uns['stgraph_normalised']`` records ``target_sum``.

    Returns
    -------
    The normalised copy when ``copy``; otherwise ``None`` and ``adata`` is normalised in place (scanpy style).
    """
    import scanpy as sc

    if adata.n_vars == 0:
        raise ValueError(f"slide {_slide_name(adata, 0)!r} has no genes to normalise")
    if not (target_sum is not None and float(target_sum) > 0):
        raise ValueError(f"target_sum must be > 0, got {target_sum!r}")
    adata = adata.copy() if copy else adata
    if Key.layers.counts not in adata.layers:
        adata.layers[Key.layers.counts] = adata.X.copy()
    counts = adata.layers[Key.layers.counts]
    adata.X = counts.astype(np.float32, copy=True) if sp.issparse(counts) else np.array(counts, dtype=np.float32)
    with keep_torch_threads():  # scanpy's numba kernels would reset torch's thread count
        sc.pp.normalize_total(adata, target_sum=float(target_sum))
        sc.pp.log1p(adata)
    adata.uns.pop("log1p", None)  # scanpy's marker confuses a later log1p call; ours says what was done
    adata.uns[Key.uns.normalised] = float(target_sum)
    return adata if copy else None


def log_normalised(adata: AnnData) -> AnnData:
    """``adata`` in :data:`EXPRESSION_UNITS`: itself when :func:`normalize_log1p` already made it so, else a
    normalised copy (from ``layers['counts']`` when present, so a slide normalised another way is redone)."""
    if Key.layers.counts in adata.layers and adata.uns.get(Key.uns.normalised) == COUNTS_PER:
        return adata
    return normalize_log1p(adata, copy=True)


def shared_genes(slides: Sequence[AnnData]) -> list[str]:
    """Genes present in every slide, in the first slide's order."""
    if not slides:
        raise ValueError("no slides given")
    common = set(slides[0].var_names)
    for ad in slides[1:]:
        common &= set(ad.var_names)
    return [g for g in slides[0].var_names if g in common]


def select_hvg_union(slides: Sequence[AnnData], n_top: int = 1000, flavor: str = "seurat") -> list[str]:
    """Union of each slide's top highly variable genes.

    Genes are first restricted to those present in every given slide; then
    :func:`scanpy.pp.highly_variable_genes` picks ``n_top`` per slide on log-normalised data (``seurat``,
    ``cell_ranger``) or on raw counts (``seurat_v3``); the union is returned in the first slide's gene
    order (deterministic). Pass only training slides: a held-out slide must not choose genes.
    """
    import scanpy as sc

    slides = list(slides)
    genes = shared_genes(slides)
    if not genes:
        raise ValueError("the slides share no gene")
    chosen: set[str] = set()
    for i, ad in enumerate(slides):
        ad = log_normalised(ad)[:, genes].copy()
        n = min(int(n_top), ad.n_vars)
        kwargs = {"layer": "counts"} if flavor == "seurat_v3" else {}
        with warnings.catch_warnings(), keep_torch_threads():
            warnings.simplefilter("ignore")  # constant genes give NaN dispersions; they are simply not chosen
            table = sc.pp.highly_variable_genes(ad, n_top_genes=n, flavor=flavor, inplace=False, **kwargs)
        table.index = ad.var_names
        chosen.update(table.index[table["highly_variable"].to_numpy()])
    return [g for g in genes if g in chosen]


def select_highly_expressed(slides: Sequence[AnnData], n_top: int = 1000) -> list[str]:
    """The ``n_top`` genes with the highest mean log1p(normalised) expression over all spots of the given
    slides pooled (each spot counts once), among the genes every slide measures, in the first slide's gene
    order. HVG selection bins genes by mean and so drops the most expressed ones (IGKC, FASN, ERBB2 on
    HER2+); this keeps them. Pass only training slides."""
    slides = list(slides)
    genes = shared_genes(slides)
    if not genes:
        raise ValueError("the slides share no gene")
    total = np.zeros(len(genes))
    n = 0
    for ad in slides:
        x = log_normalised(ad)[:, genes].X
        total += np.asarray(x.sum(axis=0)).ravel()
        n += ad.n_obs
    order = np.argsort(-total / max(n, 1), kind="stable")[: int(n_top)]
    keep = set(order.tolist())
    return [g for i, g in enumerate(genes) if i in keep]


def load_gene_list(path: Union[str, os.PathLike]) -> list[str]:
    """Read a gene list: ``.npy`` array of names (e.g. ``her_hvg_cut_1000.npy``) or text, one gene per line.

    Blank lines and lines starting with ``#`` are skipped; duplicates raise :class:`SlideFormatError`.
    """
    path = require_file(path, "gene list (.npy or text, one gene per line)")
    if path.suffix == ".npy":
        try:
            genes = [str(g) for g in np.load(path, allow_pickle=False).ravel()]
        except ValueError as err:
            raise SlideFormatError(f"gene list {path} is not a plain .npy string array: {err}") from err
    else:
        genes = [line.strip() for line in path.read_text().splitlines()]
        genes = [g for g in genes if g and not g.startswith("#")]
    if not genes:
        raise SlideFormatError(f"gene list {path} is empty")
    dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
    if dup:
        raise SlideFormatError(f"gene list {path} repeats gene(s) {dup[:10]}")
    return genes


def _align_matrix(x, idx: np.ndarray, fill_value: float):
    """Columns ``idx`` of ``x`` (−1 → ``fill_value``) as an (n, len(idx)) matrix of the same kind."""
    present = idx >= 0
    if sp.issparse(x) and fill_value == 0:
        # A 0/1 selection matrix maps input columns to output columns; missing genes get empty columns.
        select = sp.csr_matrix((np.ones(present.sum(), dtype=x.dtype), (idx[present], np.flatnonzero(present))),
                               shape=(x.shape[1], len(idx)))
        return sp.csr_matrix(x @ select)
    dense = _dense(x)
    out = np.full((dense.shape[0], len(idx)), fill_value, dtype=np.result_type(dense.dtype, np.float32))
    out[:, present] = dense[:, idx[present]]
    return out


def align_genes(adata: AnnData, genes: Sequence[str], fill_value: float = 0.0) -> AnnData:
    """A copy of ``adata`` whose genes are exactly ``genes``, in that order.

    Genes absent from ``adata`` become ``fill_value`` columns (in ``X`` and every layer) and a
    :class:`UserWarning` names them (the first 20 and the count).
    """
    genes = [str(g) for g in genes]
    index = pd.Index(genes)
    if index.has_duplicates:
        raise ValueError(f"gene list repeats gene(s) {index[index.duplicated()].unique().tolist()[:10]}")
    if not adata.var_names.is_unique:
        raise SlideFormatError(f"slide {_slide_name(adata, 0)!r} has duplicate gene names; "
                               "call var_names_make_unique() first")
    idx = adata.var_names.get_indexer(index)
    missing = index[idx < 0]
    if len(missing):
        shown = ", ".join(missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        warnings.warn(f"slide {_slide_name(adata, 0)!r} lacks {len(missing)} of {len(genes)} genes; "
                      f"they are set to {fill_value}: {shown}{more}", UserWarning, stacklevel=2)
    var = adata.var.reindex(index)
    out = AnnData(
        X=_align_matrix(adata.X, idx, fill_value),
        obs=adata.obs.copy(),
        var=var,
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        obsp={k: v.copy() for k, v in adata.obsp.items()},
        uns=adata.uns.copy(),
        layers={k: _align_matrix(v, idx, fill_value) for k, v in adata.layers.items()},
    )
    return out


def run_pca(adata_or_matrix, n_comps: int = 50, layer: Optional[str] = None, random_state: int = 0, **kwargs):
    """Fit a PCA (:class:`sklearn.decomposition.PCA`) on training expression.

    Parameters
    ----------
    adata_or_matrix
        AnnData (uses ``X`` or ``layers[layer]``), a list of AnnData (stacked), or an (n, G) matrix.
    n_comps
        Number of components, clipped to ``min(n, G)`` with a warning.

    Returns
    -------
    The fitted PCA: ``.transform(query)`` maps (m, G) → (m, n_comps); ``.components_`` (n_comps, G).
    """
    from sklearn.decomposition import PCA

    if isinstance(adata_or_matrix, AnnData):
        x = _dense(adata_or_matrix.layers[layer] if layer else adata_or_matrix.X)
    elif isinstance(adata_or_matrix, (list, tuple)) and adata_or_matrix and isinstance(adata_or_matrix[0], AnnData):
        x = np.concatenate([_dense(a.layers[layer] if layer else a.X) for a in adata_or_matrix])
    else:
        x = _dense(adata_or_matrix)
    x = np.asarray(x, dtype=np.float32)
    limit = min(x.shape)
    if n_comps > limit:
        warnings.warn(f"n_comps={n_comps} exceeds min(n_samples, n_features)={limit}; using {limit}",
                      UserWarning, stacklevel=2)
        n_comps = limit
    return PCA(n_components=int(n_comps), random_state=random_state, **kwargs).fit(x)


def _harmony_z(ho, n_cells: int, n_pcs: int) -> np.ndarray:
    """Harmony's corrected embedding as (cells, PCs), whatever orientation this harmonypy returns."""
    z = ho.Z_corr
    z = z.detach().cpu().numpy() if hasattr(z, "detach") else np.asarray(z)
    if z.shape == (n_cells, n_pcs):
        return z
    if z.shape == (n_pcs, n_cells):
        return z.T
    raise ValueError(f"harmonypy returned Z_corr of shape {z.shape}; expected ({n_cells}, {n_pcs}) or transposed")


def harmony_correct(slides: Sequence[AnnData], key: str = "slide_id", n_pcs: int = 50, seed: int = 0,
                    layer: Optional[str] = None, max_iter: int = 10, **harmony_kwargs) -> list[np.ndarray]:
    """Harmony batch correction across slides, in PCA space and back in expression space.

    1. Stack the slides' expression ``X`` (N, G) (aligned genes, log-normalised) and fit a PCA:
       ``Z = (X − μ) Wᵀ`` with loadings ``W`` (k, G).
    2. ``harmonypy.run_harmony(Z, batches)`` → ``Z_corr`` (N, k); batches = ``obs[key]`` (or the slide's
       position in the list when absent).
    3. Project the correction back: ``X_corr = X + (Z_corr − Z) W`` (only the part of ``X`` in the
       PCA subspace moves; the residual is kept).

    ``harmony_kwargs`` go to :func:`harmonypy.run_harmony` (``theta``, ``nclust``, ``sigma``…; by default
    ``nclust = clip(round(N / 30), 2, 100)``). Harmony moves batches whose cell populations overlap; it
    cannot align batches with no shared structure.

    Each slide gets ``obsm['X_pca']`` (its rows of ``Z``) and ``obsm['X_pca_harmony']`` (its rows of
    ``Z_corr``), written in place.

    Returns
    -------
    list of (n_i, G) float32 corrected expression, one per slide in the given order (BLEEP-style targets).
    """
    import harmonypy

    slides = list(slides)
    if not slides:
        raise ValueError("no slides given")
    names = list(slides[0].var_names)
    for i, ad in enumerate(slides[1:], 1):
        if list(ad.var_names) != names:
            raise ValueError(f"slide {_slide_name(ad, i)!r} has other genes than {_slide_name(slides[0], 0)!r}; "
                             "align_genes every slide to one gene list first")
    x = np.concatenate([_dense(ad.layers[layer] if layer else ad.X) for ad in slides]).astype(np.float32)
    batches = np.concatenate([
        ad.obs[key].astype(str).to_numpy() if key in ad.obs else np.full(ad.n_obs, f"slide{i}")
        for i, ad in enumerate(slides)
    ])
    n_cells = x.shape[0]
    pca = run_pca(x, n_comps=min(int(n_pcs), n_cells - 1, x.shape[1]), random_state=seed)
    z = pca.transform(x)
    k = z.shape[1]
    if len(np.unique(batches)) < 2:
        warnings.warn("harmony_correct: only one batch; returning the expression unchanged", UserWarning,
                      stacklevel=2)
        z_corr = z
    else:
        meta = pd.DataFrame({key: batches})
        harmony_kwargs.setdefault("nclust", max(2, min(int(round(n_cells / 30.0)), 100)))
        ho = harmonypy.run_harmony(z, meta, key, random_state=seed, max_iter_harmony=max_iter, verbose=False,
                                   **harmony_kwargs)
        z_corr = _harmony_z(ho, n_cells, k)
    x_corr = (x + (z_corr - z) @ pca.components_).astype(np.float32)
    out, start = [], 0
    for ad in slides:
        stop = start + ad.n_obs
        ad.obsm[Key.obsm.pca] = z[start:stop].astype(np.float32)
        ad.obsm[Key.obsm.pca_harmony] = z_corr[start:stop].astype(np.float32)
        out.append(x_corr[start:stop])
        start = stop
    return out


def pool_pseudospots(adata: AnnData, size_um: float, origin_um: tuple[float, float] = (0.0, 0.0),
                     min_units: int = 1) -> AnnData:
    """Pool units (cells, bins, spots) into square pseudo-spots of exactly ``size_um`` µm on a µm grid.

    The grid is laid in micrometres, not in pixels: square ``(i, j)`` covers
    :math:`x_{\\mu m} \\in [o_x + j s, o_x + (j + 1) s)`, :math:`y_{\\mu m} \\in [o_y + i s, o_y + (i + 1) s)` with
    :math:`x_{\\mu m} = x_{px} \\cdot \\mathrm{mpp}`, so a 55 µm pseudo-spot is 55 µm whatever the pixel size (a
    grid in whole pixels from an estimated scale drifts). A unit belongs to the square holding its centre;
    counts are summed.

    Parameters
    ----------
    adata
        A slide in the stgraph convention with its pixel size (``uns['spatial'][slide]['metadata']
        ['microns_per_pixel']``) and raw counts (``layers['counts']`` when present, else ``X``).
    size_um
        The side of a pseudo-spot in µm.
    origin_um
        The grid's corner (x, y) in µm of the image frame.
    min_units
        Pseudo-spots holding fewer units are left out.

    Returns
    -------
    AnnData
        One row per pseudo-spot: ``X`` summed counts (CSR float32), ``obsm['spatial']`` the square's centre in
        pixels, ``obs['array_row'|'array_col']`` its grid indices, ``obs['n_units']``; the slide's image and
        scale, with ``spot_diameter_fullres`` = the side in pixels, ``metadata['unit_shape'] = 'square'``,
        ``metadata['pool_um']`` (= ``bin_size_um``) and ``bin_size_px``.
    """
    from .readers.visium_hd import pool_bins

    size_um = float(size_um)
    if not (np.isfinite(size_um) and size_um > 0):
        raise ValueError(f"pseudo-spot size must be a positive number of µm, got {size_um}")
    slide = slide_id_of(adata)
    entry = dict(adata.uns.get(Key.uns.spatial, {}).get(slide, {}))
    metadata = dict(entry.get(Key.uns.metadata, {}))
    mpp = metadata.get(Key.metadata.microns_per_pixel)
    if mpp is None or not float(mpp) > 0:
        raise SlideFormatError(f"slide {slide!r}: pseudo-spots of {size_um:g} µm need its pixel size "
                               "(uns['spatial'][slide]['metadata']['microns_per_pixel']; mpp= when reading it)")
    mpp = float(mpp)
    xy_um = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64) * mpp
    col = np.floor((xy_um[:, 0] - float(origin_um[0])) / size_um).astype(np.int64)
    row = np.floor((xy_um[:, 1] - float(origin_um[1])) / size_um).astype(np.int64)
    counts = adata.layers[Key.layers.counts] if Key.layers.counts in adata.layers else adata.X
    pooled, block_row, block_col, members = pool_bins(counts, row - row.min(), col - col.min(), factor=1)
    block_row, block_col = block_row + row.min(), block_col + col.min()
    n_units = np.bincount(members, minlength=pooled.shape[0])
    keep = n_units >= int(min_units)
    centre_um = np.stack([float(origin_um[0]) + (block_col[keep] + 0.5) * size_um,
                          float(origin_um[1]) + (block_row[keep] + 0.5) * size_um], 1)
    obs = pd.DataFrame({Key.obs.array_row: block_row[keep], Key.obs.array_col: block_col[keep],
                        Key.obs.n_units: n_units[keep]},
                       index=[f"ps_{r}_{c}" for r, c in zip(block_row[keep], block_col[keep])])
    out = AnnData(X=sp.csr_matrix(pooled[keep], dtype=np.float32), obs=obs, var=adata.var.copy())
    out.obsm[Key.obsm.spatial] = centre_um / mpp
    scalefactors = dict(entry.get(Key.uns.scalefactors, {}))
    scalefactors[Key.scalefactor.spot_diameter] = size_um / mpp
    metadata.update({Key.metadata.unit_shape: "square", Key.metadata.pool_um: size_um,
                     Key.metadata.bin_size_um: size_um, Key.metadata.bin_size_px: size_um / mpp})
    out.uns[Key.uns.spatial] = {slide: {**entry, Key.uns.scalefactors: scalefactors, Key.uns.metadata: metadata}}
    from .slide_id import set_slide_id

    return set_slide_id(out, slide)
