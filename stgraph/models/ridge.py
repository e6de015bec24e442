"""Closed-form ridge regression from (context) image features to expression: stgraph's own method.

Not a contrastive model: no joint space and no retrieval. Its point is to be the strongest simple
predictor on frozen features, and the bar the contrastive methods must clear.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["RidgeRegressor", "center_per_slide"]


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

    Parameters
    ----------
    alpha
        Ridge penalty λ (on the PCA scores, whose variances sum to about F). Large values (1e4–1e5 for
        F ≈ 5,000) suit the few hundred spots of a section.
    n_components
        PCA width q (capped at min(N − 1, F)).
    center_targets
        Centre targets per training slide before fitting (see :func:`center_per_slide`).

    Shapes
    ------
    ``fit(features (N, F), targets (N, G), slide_ids (N,))``; ``forward(features (B, F)) → (B, G)``.
    """

    predicts_expression = True

    def __init__(self, alpha: float = 3e4, n_components: int = 256, center_targets: bool = True):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"ridge alpha must be > 0, got {alpha}")
        if n_components < 1:
            raise ValueError(f"ridge n_components must be ≥ 1, got {n_components}")
        self.alpha, self.n_components, self.center_targets = float(alpha), int(n_components), bool(center_targets)
        for name in ("x_mean", "x_scale", "components", "weight", "y_mean"):
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
        w = np.linalg.solve(z.T @ z + self.alpha * np.eye(q), z.T @ (y_fit - y_bar))
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)
        self.x_mean, self.x_scale, self.components = as_t(mu), as_t(sd), as_t(comps)
        self.weight, self.y_mean = as_t(w), as_t(y_bar)
        return self

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """PCA scores of the standardised features, :math:`Z` above: (B, F) → (B, q)."""
        if not self.is_fitted:
            raise RuntimeError("RidgeRegressor is not fitted; call fit() first")
        if features.shape[-1] != self.x_mean.numel():
            raise ValueError(f"ridge was fitted on {self.x_mean.numel()} features, got {features.shape[-1]}")
        return ((features - self.x_mean) / self.x_scale) @ self.components

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.scores(features) @ self.weight + self.y_mean).clamp_min(0.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers start empty: take the saved shapes before the default copy.
        for name in ("x_mean", "x_scale", "components", "weight", "y_mean"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, n_components={self.n_components}, center_targets={self.center_targets}"


class _Embedding:
    """What ``encode_image`` returns: ``emb`` (N, q), the ridge's PCA scores of the features."""

    def __init__(self, emb: torch.Tensor):
        self.emb = emb


class RidgeSTModel(nn.Module):
    """stgraph's regression method: cached (context) backbone features → :class:`RidgeRegressor` → expression.

    It predicts expression directly (``predicts_expression``), so prediction needs no kNN; its reference
    stores the PCA scores of the training features (``encode_image``) for inspection and retrieval.

    Parameters
    ----------
    config
        :class:`~stgraph.config.Config` (``model.ridge``, ``model.image_encoder``).
    image_encoder
        The frozen backbone whose cached features feed the ridge.
    """

    predicts_expression = True
    uses_graph = False

    def __init__(self, config, image_encoder):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        r = config.model.ridge
        self.head = RidgeRegressor(alpha=r.alpha, n_components=r.n_components, center_targets=r.center_targets)
        # A parameter so that `next(model.parameters())` finds the device even when the backbone is tiny.
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def fit(self, slides) -> "RidgeSTModel":
        """Fit on prepared training slides (``features`` (n, F) and ``expr`` (n, G) each)."""
        for s in slides:
            if s.features is None or s.expr is None:
                raise ValueError(f"ridge needs cached features and expression for slide {s.slide_id!r}")
        x = np.concatenate([s.features for s in slides])
        y = np.concatenate([s.expr for s in slides])
        ids = np.concatenate([[s.slide_id] * s.n_spots for s in slides])
        self.head.fit(x, y, ids)
        return self

    def _features(self, batch: dict) -> torch.Tensor:
        return batch["features"] if "features" in batch else self.image_encoder(batch["patch"])

    def encode_image(self, batch: dict) -> _Embedding:
        return _Embedding(self.head.scores(self._features(batch)))

    @torch.no_grad()
    def predict_features(self, features) -> np.ndarray:
        """(N, F) features → (N, G) predicted log1p(normalised) expression, ≥ 0."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=self.head.weight.device)
        return self.head(x).cpu().numpy()
