"""A cohort that does not fit in memory: preprocessing fitted by streaming over slides, and each slide's
frozen features and expression written once to the feature store, to be read back by batch of rows.

What streams and what does not:

- gene selection: ``shared`` from the ``.h5ad`` headers; ``hvg_union`` one slide at a time (each slide's top
  genes over the cohort's shared genes, as :func:`~stgraph.data.pp.select_hvg_union` does in memory); a
  gene list file as it is;
- PCA of the spot input: :class:`sklearn.decomposition.IncrementalPCA`, one slide (at least
  ``n_components`` rows) per ``partial_fit``: an approximation of the in-memory PCA;
- Harmony corrects all slides jointly and is refused here (``data.harmony=false``);
- a slide's features are computed from its patches (read by region from a TIFF/whole-slide image, see
  :mod:`stgraph.data.patches`), one slide in memory at a time; context views (``context_scale``,
  ``neighbour_context``) are not streamed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp

from ..data import pp
from ..data.feature_store import FeatureStore, StoredArray, StoredCSR
from ..data.transforms import grid_coordinates, hash_array
from ..errors import StgraphError
from ..keys import Key
from .resolution import slide_mpp
from .prepare import Preprocessor, _cached_features, feature_key, feature_store

__all__ = ["StoredSlide", "CohortError", "fit_cohort_preprocessor", "prepare_cohort"]


class CohortError(StgraphError, ValueError):
    """A setting that a streamed cohort cannot honour (named, before any compute)."""


@dataclass
class StoredSlide:
    """One slide of a cohort as handles into the feature store (nothing of size n × F in memory).

    ``features`` (n, F) and ``spot_input`` ((n, P) dense PCA, or the (n, G) CSR expression) read rows on
    demand; ``expr`` (n, G) CSR log-normalised expression over the model's genes; ``coords`` (n, 2) int64
    grid coordinates ``[x, y]``.
    """

    slide_id: str
    n_spots: int
    features: StoredArray
    spot_input: "StoredArray | StoredCSR"
    expr: StoredCSR
    coords: np.ndarray
    microns_per_pixel: Optional[float] = None


def _check_streamable(config) -> None:
    if config.data.harmony:
        raise CohortError("data.harmony=true corrects all training slides jointly in memory; a streamed cohort "
                          "needs data.harmony=false")
    cfg = config.model.image_encoder
    if not cfg.cache_features:
        raise CohortError("a streamed cohort trains on stored frozen features: set "
                          "model.image_encoder.cache_features=true (fine-tuning reads patches by region instead)")
    if cfg.context_scale is not None or cfg.neighbour_context:
        raise CohortError("context views (model.image_encoder.context_scale / neighbour_context) are not streamed")


def _genes(config, cohort) -> list[str]:
    spec = config.data.genes
    if spec not in ("shared", "hvg_union"):
        return pp.load_gene_list(spec)
    shared = None
    for sid in cohort.ids:
        names = cohort.var_names(sid)
        shared = list(names) if shared is None else [g for g in shared if g in set(names)]
    if not shared:
        raise CohortError("the cohort's slides share no gene")
    if spec == "shared":
        return shared
    chosen: set[str] = set()
    for sid in cohort.ids:  # one slide in memory at a time
        ad = cohort[sid]
        chosen.update(pp.select_hvg_union([ad[:, shared]], n_top=config.data.n_top_hvg))
    return [g for g in shared if g in chosen]


def fit_cohort_preprocessor(config, cohort) -> Preprocessor:
    """:func:`~stgraph.preprocess.prepare.fit_preprocessor` for a :class:`~stgraph.data.LazySlideCollection`,
    streaming over its slides (see the module docstring)."""
    _check_streamable(config)
    if not len(cohort):
        raise CohortError("no training slides given")
    genes = _genes(config, cohort)
    prep = Preprocessor(genes=list(genes), info={"n_genes": len(genes), "gene_selection": config.data.genes,
                                                 "train_slides": cohort.ids, "harmony": False,
                                                 "streamed": True})
    if config.model.spot_input == "pca":
        from sklearn.decomposition import IncrementalPCA

        n_total = sum(cohort.spot_counts().values())
        n_comp = min(config.model.pca_components, n_total - 1, len(genes))
        ipca = IncrementalPCA(n_components=n_comp)
        pending = []
        for sid in cohort.ids:
            pending.append(prep.expression(cohort[sid]))
            if sum(len(p) for p in pending) >= n_comp:
                ipca.partial_fit(np.concatenate(pending))
                pending = []
        if pending and sum(len(p) for p in pending) >= n_comp:
            ipca.partial_fit(np.concatenate(pending))
        prep.pca_mean = ipca.mean_.astype(np.float32)
        prep.pca_components = ipca.components_.astype(np.float32)
        prep.info["pca_components"] = int(n_comp)
        prep.info["pca_explained_variance"] = float(ipca.explained_variance_ratio_.sum())
    return prep


def _genes_digest(prep: Preprocessor) -> str:
    h = hashlib.sha256("\n".join(prep.genes).encode())
    if prep.pca_components is not None:
        h.update(hash_array(prep.pca_components).encode())
    return h.hexdigest()[:16]


def prepare_cohort(config, cohort, preprocessor: Preprocessor, image_encoder, device: str = "cpu",
                   progress: bool = False, store: Optional[FeatureStore] = None,
                   feature_dtype=None, chunk_rows: int = 256) -> list[StoredSlide]:
    """Write each slide's frozen features, expression and spot input to the feature store (slides whose
    entries are there under the same keys are only opened to compute the keys) and return handles.

    Parameters
    ----------
    store
        Default: ``<data.cache_dir>/features`` (:func:`~stgraph.preprocess.prepare.feature_store`).
    feature_dtype
        Stored feature dtype (e.g. ``np.float16``, half the disk and read volume); default float32.
    chunk_rows
        Rows per HDF5 chunk of the features (the unit of reading and of block shuffling).
    """
    _check_streamable(config)
    store = store if store is not None else feature_store(config)
    if store is None:
        raise CohortError("a streamed cohort needs a feature store: data.cache_dir must not be null")
    out = []
    for sid in cohort.ids:
        adata = cohort.read(sid)  # one slide at a time; not kept
        fkey = feature_key(adata, config, encoder=image_encoder)
        if feature_dtype is not None:
            fkey["dtype"] = np.dtype(feature_dtype).name
        if store.has(sid, fkey):
            features = store.open(sid, fkey)
        else:
            feats = _cached_features(image_encoder, adata, config, sid, device, progress,
                                     patches=lambda: _patches(adata, config))
            features = store.write(sid, fkey, feats, dtype=feature_dtype, chunk_rows=chunk_rows)
            del feats
        ekey = {"kind": "expression", "genes": _genes_digest(preprocessor), "n_obs": int(adata.n_obs),
                "counts": _counts_signature(adata), "units": pp.EXPRESSION_UNITS}
        expr = store.open(sid, ekey) if store.has(sid, ekey) else \
            store.write(sid, ekey, sp.csr_matrix(preprocessor.expression(adata)))
        if preprocessor.pca_components is None:
            spot_input = expr
        else:
            pkey = {**ekey, "kind": "spot_input"}
            spot_input = store.open(sid, pkey) if store.has(sid, pkey) else \
                store.write(sid, pkey, preprocessor.spot_input(expr.read_all().toarray()), chunk_rows=chunk_rows)
        out.append(StoredSlide(sid, int(adata.n_obs), features, spot_input, expr,
                               grid_coordinates(adata).astype(np.int64), slide_mpp(adata)))
        del adata
    return out


def _patches(adata, config) -> np.ndarray:
    from ..data.patches import extract_patches

    return extract_patches(adata, size=config.data.patch_size, patch_um=config.data.patch_um)


def _counts_signature(adata) -> str:
    """A hash of a slide's counts, genes and spot centres (the expression entry's key)."""
    x = sp.csr_matrix(adata.layers[Key.layers.counts] if Key.layers.counts in adata.layers else adata.X)
    genes = hashlib.sha256("\0".join(map(str, adata.var_names)).encode()).hexdigest()[:16]
    return "-".join([hash_array(x.data), hash_array(x.indices), hash_array(x.indptr), genes,
                     hash_array(np.asarray(adata.obsm[Key.obsm.spatial], np.float64))])
