"""Baselines that every contrastive method is shown next to.

- ``untrained_retrieval``: the frozen backbone's raw features, cosine kNN against the training spots' raw
  features, mean of the k profiles (does contrastive training add anything?);
- ``ridge``: frozen features → PCA → ridge regression to expression (as HEST-Benchmark);
- ``mean_profile``: every spot gets the mean training profile (MSE/MAE only; its Pearson is undefined).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..registry import Registry
from ..retrieval.impute import impute

__all__ = ["BASELINES", "untrained_retrieval", "ridge_regression", "mean_profile"]


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
