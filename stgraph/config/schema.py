"""Typed configuration objects.

A config is a tree of dataclasses. YAML files (``configs/*.yaml``) are validated into it by
:func:`stgraph.config.load_config`; unknown keys and invalid choices fail with the list of valid ones.
Every optional module (graph, DGI on either branch, HSIC, PCA, Harmony, augmentation) has an ``enabled``
switch or a ``null``/``0`` value, so an ablation is one dotted override, e.g. ``model.hsic.enabled=false``.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

__all__ = [
    "GraphConfig",
    "DataConfig",
    "ImageEncoderConfig",
    "SpotEncoderConfig",
    "DGIConfig",
    "HSICConfig",
    "RidgeConfig",
    "SpotGraphConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "InferenceConfig",
    "TrustConfig",
    "Config",
    "CHOICES",
    "REGISTRY_OPTIONS",
    "COMPONENT_OPTIONS",
    "registry_of",
    "choices",
]

Freeze = Literal["none", "all", "all_but_last_stage"]
SpotInput = Literal["expression", "pca"]
Optimizer = Literal["adam", "adamw"]
Batching = Literal["spot", "slide"]
Precision = Literal["32", "bf16", "fp16"]
ReferenceBranch = Literal["spot", "image"]
Branch = Literal["spot", "image"]

#: Options whose valid values are the names in a registry: config path → (module, registry attribute).
#: Registries are imported by name when asked, so this module imports no component package.
REGISTRY_OPTIONS: dict[str, tuple[str, str]] = {
    "model.kind": ("stgraph.models.factory", "MODELS"),
    "model.image_encoder.name": ("stgraph.models.image_encoders", "IMAGE_ENCODERS"),
    "model.spot_encoder.name": ("stgraph.models.spot_encoders", "SPOT_ENCODERS"),
    "loss.alignment": ("stgraph.losses", "LOSSES"),
    "inference.similarity": ("stgraph.retrieval.knn", "SIMILARITIES"),
    "inference.aggregation": ("stgraph.retrieval.impute", "AGGREGATIONS"),
    "inference.distance": ("stgraph.retrieval.impute", "WEIGHT_DISTANCES"),
    "inference.backend": ("stgraph.retrieval.knn", "KNN_BACKENDS"),
}

#: Registry-chosen components that take their own settings: the name's config path → its options' path.
#: The options are checked at load time against the chosen entry's signature.
COMPONENT_OPTIONS: dict[str, str] = {
    "model.image_encoder.name": "model.image_encoder.options",
    "model.spot_encoder.name": "model.spot_encoder.options",
    "loss.alignment": "loss.options",
    "inference.backend": "inference.backend_options",
    "inference.similarity": "inference.similarity_options",
    "inference.aggregation": "inference.aggregation_options",
}


def registry_of(path: str):
    """The :class:`~stgraph.registry.Registry` behind the option at dotted ``path``."""
    import importlib

    module, attr = REGISTRY_OPTIONS[path]
    return getattr(importlib.import_module(module), attr)


def _literal_choices(annotation) -> tuple | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _literal_choices(arg)
            if found:
                return found
    return None


def _closed_choices() -> dict[str, tuple[str, ...]]:
    """``{dotted path: values}`` of every ``Literal``-typed field of :class:`Config` (the closed sets)."""
    import dataclasses

    out = {}

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            ann = hints[f.name]
            if dataclasses.is_dataclass(ann):
                walk(ann, f"{prefix}{f.name}.")
            elif _literal_choices(ann):
                out[f"{prefix}{f.name}"] = _literal_choices(ann)

    walk(Config, "")
    return out


def choices(path: str) -> tuple[str, ...] | None:
    """Valid values of the option at dotted ``path`` (``None`` when it is free-form).

    Closed sets are the ``Literal`` types of the schema (:data:`CHOICES`); registry-backed options are read
    from the registry when asked, so a name registered at run time (a test's toy loss, a user's plugin) is
    valid without editing this file.
    """
    if path in CHOICES:
        return CHOICES[path]
    if path in REGISTRY_OPTIONS:
        return tuple(registry_of(path).names())
    return None


@dataclass
class GraphConfig:
    """Spot graph built per slide: ``A_ij = 1`` iff ``‖p_i − p_j‖ < R``.

    ``R`` is ``radius`` pixels when given, else ``radius_um`` µm (per slide, with its pixel size: a cell graph
    reaching the same tissue distance on every slide), else ``radius_factor`` × the median nearest-neighbour
    spacing. ``knn`` adds each spot's k nearest neighbours; ``self_loops`` adds ``A_ii = 1``.
    """

    radius: Optional[float] = None
    radius_um: Optional[float] = None
    radius_factor: Optional[float] = 1.5
    knn: Optional[int] = None
    self_loops: bool = False


@dataclass
class DataConfig:
    """Preprocessing and patch extraction.

    ``genes``: ``hvg_union`` (top ``n_top_hvg`` HVGs per training slide, union), ``shared`` (all genes shared
    by the training slides), or a path to a gene list (``.npy`` or text, one gene per line).
    ``n_top_expressed``: also keep the genes with the ``n_top_expressed`` highest mean log1p(normalised)
    expression over the training spots (0: none); HVG selection drops the most expressed genes.
    ``include_genes``: genes the model must predict whatever the selection (markers you will plot): a list of
    names or a gene-list file; one that no training slide measures is skipped with a warning naming it.
    ``n_top_expressed`` and ``include_genes`` extend a selection method; a gene-list file in ``genes`` is
    used exactly as given (put markers in the file).
    ``patch_um``: patch side in µm (needs the slides' pixel size); ``None``: ``patch_size`` pixels.
    ``cache_dir``: patch and feature cache; ``auto`` (default) is the user cache dir (``$STGRAPH_CACHE_DIR``,
    ``$XDG_CACHE_HOME/stgraph`` or ``~/.cache/stgraph``), ``null`` turns caching off, else a folder.
    ``region_patches``: fine-tuning reads each batch's patches from the slide image by region (TIFF tiles)
    instead of cutting every patch of a slide into memory first (cohorts that do not fit in memory).
    """

    genes: str = "hvg_union"
    n_top_hvg: int = 1000
    n_top_expressed: int = 0
    include_genes: Any = None
    harmony: bool = False
    harmony_pcs: int = 50
    patch_size: int = 224
    patch_um: Optional[float] = None
    graph: GraphConfig = field(default_factory=GraphConfig)
    cache_dir: Optional[str] = "auto"
    region_patches: bool = False


@dataclass
class ImageEncoderConfig:
    """timm backbone with pooled features (``num_classes=0``).

    ``weights``: local checkpoint file for offline use (timm ``pretrained_cfg_overlay=dict(file=...)``);
    when ``pretrained`` and no file is given, timm downloads from the hub.
    ``freeze``: ``none`` (all trained), ``all`` (frozen), ``all_but_last_stage``.
    ``cache_features``: with ``freeze: all``, run the backbone once per slide and cache its features,
    so training only updates the heads.
    ``cache_stage_input``: with ``freeze: all_but_last_stage``, run the frozen stages once per slide and
    cache their output, so each training step only runs the trainable last stage (augmentation becomes the
    same flips/rotations of the cached feature maps); ResNet, EfficientNet/MobileNet and ViT backbones.
    ``context_scale``: also encode a crop ``context_scale`` × larger around each spot (resized to the
    patch size) and concatenate its features, ``[f ‖ f_ctx]`` (multi-scale view; needs cached features).
    ``architecture``: the timm architecture of a hub-id ``backbone`` (``hf-hub:org/name``), needed to load
    its ``weights`` from a local file; ``model_kwargs``: extra ``timm.create_model`` arguments.
    ``neighbour_context``: concatenate the mean feature of each spot's graph neighbours,
    ``[f ‖ mean_{j∈N(i)} f_j]`` (TRIPLEX's neighbour view, parameter-free; needs cached features).
    ``name``: the image encoder's registry entry (``IMAGE_ENCODERS``; ``timm`` builds the backbone above);
    ``options``: its own settings, keyword arguments checked against its signature at load time.
    """

    name: str = "timm"
    options: dict = field(default_factory=dict)
    backbone: str = "resnet50"
    pretrained: bool = True
    weights: Optional[str] = None
    freeze: Freeze = "none"
    cache_features: bool = False
    cache_stage_input: bool = False
    input_size: int = 224
    context_scale: Optional[float] = None
    neighbour_context: bool = False
    architecture: Optional[str] = None
    model_kwargs: dict = field(default_factory=dict)


@dataclass
class SpotEncoderConfig:
    """Spot (expression) encoder before the projection head: ``SPOT_ENCODERS[name](in_dim, **options)``.

    ``identity`` (BLEEP), ``mlp`` (``options: {hidden_dims: [...], dropout}``), ``transformer`` (mclSTExp:
    learnable x/y embeddings + ``depth`` self-attention blocks over the spots of a batch; options
    ``max_coord, depth, heads, dim_head, mlp_dim, dropout``), or a plugin's. ``stgraph components`` lists
    each one's options. The flat keys of earlier configs (``model.spot_encoder.heads``) still load: they
    are moved into ``options`` when the encoder takes them and dropped otherwise (see
    :data:`stgraph.config.load.LEGACY_SPOT_ENCODER_KEYS`).
    """

    name: str = "identity"
    options: dict = field(default_factory=dict)


@dataclass
class DGIConfig:
    """Deep Graph Infomax encoder over the slide's spot graph (one GCN layer + PReLU).

    ``weight`` multiplies its loss in the total; ``pretrain_epochs`` trains it alone first.
    """

    enabled: bool = False
    hidden_dim: int = 256
    weight: float = 1.0
    pretrain_epochs: int = 0


@dataclass
class HSICConfig:
    """nHSIC bottleneck per branch: ``nHSIC(X_in, Z) − β·nHSIC(Z, P)``, Gaussian kernel width ``sigma``."""

    enabled: bool = False
    weight: float = 1.0
    beta: float = 25.0
    sigma: float = 10.0
    branches: list[Branch] = field(default_factory=lambda: ["spot", "image"])


@dataclass
class RidgeConfig:
    """Closed-form ridge (``model.kind: ridge``, and the base of ``spot_graph``): standardise →
    PCA(``n_components``) → ridge(``alpha``), on targets centred per training slide when ``center_targets``;
    reduced to the top ``gene_rank`` gene programs of the training targets (0: full rank). ``alpha_grid`` /
    ``gene_rank_grid``: candidates chosen among by LOSO over the training slides at fit time (empty: the
    fixed values)."""

    alpha: float = 3e4
    n_components: int = 256
    center_targets: bool = True
    gene_rank: int = 0
    alpha_grid: list = field(default_factory=list)
    gene_rank_grid: list = field(default_factory=list)


SpotGraphBase = Literal["ridge", "none"]
Neighbours = Literal["attention", "mean", "none"]


@dataclass
class SpotGraphConfig:
    """Learned spatial regressor (``model.kind: spot_graph``, :mod:`stgraph.models.spot_graph`): its base is
    the ridge of ``model.ridge`` (PCA width, λ, gene rank and their nested grids, centring: one section for
    both kinds); on top, an ensemble of ``members`` networks (``hidden`` wide, neighbour view
    ``attention``/``mean``/``none``, low-rank head of ``rank``; 0 = full) trained for ``epochs`` on the
    standardised residual of the ``base`` (``ridge``, or ``none``: learn the targets from zero) (MSE +
    ``pearson_weight`` × Pearson loss), features augmented by ``feature_noise`` / ``feature_dropout``.
    ``select_epochs``: candidate epoch counts chosen among by LOSO over the training slides (empty: use
    ``epochs``). With a reduced gene rank the whole prediction (base + learned residual) is projected onto
    the ridge's gene programs."""

    base: SpotGraphBase = "ridge"
    hidden: int = 256
    rank: int = 64
    members: int = 5
    dropout: float = 0.3
    neighbours: Neighbours = "attention"
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-2
    feature_noise: float = 0.1
    feature_dropout: float = 0.1
    pearson_weight: float = 0.0
    select_epochs: list = field(default_factory=list)


@dataclass
class ModelConfig:
    """The model: ``kind`` picks the class from ``MODELS`` (``contrastive``, ``ridge``, ``spot_graph``, a
    plugin's; each declares what it needs and does, :class:`stgraph.models.ModelSpec`);
    ``name`` is a free label of the method (stored with predictions).

    contrastive: image: backbone → [DGI] → ProjHead(→ ``embed_dim``); spot: expression or its PCA
    (``spot_input``, ``pca_components``) → spot encoder → [DGI] → ProjHead(→ ``embed_dim``).
    """

    kind: str = "contrastive"
    name: str = "bleep"
    embed_dim: int = 256
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    image_dgi: DGIConfig = field(default_factory=DGIConfig)
    image_head_dropout: float = 0.1
    spot_input: SpotInput = "expression"
    pca_components: int = 256
    spot_encoder: SpotEncoderConfig = field(default_factory=SpotEncoderConfig)
    spot_dgi: DGIConfig = field(default_factory=DGIConfig)
    spot_head_dropout: float = 0.1
    hsic: HSICConfig = field(default_factory=HSICConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    spot_graph: SpotGraphConfig = field(default_factory=SpotGraphConfig)


@dataclass
class LossConfig:
    """Alignment loss between the two projected branches (``clip``, ``bleep``, ``heclip``, a plugin's):
    ``LOSSES[alignment](temperature=temperature, **options)`` (``temperature`` only when the loss takes it),
    e.g. ``options: {detach_targets: true}`` for ``bleep``."""

    alignment: str = "bleep"
    temperature: float = 1.0
    weight: float = 1.0
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation.

    ``batching``: ``spot`` (mini-batches of spots; ``within_slide`` keeps each batch inside one slide, as
    the transformer encoder attends across the spots of a batch) or ``slide`` (one slide's whole graph per
    step; the loss is taken over random subsets of ``batch_size`` of its spots).
    ``val_fraction`` of the training spots (or the whole ``val_slide``) are held out for checkpoint selection.
    ``paired_augment`` shows every patch twice per epoch, each time with its own flip/rotation (HECLIP).
    ``precision``: ``32``, or autocast to ``bf16`` / ``fp16`` (with a gradient scaler) for the forward pass.
    ``num_workers``: processes that cut, resize and augment patch batches (fine-tuning from patches);
    ``pin_memory`` puts their batches in page-locked memory for faster copies to a GPU.
    ``channels_last``: NHWC patch batches and backbone weights when fine-tuning on a GPU.
    ``accumulate``: with slide batching or ``within_slide``, the jobs (one slide's step each) whose mean
    gradient makes one optimisation step in each process; N processes then step on N × ``accumulate``
    jobs, so one process with ``accumulate: N`` takes the steps of N processes.
    """

    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 256
    epochs: int = 150
    batching: Batching = "spot"
    within_slide: bool = False
    val_fraction: float = 0.1
    val_slide: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    augment: bool = True
    paired_augment: bool = False
    color_jitter: float = 0.0
    grad_clip: Optional[float] = None
    precision: Precision = "32"
    num_workers: int = 0
    pin_memory: bool = True
    channels_last: bool = True
    accumulate: int = 1
    progress: bool = True


@dataclass
class InferenceConfig:
    """Reference retrieval: which branch's embeddings form the reference and how neighbours are combined.

    Neighbours are chosen by ``similarity``; distance-weighted aggregations (``inverse_square``,
    ``bleep_weighted``) weight them by ``distance`` between the raw embeddings (mclSTExp's code: L1).
    ``smoothing`` = α > 0 blends each predicted spot with the mean of its graph neighbours,
    ``P ← (1−α)P + α·D⁻¹AP``, ``smoothing_steps`` times (:func:`stgraph.inference.smoothing.smooth_on_graph`).
    ``backend_options``, ``similarity_options``, ``aggregation_options``: each component's own settings
    (e.g. ``backend_options: {index: hnsw}``, ``aggregation_options: {temperature: 0.05}`` for ``softmax``).
    """

    reference: ReferenceBranch = "spot"
    similarity: str = "cosine"
    k: int = 50
    aggregation: str = "mean"
    distance: str = "euclidean"
    backend: str = "auto"
    backend_options: dict = field(default_factory=dict)
    similarity_options: dict = field(default_factory=dict)
    aggregation_options: dict = field(default_factory=dict)
    chunk_size: int = 4096
    smoothing: float = 0.0
    smoothing_steps: int = 1


@dataclass
class TrustConfig:
    """How far to trust a prediction (:mod:`stgraph.trust`), measured by leave-one-slide-out inside the
    training slides and applied to every prediction.

    ``reliability``: build the run's trust record (per-gene expected r, interval calibration, the
    out-of-distribution reference). Models fitted in one call reuse their nested choice's out-of-slide
    predictions (no extra fit); models trained by the Trainer train once more per training slide (K extra
    trainings: ``false`` skips it, and predictions then carry no reliability, intervals or OOD flags).
    ``reliable_r``: a gene is ``reliable`` on a slide when its expected r and its slide-adjusted expected r both
    reach this. ``interval``: the level of the per-spot intervals ``predict`` writes by default (``null``: only
    with ``--interval``). ``ood_k``, ``ood_quantile``: neighbours of the OOD distance, and the quantile of the
    training slides' own out-of-slide distances beyond which a spot is out of distribution;
    ``ood_slide_quantile``: a slide whose median spot lies beyond this quantile is named in a warning.
    """

    reliability: bool = True
    reliable_r: float = 0.3
    interval: Optional[float] = None
    ood_k: int = 10
    ood_quantile: float = 0.975
    ood_slide_quantile: float = 0.9


@dataclass
class Config:
    """A full experiment: data → model → loss → training → inference.

    ``plugins``: modules imported before the config is validated (they register components).
    """

    name: str = "experiment"
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)


#: Valid values of the closed string options (the schema's ``Literal`` fields), checked at load time;
#: pluggable options ask their registry (:data:`REGISTRY_OPTIONS`, :func:`choices`).
CHOICES: dict[str, tuple[str, ...]] = _closed_choices()
