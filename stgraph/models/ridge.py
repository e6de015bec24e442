"""Closed-form ridge regression from (context) image features to expression: stgraph's own method.

Not a contrastive model: no joint space and no retrieval. Its point is to be the strongest simple
predictor on frozen features, and the bar the contrastive methods must clear.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .base import MODELS, RETRIEVAL_OPTIONS, TRAINER_OPTIONS, TWO_BRANCH_OPTIONS, ModelSpec, STModel

__all__ = ["RidgeRegressor", "RidgeSTModel", "center_per_slide", "gene_programs", "mean_gene_pearson",
           "select_ridge", "as_buffer_of", "check_ridge_config"]


def as_buffer_of(module: nn.Module, array, anchor: str) -> torch.Tensor:
    """``array`` as a tensor on the device of ``module``'s buffer (or parameter) ``anchor``, in its floating
    dtype: what a model fitted in numpy stores, so that a model moved to a device (or dtype) before it is
    fitted stays there, and inputs of a fitted one follow it."""
    ref = getattr(module, anchor)
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    return torch.as_tensor(np.asarray(array), dtype=dtype).to(ref.device)


def center_per_slide(y: np.ndarray, slide_ids: Sequence) -> np.ndarray:
    r"""Subtract each slide's own mean profile: :math:`\tilde{y}_{s,i} = y_{s,i} - \frac{1}{n_s}\sum_j y_{s,j}`.

    Per-gene Pearson r is taken within one slide, so differences between the training slides' mean
    profiles (batch, depth, patient) carry no signal for it and only add variance for the learner.
    Shapes: ``y`` (N, G), ``slide_ids`` (N,) → (N, G).
    """
    y = np.asarray(y, dtype=np.float64)
    ids = np.asarray(slide_ids)
    if len(ids) != len(y):
        raise ValueError(f"{len(ids)} slide ids for {len(y)} rows")
    out = np.empty_like(y)
    for s in np.unique(ids):
        rows = ids == s
        out[rows] = y[rows] - y[rows].mean(axis=0, keepdims=True)
    return out


def gene_programs(y_centred: np.ndarray, rank: int) -> np.ndarray:
    r"""The top ``rank`` principal axes of the (centred) training targets: :math:`V_{:r}` with
    :math:`\tilde{Y} - \bar{\tilde{Y}} = U \Sigma V^\top`. Shapes: (N, G) → (G, r) (r ≤ min(N, G)),
    orthonormal columns: co-expressed "programs" of genes.
    """
    yc = np.asarray(y_centred, dtype=np.float64)
    _, _, vt = np.linalg.svd(yc - yc.mean(axis=0), full_matrices=False)
    return vt[: min(int(rank), len(vt))].T


def mean_gene_pearson(pred: np.ndarray, true: np.ndarray, empty: float = 0.0) -> float:
    """The metric every nested choice (λ, rank, epochs, kernel) is scored by: :func:`stgraph.metrics.pearson_per_gene`
    averaged by :func:`stgraph.metrics.mean_pearson` (genes constant in either array left out), the same number
    evaluation reports as ``pcc_acg``; ``empty`` when no gene is usable. Shapes: (n, G), (n, G) → float."""
    from ..metrics.correlation import mean_pearson, pearson_per_gene

    mean = mean_pearson(pearson_per_gene(pred, true))[0]
    return float(empty) if np.isnan(mean) else float(mean)


def select_ridge(z: np.ndarray, y_centred: np.ndarray, slide_ids: Sequence, alphas: Sequence[float],
                 gene_ranks: Sequence[int], y: Optional[np.ndarray] = None) -> tuple[float, int, np.ndarray, np.ndarray]:
    r"""Choose (λ, gene rank) by leave-one-slide-out over the *training* slides (nested: the query never
    takes part). Each candidate is scored by the mean per-gene Pearson r on every held-out training slide,
    averaged over slides; ties go to the larger λ and the smaller rank (the simpler model).

    ``z`` (N, q) are the PCA scores of the standardised features (fitted on all training features: they never
    see expression), ``y_centred`` (N, G) the targets centred per slide. Returns ``(alpha, gene_rank, scores,
    oof)`` with ``scores`` (len(alphas), len(gene_ranks)) and ``oof`` (N, G) the chosen candidate's
    out-of-slide predictions of every training slide, on the scale of ``y`` (the un-centred targets: the held
    slide's prediction plus the mean profile of the slides it was fitted on; ``y_centred`` when ``y`` is not
    given), which the run's trust record is built from (:mod:`stgraph.trust`) without refitting the grid. One
    (q × q) solve per inner fold and λ (one more for the chosen λ), one SVD of the inner targets per inner fold.
    With one candidate and no ``y``, scores are still computed: the same code serves a fixed (λ, rank).
    """
    import logging
    import time

    log = logging.getLogger("stgraph")
    ids = np.asarray(slide_ids)
    slides = list(dict.fromkeys(ids.tolist()))
    alphas, ranks = [float(a) for a in alphas], [int(r) for r in gene_ranks]
    scores = np.zeros((len(alphas), len(ranks)))
    folds = []  # per held-out slide: its rows, the inner gram and cross products, programs, offset
    start = time.perf_counter()
    for i, held in enumerate(slides):
        log.info("choosing ridge λ and gene rank (%d × %d candidates) by leave-one-slide-out: %d/%d, %s held "
                 "out (%.0f s so far)", len(alphas), len(ranks), i + 1, len(slides), held, time.perf_counter() - start)
        inner, out = ids != held, ids == held
        zi, yi = z[inner], y_centred[inner] - y_centred[inner].mean(0)
        v_all = gene_programs(yi, max(ranks)) if any(r > 0 for r in ranks) else None
        gram, cross = zi.T @ zi, zi.T @ yi
        offset = (y[inner] if y is not None else y_centred[inner]).mean(0)
        folds.append((out, gram, cross, v_all, offset))
        for ai, a in enumerate(alphas):
            pred = z[out] @ np.linalg.solve(gram + a * np.eye(len(gram)), cross)
            for ri, r in enumerate(ranks):
                p = pred @ v_all[:, :r] @ v_all[:, :r].T if r > 0 else pred
                scores[ai, ri] += mean_gene_pearson(p, y_centred[out]) / len(slides)
    # Simpler first: larger λ, then smaller rank (0 = full rank counts as the largest).
    order = [(ai, ri) for ai in sorted(range(len(alphas)), key=lambda i: -alphas[i])
             for ri in sorted(range(len(ranks)), key=lambda i: ranks[i] if ranks[i] > 0 else np.inf)]
    ai, ri = max(order, key=lambda k: scores[k])  # max keeps the first (simplest) of equal scores
    alpha, rank = alphas[ai], ranks[ri]
    oof = np.zeros_like(np.asarray(y_centred, dtype=np.float64))
    for out, gram, cross, v_all, offset in folds:  # the chosen candidate's predictions: one solve per fold
        p = z[out] @ np.linalg.solve(gram + alpha * np.eye(len(gram)), cross)
        oof[out] = (p @ v_all[:, :rank] @ v_all[:, :rank].T if rank > 0 else p) + offset
    return alpha, rank, scores, oof


class RidgeRegressor(nn.Module):
    r"""Standardise → PCA → ridge, fitted in closed form; parameters are buffers, so it saves like a model.

    Fit on training features :math:`X` (N, F) and targets :math:`Y` (N, G):

    .. math::
        Z = \big((X - \mu_X) / s_X\big)\,V_{:q}, \qquad
        W = (Z^\top Z + \lambda I_q)^{-1} Z^\top (\tilde{Y} - \bar{\tilde{Y}}), \qquad
        \hat{Y} = Z W + \bar{\tilde{Y}} + \bar{Y}_{\text{offset}}

    with :math:`V_{:q}` the first ``q = n_components`` principal axes of the standardised training features,
    :math:`\tilde{Y}` the targets (centred per training slide when ``center_targets``), and
    :math:`\bar{Y}_{\text{offset}}` the mean training profile that centring removed, added back so that
    predictions stay in the log1p(normalised) space. Predictions are clipped at 0 (expression is non-negative).

    With ``gene_rank`` r > 0 the fit is *reduced-rank*: :math:`W \leftarrow W V_{:r} V_{:r}^\top`, with
    :math:`V_{:r}` (G, r) the top principal axes of the centred training targets (:func:`gene_programs`), so
    every prediction lies in the span of r co-expression programs. Per-gene Pearson is what is scored, and most
    of 785 genes are too noisy to be predicted one by one: borrowing the shared programs is the largest gain
    on HER2+ (ACG 0.126 → 0.148 with (λ, r) chosen by LOSO; README). With ``alphas`` / ``gene_ranks``
    grids and at least two training slides, (λ, r) are chosen by :func:`select_ridge` (LOSO over the
    training slides) and kept in ``chosen``.

    Parameters
    ----------
    alpha
        Ridge penalty λ (on the PCA scores, whose variances sum to about F). Large values (1e4–1e5 for
        F ≈ 5,000) suit the few hundred spots of a section.
    n_components
        PCA width q (capped at min(N − 1, F)).
    center_targets
        Centre targets per training slide before fitting (see :func:`center_per_slide`).
    gene_rank
        Rank r of the output (0: full rank, the plain ridge).
    alphas, gene_ranks
        Candidate grids for the nested choice of λ and r (empty: use ``alpha`` / ``gene_rank``).

    Shapes
    ------
    ``fit(features (N, F), targets (N, G), slide_ids (N,))``; ``forward(features (B, F)) → (B, G)``.
    """

    predicts_expression = True

    _BUFFERS = ("x_mean", "x_scale", "components", "weight", "y_mean", "programs")

    def __init__(self, alpha: float = 3e4, n_components: int = 256, center_targets: bool = True,
                 gene_rank: int = 0, alphas: Sequence[float] = (), gene_ranks: Sequence[int] = ()):
        super().__init__()
        if not alpha > 0 or any(not float(a) > 0 for a in alphas):
            raise ValueError(f"ridge alpha must be > 0, got {alpha} {list(alphas) or ''}".rstrip())
        if n_components < 1:
            raise ValueError(f"ridge n_components must be ≥ 1, got {n_components}")
        if gene_rank < 0 or any(int(r) < 0 for r in gene_ranks):
            raise ValueError(f"ridge gene_rank must be ≥ 0 (0: full rank), got {gene_rank} {list(gene_ranks) or ''}".rstrip())
        self.alpha, self.n_components, self.center_targets = float(alpha), int(n_components), bool(center_targets)
        self.gene_rank = int(gene_rank)
        self.alphas, self.gene_ranks = tuple(float(a) for a in alphas), tuple(int(r) for r in gene_ranks)
        self.chosen: dict = {}
        for name in self._BUFFERS:
            self.register_buffer(name, torch.empty(0))

    @property
    def is_fitted(self) -> bool:
        return self.weight.numel() > 0

    def fit(self, features: np.ndarray, targets: np.ndarray, slide_ids: Optional[Sequence] = None) -> "RidgeRegressor":
        """Fit in closed form (float64); returns ``self``."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(f"ridge needs features (N, F) and targets (N, G), got {x.shape} and {y.shape}")
        if len(x) < 2:
            raise ValueError(f"ridge needs at least 2 training spots, got {len(x)}")
        ids = np.zeros(len(y)) if slide_ids is None else np.asarray(slide_ids)
        offset = y.mean(axis=0)
        y_fit = center_per_slide(y, ids) + offset if self.center_targets else y
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd[sd == 0] = 1.0  # a constant feature carries nothing; keep it at 0 after centring
        xs = (x - mu) / sd
        q = min(self.n_components, len(x) - 1, x.shape[1])
        # PCA axes from the SVD of the standardised features (rows of vt).
        _, _, vt = np.linalg.svd(xs, full_matrices=False)
        comps = vt[:q].T
        z = xs @ comps
        y_bar = y_fit.mean(axis=0)
        alpha, rank = self.alpha, self.gene_rank
        #: Out-of-slide predictions of the training rows (each slide by the ridge fitted on the others, at the
        #: chosen λ and rank; un-centred) when there are two slides or more: the trust record's input.
        self.oof = None
        if len(np.unique(ids)) >= 2:
            grid = bool(self.alphas or self.gene_ranks)
            alpha, rank, _, self.oof = select_ridge(z, y_fit, ids, (self.alphas or (alpha,)) if grid else (alpha,),
                                                    (self.gene_ranks or (rank,)) if grid else (rank,), y=y)
            self.oof = np.maximum(self.oof, 0.0)  # as predictions are written
        self.chosen = {"alpha": alpha, "gene_rank": rank}
        w = np.linalg.solve(z.T @ z + alpha * np.eye(q), z.T @ (y_fit - y_bar))
        programs = gene_programs(y_fit, rank) if rank > 0 else np.zeros((0, 0))
        if rank > 0:
            w = w @ programs @ programs.T  # reduced rank: predictions in the span of the top-r programs
        # On the device and in the dtype the module was moved to, also before it was fitted (.to(device)).
        as_t = lambda a: as_buffer_of(self, a, "weight")  # noqa: E731
        self.x_mean, self.x_scale, self.components = as_t(mu), as_t(sd), as_t(comps)
        self.weight, self.y_mean, self.programs = as_t(w), as_t(y_bar), as_t(programs)
        return self

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """PCA scores of the standardised features, :math:`Z` above: (B, F) → (B, q)."""
        if not self.is_fitted:
            raise RuntimeError("RidgeRegressor is not fitted; call fit() first")
        if features.shape[-1] != self.x_mean.numel():
            raise ValueError(f"ridge was fitted on {self.x_mean.numel()} features, got {features.shape[-1]}")
        features = features.to(device=self.x_mean.device, dtype=self.x_mean.dtype)
        return ((features - self.x_mean) / self.x_scale) @ self.components

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.scores(features) @ self.weight + self.y_mean).clamp_min(0.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers start empty: take the saved shapes before the default copy. Runs saved before gene_rank
        # have no programs buffer: full rank.
        state_dict.setdefault(prefix + "programs", torch.empty(0))
        for name in self._BUFFERS:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        grids = f", alphas={list(self.alphas)}, gene_ranks={list(self.gene_ranks)}" if self.alphas or self.gene_ranks else ""
        return (f"alpha={self.alpha:g}, n_components={self.n_components}, center_targets={self.center_targets}, "
                f"gene_rank={self.gene_rank}{grids}")


class _Embedding:
    """What ``encode_image`` returns: ``emb`` (N, q), the ridge's PCA scores of the features."""

    def __init__(self, emb: torch.Tensor):
        self.emb = emb


def check_ridge_config(config) -> None:
    """Load-time checks of ``model.ridge`` (the ridge kind, and the base of ``spot_graph``)."""
    from ..config import ConfigError

    r = config.model.ridge
    if not r.alpha > 0 or any(not float(a) > 0 for a in r.alpha_grid):
        raise ConfigError(f"model.ridge.alpha / alpha_grid must be penalties > 0, got {r.alpha} / {r.alpha_grid}")
    if r.n_components < 1:
        raise ConfigError(f"model.ridge.n_components must be ≥ 1, got {r.n_components}")
    if r.gene_rank < 0 or any(int(k) < 0 for k in r.gene_rank_grid):
        raise ConfigError(f"model.ridge.gene_rank / gene_rank_grid must be ≥ 0 (0: full rank), got "
                          f"{r.gene_rank} / {r.gene_rank_grid}")


@MODELS.register("ridge")
class RidgeSTModel(STModel):
    """stgraph's method: cached multi-view backbone features → a reduced-rank ridge → expression.

    Cached (context) backbone features → :class:`RidgeRegressor` → expression.

    Fitted in closed form (no epochs, no seed) and predicting expression itself (no kNN); its reference
    stores the PCA scores of the training features (``encode_image``) for inspection.

    Parameters
    ----------
    config
        :class:`~stgraph.config.Config` (``model.ridge``, ``model.image_encoder``).
    image_encoder
        The frozen backbone whose cached features feed the ridge.
    """

    spec = ModelSpec(training="fit", output="expression", cached_features=True, seeded=False,
                     reference=("image",),
                     ignores=RETRIEVAL_OPTIONS + TRAINER_OPTIONS + TWO_BRANCH_OPTIONS + ("model.spot_graph",
                                                                                       "train.seed"),
                     ignores_why="the ridge is fitted in closed form on cached features (no epochs, no seed) "
                                 "and predicts expression without retrieval")

    def __init__(self, config, image_encoder):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.head = self.build_head(config)
        # A parameter so that `next(model.parameters())` finds the device even when the backbone is tiny.
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @classmethod
    def from_config(cls, config, spot_in_dim: int, image_encoder: nn.Module) -> "RidgeSTModel":
        return cls(config, image_encoder)

    @classmethod
    def check_config(cls, config) -> None:
        check_ridge_config(config)

    def build_head(self, config) -> nn.Module:
        """The fitted regressor (``model.ridge``); subclasses build theirs from their own config section."""
        r = config.model.ridge
        return RidgeRegressor(alpha=r.alpha, n_components=r.n_components, center_targets=r.center_targets,
                              gene_rank=r.gene_rank, alphas=r.alpha_grid, gene_ranks=r.gene_rank_grid)

    @property
    def ridge(self) -> RidgeRegressor:
        """The (base) ridge, whose PCA scores are the reference embeddings."""
        return self.head

    def _check_slides(self, slides) -> None:
        for s in slides:
            if s.features is None or s.expr is None:
                raise ValueError(f"{type(self).__name__} needs cached features and expression for slide "
                                 f"{s.slide_id!r}")

    def fit(self, slides) -> "RidgeSTModel":
        """Fit on prepared training slides (``features`` (n, F) and ``expr`` (n, G) each)."""
        self._check_slides(slides)
        x = np.concatenate([s.features for s in slides])
        y = np.concatenate([s.expr for s in slides])
        ids = np.concatenate([[s.slide_id] * s.n_spots for s in slides])
        self.head.fit(x, y, ids)
        return self

    @property
    def choices(self) -> dict:
        """What the fit chose (λ and gene rank; by LOSO when the config gives grids), for ``run.json``."""
        return dict(self.head.chosen)

    def out_of_slide(self):
        """The nested choice's out-of-slide predictions at the chosen (λ, rank): no extra fit."""
        return self.ridge.oof

    @property
    def out_of_slide_method(self) -> str:
        return "the ridge's nested (λ, rank) choice: each training slide predicted by the ridge fitted on the others"

    def _features(self, batch: dict) -> torch.Tensor:
        return batch["features"] if "features" in batch else self.image_encoder(batch["patch"])

    def encode_image(self, batch: dict) -> _Embedding:
        return _Embedding(self.ridge.scores(self._features(batch)))

    @torch.no_grad()
    def predict_features(self, features) -> np.ndarray:
        """(N, F) features → (N, G) predicted log1p(counts per 10,000), ≥ 0."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        return self.head(x).float().cpu().numpy()

    @torch.no_grad()
    def predict_prepared(self, slide) -> np.ndarray:
        """A prepared query slide (its cached features) → (n, G) predicted expression."""
        return self.predict_features(slide.features)
