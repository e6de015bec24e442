r"""Out-of-distribution flags: how unlike the training spots a query spot looks, to the model.

A spot's distance is the mean distance to its :math:`k` nearest training spots in the model's image embedding
space (the ridge's PCA scores of the standardised features; the contrastive image branch's joint-space
embedding), each dimension divided by its sd over the training spots, shrunk towards the mean sd
(:data:`WHITEN_SHRINK`; whitened: a shift along a direction the training slides hardly vary in counts as much as
one along their main axes, which is what a stain change or a colour inversion is). Calibration, on the
training slides only: each training slide's spots against the *other* training slides' spots give the
distances of spots from a slide the reference does not hold, :math:`D_{\text{cal}}`. A query spot's
``ood_score`` is its distance over the median of :math:`D_{\text{cal}}` (about 1 for a typical unseen
in-distribution spot), and it is in distribution when its distance is at most the ``quantile`` (0.975) of
:math:`D_{\text{cal}}`. A slide whose *median* spot lies beyond the ``slide_quantile`` (0.9) of
:math:`D_{\text{cal}}` (another tissue, another stain, a blank or non-tissue image) is named in a warning: a
slide-level test, as the training slides' own median lies below it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["knn_distance", "calibrate_ood", "ood_scores", "slide_out_of_distribution", "MAX_REFERENCE"]

#: At most this many training spots are kept as the OOD reference (a deterministic sample of larger ones).
MAX_REFERENCE = 20000
#: Whitening shrinkage: each dimension is divided by sqrt(var + WHITEN_SHRINK × mean var).
WHITEN_SHRINK = 0.2


def knn_distance(query: np.ndarray, reference: np.ndarray, k: int = 10, chunk: int = 2048) -> np.ndarray:
    """Mean Euclidean distance of each query row to its ``k`` nearest reference rows: (Q, d), (R, d) → (Q,)."""
    import torch

    q = torch.as_tensor(np.asarray(query, np.float32))
    r = torch.as_tensor(np.asarray(reference, np.float32))
    k = max(1, min(int(k), len(r)))
    out = []
    for start in range(0, len(q), chunk):
        d = torch.cdist(q[start:start + chunk], r)
        out.append(d.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def calibrate_ood(embeddings: np.ndarray, slide_ids, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(reference (≤ MAX_REFERENCE, d) whitened, calibration distances (sorted), scale (d,))`` from the
    training spots' embeddings: each slide's spots against the other slides' (one slide alone: its spots
    against each other, the nearest neighbour excluded); ``scale`` is the per-dimension sd that whitens."""
    emb = np.asarray(embeddings, np.float32)
    var = emb.astype(np.float64).var(0)
    # Shrunk towards the mean variance: a direction the training slides hardly vary in (the last components of a
    # PCA fitted on them) is not blown up by the noise a new slide has there.
    scale = np.sqrt(var + WHITEN_SHRINK * var.mean()).astype(np.float32)
    scale = np.where(scale > 0, scale, np.inf).astype(np.float32)
    emb = emb / scale
    ids = np.asarray(slide_ids)
    slides = list(dict.fromkeys(ids.tolist()))
    if len(slides) >= 2:
        cal = np.concatenate([knn_distance(emb[ids == s], emb[ids != s], k) for s in slides])
    else:
        cal = knn_distance(emb, emb, k + 1) * (k + 1) / max(k, 1)
    step = max(1, len(emb) // MAX_REFERENCE)
    return emb[::step].copy(), np.sort(cal).astype(np.float32), scale


def ood_scores(query: np.ndarray, reference: np.ndarray, calibration: np.ndarray, k: int = 10,
               quantile: float = 0.975, scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ood_score (Q,), in_distribution (Q,) bool)`` of query embeddings (module docstring); ``scale``
    whitens the query as :func:`calibrate_ood` whitened the reference."""
    q = np.asarray(query, np.float32) if scale is None else np.asarray(query, np.float32) / scale
    d = knn_distance(q, reference, k)
    median = float(np.median(calibration)) or 1.0
    bound = float(np.quantile(calibration, quantile))
    return (d / median).astype(np.float32), d <= bound


def slide_out_of_distribution(ood_score: np.ndarray, calibration: np.ndarray, slide_quantile: float = 0.9) -> bool:
    """Whether a slide as a whole is out of distribution: its median spot's score beyond the
    ``slide_quantile`` of the training slides' own out-of-slide distances (module docstring)."""
    if not len(ood_score):
        return False
    median = float(np.median(calibration)) or 1.0
    return float(np.median(ood_score)) > float(np.quantile(calibration, slide_quantile)) / median
