"""From slides on disk to model-ready arrays: the fitted preprocessing and one ``PreparedSlide`` per slide.

Everything that is *fitted* (gene selection, Harmony, PCA) is fitted on the training slides only and stored
in a :class:`Preprocessor`, which is saved in the run folder and applied unchanged to query slides, so a
held-out slide never leaks into its own preprocessing.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from ..data import pp
from ..data.patches import extract_patches
from ..data.slide_id import slide_id_of
from ..data.transforms import grid_coordinates, hash_array, normalize_batch, patch_batch  # noqa: F401
from ..graph import spatial_graph, to_edge_index
from ..utils import resolve_cache_dir
from ..keys import Key

__all__ = [
    "PreparedSlide",
    "Preprocessor",
    "fit_preprocessor",
    "preprocessing_key",
    "uncorrected_expression",
    "prepare_slide",
    "grid_coordinates",
    "compute_image_features",
    "patch_batch",
    "normalize_batch",
]


@dataclass
class PreparedSlide:
    """One slide as arrays (rows = spots, in the slide's obs order): the one "slide as arrays" container of
    training, reference building and prediction (:meth:`to_tensors` for the training device).

    Attributes
    ----------
    expr
        (n, G) float32 log-normalised expression over the model's genes (training target and reference
        profiles); ``None`` for a query slide without expression.
    spot_input
        (n, P) float32 spot-branch input (``expr`` or its PCA); ``None`` without expression.
    coords
        (n, 2) int64 integer grid coordinates ``[x, y]`` (``array_col``, ``array_row`` when present).
    xy
        (n, 2) float pixel coordinates.
    patches
        (n, S, S, 3) uint8, a :class:`~stgraph.data.patches.RegionPatches` that reads them by region
        (``data.region_patches``), or ``None`` once features are cached.
    features
        (n, F) float32 frozen-backbone features, or ``None``.
    edge_index
        (2, E) long spot graph, or ``None`` when no module uses a graph.
    """

    slide_id: str
    barcodes: list
    coords: np.ndarray
    xy: np.ndarray
    expr: Optional[np.ndarray] = None
    spot_input: Optional[np.ndarray] = None
    patches: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    stage_input: Optional[np.ndarray] = None
    edge_index: Optional[torch.Tensor] = None

    @property
    def n_spots(self) -> int:
        return len(self.barcodes)

    def to_tensors(self, device) -> "PreparedSlide":
        """The same slide with its arrays as tensors for training: ``spot_input``/``features`` float32 and
        ``coords`` long on ``device``, ``patches`` uint8 on the CPU (moved per batch), ``edge_index`` on
        ``device``; ``xy`` and ``expr`` stay numpy."""
        def on(x, dtype):
            return None if x is None else torch.as_tensor(x, dtype=dtype, device=device)

        return dataclasses.replace(
            self,
            spot_input=on(self.spot_input, torch.float32),
            coords=on(self.coords, torch.long),
            features=on(self.features, torch.float32),
            stage_input=on(self.stage_input, torch.float32),
            # RegionPatches (data.region_patches) stay lazy: each batch reads its own regions.
            patches=torch.from_numpy(np.ascontiguousarray(self.patches)) if isinstance(self.patches, np.ndarray)
            else self.patches,
            edge_index=None if self.edge_index is None else self.edge_index.to(device),
        )


@dataclass
class Preprocessor:
    """Preprocessing fitted on the training slides.

    ``genes``: the model's gene list (order = columns of ``expr``); ``pca_mean`` (G,) and
    ``pca_components`` (P, G) project expression to the spot-branch input when the config asks for PCA:
    ``spot_input = (expr − mean) @ componentsᵀ``.
    """

    genes: list
    pca_mean: Optional[np.ndarray] = None
    pca_components: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)

    @property
    def spot_in_dim(self) -> int:
        return len(self.genes) if self.pca_components is None else int(self.pca_components.shape[0])

    def expression(self, adata: AnnData) -> np.ndarray:
        """(n, G) log-normalised expression of ``adata`` over ``genes`` (missing genes → 0, with a warning)."""
        aligned = pp.align_genes(pp.log_normalised(adata), self.genes)
        x = aligned.X
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)

    def spot_input(self, expr: np.ndarray) -> np.ndarray:
        if self.pca_components is None:
            return expr.astype(np.float32)
        return ((expr - self.pca_mean) @ self.pca_components.T).astype(np.float32)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        (folder / "genes.txt").write_text("\n".join(self.genes) + "\n")
        arrays = {}
        if self.pca_components is not None:
            arrays = dict(pca_mean=self.pca_mean, pca_components=self.pca_components)
        np.savez(folder / "preprocess.npz", **arrays)
        (folder / "preprocess.json").write_text(json.dumps(self.info, indent=2, default=str))

    @classmethod
    def load(cls, folder: Path) -> "Preprocessor":
        folder = Path(folder)
        genes_file = folder / "genes.txt"
        if not genes_file.is_file():
            raise FileNotFoundError(f"model folder {folder} has no genes.txt (incomplete run folder)")
        genes = [g for g in genes_file.read_text().splitlines() if g]
        mean = comps = None
        npz = folder / "preprocess.npz"
        if npz.is_file():
            with np.load(npz) as data:
                if "pca_components" in data:
                    mean, comps = data["pca_mean"], data["pca_components"]
        info_file = folder / "preprocess.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        return cls(genes=genes, pca_mean=mean, pca_components=comps, info=info)


def _select_genes(config, train_slides: Sequence[AnnData]) -> list[str]:
    """A selection method (``hvg_union``, ``shared``) ∪ the ``data.n_top_expressed`` most expressed genes ∪
    ``data.include_genes``, chosen on the training slides only: the selection in the first slide's order, then
    the named genes it lacked. A gene-list file in ``data.genes`` is taken as it is: a published gene set
    (e.g. the 785 HER2+ genes) must stay the set every method is scored on, so nothing is added to it."""
    d = config.data
    slides = list(train_slides)
    spec = d.genes
    if spec == "hvg_union":
        genes = pp.select_hvg_union(slides, n_top=d.n_top_hvg)
    elif spec == "shared":
        genes = pp.shared_genes(slides)
    else:
        genes = pp.load_gene_list(spec)
        _check_gene_list_share(genes, spec, slides)
        return genes
    if d.n_top_expressed:
        chosen = set(genes) | set(pp.select_highly_expressed(slides, d.n_top_expressed))
        # Every selection above is a subset of the shared genes, so the first slide's order holds them all.
        genes = [g for g in slides[0].var_names if g in chosen]
    return genes + included_genes(config, slides, exclude=genes)


def included_genes(config, train_slides: Sequence[AnnData], exclude: Sequence[str] = ()) -> list[str]:
    """``data.include_genes`` (a list or a gene-list file) that every training slide measures, minus
    ``exclude``. A named gene that no training slide measures, or only some do (its training target would be a
    fake zero elsewhere), is skipped with a warning naming it."""
    spec = config.data.include_genes
    if spec is None:
        return []
    names = pp.load_gene_list(spec) if isinstance(spec, str) else [str(g) for g in spec]
    sets = [set(map(str, ad.var_names)) for ad in train_slides]
    everywhere, anywhere = set.intersection(*sets), set.union(*sets)
    for what, genes in (("measured by no training slide", [g for g in names if g not in anywhere]),
                        ("measured by only some training slides",
                         [g for g in names if g in anywhere and g not in everywhere])):
        if genes:
            warnings.warn(f"data.include_genes: {len(genes)} gene(s) {what}, skipped: "
                          f"{', '.join(genes[:20])}{' ...' if len(genes) > 20 else ''}", UserWarning, stacklevel=3)
    skip = set(exclude)
    out: list[str] = []
    for g in names:
        if g in everywhere and g not in skip and g not in out:
            out.append(g)
    return out


#: The least share of a ``data.genes`` file that every training slide must measure.
MIN_GENE_LIST_SHARE = 0.5


def _check_gene_list_share(genes: Sequence[str], spec: str, train_slides: Sequence[AnnData]) -> None:
    """Refuse a gene list most of whose genes a training slide lacks (they would be predicted as zeros)."""
    from ..data.errors import SlideFormatError
    from ..data.slide_id import slide_id_of

    for i, ad in enumerate(train_slides):
        have = set(map(str, ad.var_names))
        missing = [g for g in genes if g not in have]
        if len(genes) - len(missing) < MIN_GENE_LIST_SHARE * len(genes):
            raise SlideFormatError(
                f"data.genes {spec}: training slide {slide_id_of(ad, default=f'slide{i}')} measures only "
                f"{len(genes) - len(missing)} of its {len(genes)} genes (< {MIN_GENE_LIST_SHARE:.0%}; missing e.g. "
                f"{missing[:5]}); is it the right gene list (names, not numbers)?")


def uncorrected_expression(config, preprocessor: "Preprocessor", expr: dict[str, np.ndarray],
                           train_slides: Sequence[AnnData]) -> list[np.ndarray]:
    """The training slides' uncorrected log1p(normalised) expression over the preprocessor's genes, one
    (n_i, G) array per slide: :func:`fit_preprocessor`'s ``expr`` itself when Harmony did not correct it,
    recomputed from the slides when it did (the reference and the baselines stay in the scored space)."""
    if not (config.data.harmony and len(train_slides) > 1):
        return list(expr.values())
    return [preprocessor.expression(ad) for ad in train_slides]


def preprocessing_key(config) -> str:
    """The config fields :func:`fit_preprocessor` reads (gene selection, Harmony, PCA), as one string: two
    configs with the same key fit the same preprocessing on the same slides."""
    import json

    d = config.data
    fields = {"genes": d.genes, "n_top_hvg": d.n_top_hvg, "n_top_expressed": d.n_top_expressed,
              "include_genes": d.include_genes, "harmony": d.harmony, "harmony_pcs": d.harmony_pcs,
              "spot_input": config.model.spot_input, "seed": config.train.seed}
    if config.model.spot_input == "pca":
        fields["pca_components"] = config.model.pca_components
    return json.dumps(fields, sort_keys=True)


def check_training_slides(train_slides: Sequence[AnnData]) -> None:
    """Refuse, naming it, a training slide without spots, genes or any count (it would end in NaN targets
    and a numerical library's paragraph much later)."""
    from ..data.errors import SlideFormatError

    for i, ad in enumerate(train_slides):
        counts = ad.layers.get(Key.layers.counts, ad.X) if ad.n_vars else None
        total = 0.0 if counts is None else float(counts.sum() if sp.issparse(counts) else np.asarray(counts).sum())
        if ad.n_vars == 0 or ad.n_obs == 0 or not total > 0:
            raise SlideFormatError(f"training slide {slide_id_of(ad, default=f'slide{i}')!r} has no expression "
                                   f"({ad.n_obs} spots × {ad.n_vars} genes, {total:g} counts in all): every "
                                   "training slide needs its counts")


def fit_preprocessor(config, train_slides: Sequence[AnnData]) -> tuple[Preprocessor, dict[str, np.ndarray]]:
    """Fit gene selection, Harmony and PCA on the training slides.

    Returns
    -------
    preprocessor
        To apply to any other slide.
    expr
        slide_id → (n, G) training targets (Harmony-corrected when ``data.harmony``).
    """
    if not train_slides:
        raise ValueError("no training slides given")
    check_training_slides(train_slides)
    normed = [pp.log_normalised(ad) for ad in train_slides]
    genes = _select_genes(config, normed)
    if not genes:
        raise ValueError("gene selection returned no genes")
    aligned = [pp.align_genes(ad, genes) for ad in normed]
    expr = {
        slide_id_of(ad, default=f"slide{i}"): np.asarray(
            ad.X.toarray() if sp.issparse(ad.X) else ad.X, dtype=np.float32
        )
        for i, ad in enumerate(aligned)
    }
    info = {"n_genes": len(genes), "gene_selection": config.data.genes,
            "n_top_expressed": config.data.n_top_expressed, "include_genes": config.data.include_genes,
            "train_slides": list(expr), "harmony": bool(config.data.harmony)}
    if config.data.harmony and len(aligned) > 1:
        corrected = pp.harmony_correct(aligned, n_pcs=min(config.data.harmony_pcs, len(genes) - 1))
        expr = {sid: np.asarray(c, dtype=np.float32) for sid, c in zip(expr, corrected)}
    prep = Preprocessor(genes=list(genes), info=info)
    if config.model.spot_input == "pca":
        stacked = np.concatenate(list(expr.values()))
        n_comp = min(config.model.pca_components, stacked.shape[0] - 1, stacked.shape[1])
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_comp, random_state=config.train.seed).fit(stacked)
        prep.pca_mean = pca.mean_.astype(np.float32)
        prep.pca_components = pca.components_.astype(np.float32)
        info["pca_components"] = int(n_comp)
        info["pca_explained_variance"] = float(pca.explained_variance_ratio_.sum())
    return prep, expr


@torch.no_grad()
def compute_image_features(encoder, patches: np.ndarray, batch_size: int = 64, device: str = "cpu",
                           input_size: Optional[int] = None, progress: bool = False,
                           desc: str = "features") -> np.ndarray:
    """Run a (frozen) image encoder over uint8 patches.

    Parameters
    ----------
    encoder
        Module mapping (B, 3, H, W) ImageNet-normalised → (B, F).
    patches
        (n, S, S, 3) uint8.
    input_size
        Resize patches to this side before the encoder (``None``: as they are).

    Returns
    -------
    (n, F) float32 features.
    """
    from tqdm.auto import tqdm

    was_training = getattr(encoder, "training", False)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()
    out = []
    with torch.no_grad(), tqdm(total=len(patches), desc=desc, unit="patch", disable=not progress,
                               leave=False) as bar:
        for start in range(0, len(patches), batch_size):
            x = normalize_batch(patch_batch(patches[start : start + batch_size], input_size, device))
            out.append(encoder(x).float().cpu())
            bar.update(len(x))
    if isinstance(encoder, torch.nn.Module):
        encoder.train(was_training)
    if not out:
        return np.zeros((0, getattr(encoder, "num_features", 0)), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def needs_graph(config, query: bool = False) -> bool:
    """Whether a slide needs its spot graph: the model reads it (its class's
    :meth:`~stgraph.models.STModel.needs_graph`: DGI, a graph spot encoder, spot_graph's neighbour view), the
    features' neighbour context, or smoothing of predictions (query slides)."""
    from ..models.factory import model_class

    return bool(model_class(config).needs_graph(config, query) or config.model.image_encoder.neighbour_context
                or (query and config.inference.smoothing > 0))


def _context_features(adata: AnnData, features: np.ndarray, config, encoder, slide_id: str, device: str,
                      progress: bool, edge_index) -> np.ndarray:
    """Append the configured context views to (n, F) features: a larger crop, then the neighbour mean."""
    cfg = config.model.image_encoder
    if cfg.context_scale is not None:
        # Same centre, context_scale × the side (in µm when data.patch_um is set, else in pixels), resized
        # to data.patch_size, so the backbone sees the spot's surroundings at a coarser resolution.
        patch_um = config.data.patch_um
        side = cfg.context_scale * (patch_um if patch_um is not None else config.data.patch_size)
        mpp = None if patch_um is not None else 1.0
        ctx = lambda: extract_patches(adata, size=config.data.patch_size, patch_um=side,  # noqa: E731
                                      microns_per_pixel=mpp, cache_dir=_cache_subdir(config, "patches"),
                                      show_progress=progress)
        features = np.concatenate([features, _cached_features(encoder, adata, config, slide_id, device, progress,
                                                              ctx, patch_um=side, microns_per_pixel=mpp)], 1)
    if cfg.neighbour_context:
        from ..nn.context import neighbour_mean

        x = torch.as_tensor(features)
        features = np.concatenate([features, neighbour_mean(x, edge_index).numpy()], 1)
    return features.astype(np.float32, copy=False)


def _cache_subdir(config, name: str) -> Optional[str]:
    """``<data.cache_dir>/<name>`` (``"auto"``: the user cache dir), or ``None`` when caching is off."""
    root = resolve_cache_dir(config.data.cache_dir)
    return None if root is None else str(root / name)


#: Settings of ``model.image_encoder`` that change what the backbone computes, beyond those the feature key
#: names itself (``backbone``, the weights' identity from ``pretrained``/``weights``, ``input_size``, the patch
#: geometry): hashed into the key, so features of other settings never share a cache file.
ENCODER_SETTINGS = ("name", "options", "model_kwargs", "architecture")
#: Settings that do not change a stored feature, and why (tests check that every other one changes the key).
NOT_IN_FEATURE_KEY = {
    "freeze": "cached features are those of the fully frozen backbone (cache_features needs freeze=all)",
    "cache_features": "whether features are cached, not what they are",
    "cache_stage_input": "chooses the stored kind (the frozen stages' output), a key field of its own",
    "neighbour_context": "the neighbour mean is computed from stored features after they are read",
    "context_scale": "the spot's own view is unchanged; the context view's key holds its side (context_scale × "
                     "the patch) as patch_um",
}


def _encoder_settings_key(cfg) -> list[str]:
    """A short hash of :data:`ENCODER_SETTINGS` when they differ from plain timm with no extra arguments
    (empty for the default, so the default key is the same as before these settings existed)."""
    if cfg.name == "timm" and not cfg.options and not cfg.model_kwargs and cfg.architecture is None:
        return []
    import hashlib
    import json

    text = json.dumps([getattr(cfg, k) for k in ENCODER_SETTINGS], sort_keys=True, default=repr)
    return [hashlib.sha1(text.encode()).hexdigest()[:10]]


def feature_store(config):
    """The :class:`~stgraph.data.feature_store.FeatureStore` at ``<data.cache_dir>/features``, or ``None``
    when caching is off."""
    from ..data.feature_store import FeatureStore

    root = _cache_subdir(config, "features")
    return None if root is None else FeatureStore(root)


def feature_key(adata: AnnData, config, stage: bool = False, patch_um: Optional[float] = None,
                microns_per_pixel: Optional[float] = None, encoder=None) -> dict:
    """The feature store's key of one slide's frozen features: backbone, weights identity (the hash of the
    weights file the ``encoder`` loaded, wherever it was found, else of ``model.image_encoder.weights``, else
    the hub default or ``random``), backbone input size, and :func:`~stgraph.data.patches.patch_key` (patch
    side and µm, coordinates' hash, image identity). ``patch_um``: default ``data.patch_um``; ``stage``: the
    frozen stages' output."""
    from ..data.feature_store import weights_identity
    from ..data.patches import patch_key

    cfg = config.model.image_encoder
    patch_um = config.data.patch_um if patch_um is None else patch_um
    source = getattr(encoder, "weights_source", None)
    weights = (weights_identity(source.file) if source is not None and source.file is not None
               else "imagenet" if source is not None else weights_identity(cfg.weights, cfg.pretrained))
    encoder_key = _encoder_settings_key(cfg)
    return {"kind": "trunk" if stage else "features", "backbone": cfg.backbone,
            "weights": weights, "input_size": cfg.input_size,
            "patch_um": patch_um,
            "patches": patch_key(adata, config.data.patch_size, patch_um, microns_per_pixel),
            **({"encoder": encoder_key[0]} if encoder_key else {})}


def _cached_features(encoder, adata: AnnData, config, slide_id: str, device: str, progress: bool,
                     patches=None, stage: bool = False, patch_um: Optional[float] = None,
                     microns_per_pixel: Optional[float] = None):
    """Backbone features (n, F) of ``adata``'s spots, from the feature store when it holds them (no patch
    is cut then), else computed from ``patches`` (a callable returning the (n, S, S, 3) uint8 patches) and
    stored. With ``stage``, the frozen stages' output (n, ...) stored as float16 (half the disk and memory;
    the trainable last stage reads it back in float32)."""
    store = feature_store(config)
    key = None
    if store is not None:
        key = feature_key(adata, config, stage, patch_um, microns_per_pixel, encoder)
        if store.has(slide_id, key):
            from ..data.feature_store import StoreDamagedError

            try:
                feats = store.open(slide_id, key).read_all()
            except StoreDamagedError as err:
                logging.getLogger("stgraph").warning("%s: recomputing it", err)
                feats = None
            if feats is not None and feats.shape[0] == adata.n_obs:
                logging.getLogger(__name__).debug("feature store hit: %s", store.path(slide_id, key))
                return feats
    pts = patches() if callable(patches) else patches
    fn = encoder.forward_trunk if stage else encoder
    start = time.perf_counter()
    feats = compute_image_features(fn, pts, device=device, input_size=config.model.image_encoder.input_size,
                                   progress=progress, desc=f"{'stage input' if stage else 'features'} {slide_id}")
    logging.getLogger(__name__).debug("%s %s: %d patches in %.1f s", "stage input" if stage else "features",
                                      slide_id, len(pts), time.perf_counter() - start)
    if stage:
        feats = feats.astype(np.float16)
    if store is not None:
        store.write(slide_id, key, feats)
    return feats


def prepare_slide(adata: AnnData, config, preprocessor: Optional[Preprocessor] = None,
                  expr: Optional[np.ndarray] = None, image_encoder=None, device: str = "cpu",
                  progress: bool = False, with_graph: Optional[bool] = None) -> PreparedSlide:
    """Turn one slide into a :class:`PreparedSlide`.

    Parameters
    ----------
    adata
        A slide in the stgraph convention.
    preprocessor
        Fitted preprocessing; when given and ``expr`` is not, the slide's own expression (if it has any) is
        aligned to its genes.
    expr
        Precomputed (n, G) targets (e.g. Harmony-corrected training expression).
    image_encoder
        Used to cache features when ``model.image_encoder.cache_features`` is set.
    with_graph
        Build the spot graph (default: when any DGI module is enabled).
    """
    slide_id = slide_id_of(adata, default="slide")
    if adata.n_obs == 0:
        raise ValueError(f"slide {slide_id!r} has no spots")
    from ..data.image import check_spots_on_image

    check_spots_on_image(adata, f"slide {slide_id!r}")  # before any patch is cut: every path, API included
    if expr is None and preprocessor is not None and adata.n_vars > 0:
        expr = preprocessor.expression(adata)
    spot_input = preprocessor.spot_input(expr) if (expr is not None and preprocessor is not None) else None

    cut: dict = {}

    def get_patches() -> np.ndarray:  # cut (or read from the patch cache) only when some step needs them
        if "p" not in cut:
            cut["p"] = extract_patches(adata, size=config.data.patch_size, patch_um=config.data.patch_um,
                                       cache_dir=_cache_subdir(config, "patches"), show_progress=progress)
        return cut["p"]

    features = stage_input = None
    frozen = image_encoder is not None and (config.model.image_encoder.cache_features
                                            or config.model.image_encoder.cache_stage_input)
    if image_encoder is not None and config.model.image_encoder.cache_features:
        features = _cached_features(image_encoder, adata, config, slide_id, device, progress, get_patches)
    if image_encoder is not None and config.model.image_encoder.cache_stage_input:
        stage_input = _cached_features(image_encoder, adata, config, slide_id, device, progress, get_patches,
                                       stage=True)
    if frozen:
        patches = None
    elif config.data.region_patches:
        from ..data.patches import RegionPatches

        patches = RegionPatches(adata, size=config.data.patch_size, patch_um=config.data.patch_um)
    else:
        patches = get_patches()

    if with_graph is None:
        with_graph = needs_graph(config)
    edge_index = None
    if with_graph:
        g = config.data.graph
        # copy=True: preparing a slide leaves the caller's AnnData (a user's query slide) as it was.
        adj = spatial_graph(adata, radius=g.radius, radius_factor=g.radius_factor, knn=g.knn,
                            self_loops=g.self_loops, copy=True, radius_um=g.radius_um)
        edge_index = to_edge_index(adj)
    if features is not None:
        features = _context_features(adata, features, config, image_encoder, slide_id, device, progress,
                                     edge_index)

    return PreparedSlide(
        slide_id=slide_id,
        barcodes=list(map(str, adata.obs_names)),
        coords=grid_coordinates(adata),
        xy=np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float32),
        expr=expr,
        spot_input=spot_input,
        patches=patches,
        features=features,
        stage_input=stage_input,
        edge_index=edge_index,
    )
