"""Graph smoothing of predicted expression over the query slide's spot graph."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["smooth_on_graph"]


def smooth_on_graph(pred: np.ndarray, adjacency, alpha: float = 0.5, steps: int = 1) -> np.ndarray:
    r"""Blend each spot's prediction with the mean of its neighbours', ``steps`` times.

    .. math::
        \mathbf{P}^{(t+1)} = (1-\alpha)\,\mathbf{P}^{(t)} + \alpha\,\mathbf{D}^{-1}\mathbf{A}\,\mathbf{P}^{(t)}

    with :math:`\mathbf{A}` the adjacency without self loops and :math:`\mathbf{D}` its degree; a spot
    without neighbours keeps its value. Expression varies smoothly over tissue regions while per-spot
    retrieval errors are independent, so averaging over neighbours removes noise (a low-pass filter on
    the graph). The mean over neighbours of non-negative values is non-negative.

    Parameters
    ----------
    pred
        (n_spots, n_genes) predictions of one slide.
    adjacency
        (n_spots, n_spots) sparse or dense adjacency of the same slide (e.g. ``obsp['spatial_connectivities']``).
    alpha
        Weight of the neighbours, in [0, 1]; 0 returns ``pred`` unchanged.
    steps
        Number of diffusion steps t ≥ 0.

    Returns
    -------
    (n_spots, n_genes) float32 array.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    if steps < 0:
        raise ValueError(f"smoothing steps must be ≥ 0, got {steps}")
    pred = np.asarray(pred, dtype=np.float32)
    adj = sp.csr_matrix(adjacency, dtype=np.float32)
    if adj.shape != (pred.shape[0], pred.shape[0]):
        raise ValueError(f"adjacency of shape {adj.shape} does not match {pred.shape[0]} spots")
    if alpha == 0.0 or steps == 0:
        return pred.copy()
    adj.setdiag(0)
    adj.eliminate_zeros()
    adj.data[:] = 1.0
    degree = np.asarray(adj.sum(axis=1)).ravel()
    alone = degree == 0
    walk = sp.diags(1.0 / np.where(alone, 1.0, degree)) @ adj
    out = pred
    for _ in range(steps):
        mean = walk @ out
        mean[alone] = out[alone]
        out = (1.0 - alpha) * out + alpha * mean
    return np.asarray(out, dtype=np.float32)
