"""Baselines that every contrastive method is shown next to.

- ``untrained_retrieval``: the frozen backbone's raw features, cosine kNN against the training spots' raw
  features, mean of the k profiles (does contrastive training add anything?);
- ``ridge``: frozen features → PCA → ridge regression to expression (as HEST-Benchmark);
- ``mean_profile``: every spot gets the mean training profile (MSE/MAE only; its Pearson is undefined);
- ``kernel_ridge``: an RBF kernel ridge on the features of ``configs/stgraph.yaml`` (patch + 2× context +
  neighbour mean), targets centred per training slide, γ and λ chosen by LOSO inside the training slides:
  the strongest closed-form *non-linear* reference every learned model stands beside.

A baseline is ``fn(train_features, train_expr, query_features, k, **extra) -> (q, G)``. Two optional
attributes ask :func:`~stgraph.evaluation.protocol.baseline_fold` for more: ``views`` (a dict of
``model.image_encoder`` settings, e.g. ``{"context_scale": 2.0, "neighbour_context": True}``: its features are
built with these views instead of the raw patch features) and ``needs_slide_ids`` (it is passed
``train_slide_ids`` (n,), for per-slide centring and nested selection).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..registry import Registry
from ..retrieval.impute import impute

__all__ = ["BASELINES", "untrained_retrieval", "ridge_regression", "mean_profile", "kernel_ridge",
           "STGRAPH_VIEWS"]

#: The views of ``configs/stgraph.yaml``: the spot's patch, a 2× context crop, and their graph-neighbour means.
STGRAPH_VIEWS = {"context_scale": 2.0, "neighbour_context": True}


def untrained_retrieval(train_features: np.ndarray, train_expr: np.ndarray, query_features: np.ndarray,
                        k: int = 50) -> np.ndarray:
    """Mean expression of the k training spots whose raw backbone features are most cosine-similar.

    Shapes: features (n, F), expression (n, G), query (q, F) → (q, G).
    """
    return impute(query_features, train_features, train_expr, k=min(k, len(train_features)),
                  similarity="cosine", aggregation="mean")


def ridge_regression(train_features: np.ndarray, train_expr: np.ndarray, query_features: np.ndarray,
                     n_components: int = 256, alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0)) -> np.ndarray:
    """Standardise features, PCA to ``n_components``, RidgeCV (alpha chosen by efficient LOO) → (q, G)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_comp = int(min(n_components, train_features.shape[0] - 1, train_features.shape[1]))
    model = make_pipeline(StandardScaler(), PCA(n_components=n_comp, random_state=0),
                          RidgeCV(alphas=list(alphas)))
    model.fit(train_features, train_expr)
    return model.predict(query_features).astype(np.float32)


def mean_profile(train_expr: np.ndarray, n_query: int) -> np.ndarray:
    """The mean training profile repeated for every query spot (constant per gene)."""
    return np.repeat(train_expr.mean(0, keepdims=True), n_query, axis=0).astype(np.float32)


def _standardise_pca(train: np.ndarray, query: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardise with the training mean/sd, project on the training PCA axes (as the ridge head does)."""
    mu, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    xs, qs = (train - mu) / sd, (query - mu) / sd
    q = int(min(n_components, len(train) - 1, train.shape[1]))
    # PCA through the (n, n) Gram matrix: n ≈ 1,000 spots ≪ F ≈ 5,000 features, several times cheaper than
    # an SVD of the (n, F) matrix. Scores U_q √S_q; query scores x_q Xᵀ U_q / √S_q.
    evals, evecs = np.linalg.eigh(xs @ xs.T)
    top = np.argsort(evals)[::-1][:q]
    root = np.sqrt(np.maximum(evals[top], 1e-12))
    return evecs[:, top] * root, (qs @ xs.T) @ (evecs[:, top] / root)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def kernel_ridge(train_features: np.ndarray, train_expr: np.ndarray, query_features: np.ndarray,
                 train_slide_ids: Sequence, gammas: Sequence[float] = (0.03, 0.1, 0.3, 1.0),
                 lambdas: Sequence[float] = (0.3, 1.0, 3.0, 10.0, 30.0), n_components: int = 256,
                 return_choice: bool = False):
    r"""RBF kernel ridge on standardised PCA features, targets centred per training slide; (γ, λ) by LOSO
    over the training slides (nested: the query never takes part in the choice).

    .. math::
        k(z, z') = \exp\!\big(-\gamma\, \lVert z - z' \rVert^2 / m\big), \qquad
        \hat{Y}_q = K_{qn} (K_{nn} + \lambda I)^{-1} (\tilde{Y} - \bar{\tilde{Y}}) + \bar{Y}

    with :math:`z` the first ``n_components`` PCA scores of the standardised features, :math:`m` the median
    squared distance between training points (so γ is relative to the data's scale), :math:`\tilde{Y}` the
    targets centred per slide and :math:`\bar{Y}` the mean training profile. Each candidate pair is scored by
    the mean per-gene Pearson r on each held-out training slide (averaged over slides); with fewer than
    two training slides the middle of each grid is used. One eigendecomposition per (inner fold, γ) serves
    every λ; the standardisation and PCA are fitted once on all training features (no expression), so the
    inner folds share them.

    Shapes: features (n, F), expression (n, G), query (q, F), slide ids (n,) → (q, G) (and, with
    ``return_choice``, ``{"gamma", "lambda"}``).
    """
    from ..models.ridge import center_per_slide, mean_gene_pearson

    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_expr, dtype=np.float64)
    ids = np.asarray(train_slide_ids)
    if len(ids) != len(x) or len(y) != len(x):
        raise ValueError(f"kernel ridge needs as many slide ids, features and profiles: {len(ids)}, {len(x)}, {len(y)}")
    offset = y.mean(0)
    yc = center_per_slide(y, ids)
    slides = list(dict.fromkeys(ids.tolist()))
    gammas, lambdas = [float(g) for g in gammas], [float(v) for v in lambdas]
    # One standardisation + PCA of the training features serves the inner folds too: it sees their
    # features but never their expression, and never the query.
    z, zq = _standardise_pca(x, np.asarray(query_features, dtype=np.float64), n_components)
    d = _sq_dists(z, z)
    if len(slides) >= 2:
        scores = np.zeros((len(gammas), len(lambdas)))
        for held in slides:
            inner, out = ids != held, ids == held
            d_in, d_out = d[np.ix_(inner, inner)], d[np.ix_(out, inner)]
            med = float(np.median(d_in[np.triu_indices(int(inner.sum()), 1)])) or 1.0
            y_in = yc[inner] - yc[inner].mean(0)
            for gi, g in enumerate(gammas):
                evals, evecs = np.linalg.eigh(np.exp(-g * d_in / med))
                proj = evecs.T @ y_in
                k_out = np.exp(-g * d_out / med) @ evecs
                for li, lam in enumerate(lambdas):
                    scores[gi, li] += mean_gene_pearson(k_out @ (proj / (evals + lam)[:, None]), yc[out], empty=np.nan)
        gi, li = np.unravel_index(np.nanargmax(scores), scores.shape)
    else:
        gi, li = len(gammas) // 2, len(lambdas) // 2
    g, lam = gammas[gi], lambdas[li]
    med = float(np.median(d[np.triu_indices(len(z), 1)])) if len(z) > 1 else 1.0
    med = med or 1.0
    y_bar = yc.mean(0)
    alpha = np.linalg.solve(np.exp(-g * d / med) + lam * np.eye(len(z)), yc - y_bar)
    pred = (np.exp(-g * _sq_dists(zq, z) / med) @ alpha + y_bar + offset).astype(np.float32)
    return (pred, {"gamma": g, "lambda": lam}) if return_choice else pred


#: name → ``fn(train_features, train_expr, query_features, k) -> (q, G)`` predictions; a new baseline is one
#: decorated function (``@BASELINES.register("name")``).
BASELINES: Registry = Registry("baseline")


@BASELINES.register("untrained_retrieval")
def _untrained_retrieval(train_features, train_expr, query_features, k: int = 50) -> np.ndarray:
    return untrained_retrieval(train_features, train_expr, query_features, k=k)


@BASELINES.register("ridge")
def _ridge(train_features, train_expr, query_features, k: int = 50) -> np.ndarray:
    return ridge_regression(train_features, train_expr, query_features)


@BASELINES.register("mean_profile")
def _mean_profile(train_features, train_expr, query_features, k: int = 50) -> np.ndarray:
    return mean_profile(train_expr, len(query_features))


@BASELINES.register("kernel_ridge")
def _kernel_ridge(train_features, train_expr, query_features, k: int = 50, train_slide_ids=None) -> np.ndarray:
    if train_slide_ids is None:
        train_slide_ids = np.zeros(len(train_features))
    return kernel_ridge(train_features, train_expr, query_features, train_slide_ids)


_kernel_ridge.views = STGRAPH_VIEWS
_kernel_ridge.needs_slide_ids = True
