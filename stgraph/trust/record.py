"""A run's trust record: what leave-one-slide-out inside the training slides measured, kept as ``trust.npz``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .conformal import INTERVAL_LEVELS, calibrate_intervals, marginal_quantiles
from .ood import calibrate_ood
from .reliability import fold_gene_r

__all__ = ["TrustRecord", "build_trust", "TRUST_FILE"]

#: The record's file in a run folder.
TRUST_FILE = "trust.npz"


@dataclass
class TrustRecord:
    """Per-gene reliability, interval calibration and the out-of-distribution reference of one run.

    Attributes
    ----------
    genes
        The run's genes (columns of every (…, G) array).
    fold_ids
        The training slides, in the order of ``fold_r``'s rows (each held out in turn).
    fold_r
        (K, G) per-gene Pearson r of each held-out training slide's out-of-slide prediction.
    fold_pred_sd
        (G,) mean over the held-out slides of each gene's prediction sd across the slide's spots.
    scale, quantiles
        (G,) and (len(INTERVAL_LEVELS), G): the conformal normalisation and score quantiles
        (:mod:`stgraph.trust.conformal`).
    marginal
        (len(INTERVAL_LEVELS), 2, G): the training values' central intervals (for comparing widths).
    ood_reference, ood_calibration, ood_scale, ood_k
        Training spots' whitened image embeddings (a sample of at most 20,000), the sorted out-of-slide kNN
        distances, the per-dimension scale that whitens, k.
    method
        How the out-of-slide predictions were made (for the record and the docs).
    """

    genes: list
    fold_ids: list
    fold_r: np.ndarray
    fold_pred_sd: np.ndarray
    scale: np.ndarray
    quantiles: np.ndarray
    marginal: np.ndarray
    ood_reference: np.ndarray
    ood_calibration: np.ndarray
    ood_scale: np.ndarray = None
    ood_k: int = 10
    method: str = ""
    info: dict = field(default_factory=dict)

    @property
    def expected_r(self) -> np.ndarray:
        """(G,) the mean over held-out training slides of each gene's r (NaN where no fold defines it)."""
        import warnings

        with warnings.catch_warnings():  # a gene constant on every held-out slide: NaN, said by the NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.fold_r, axis=0)

    @property
    def expected_r_sd(self) -> np.ndarray:
        """(G,) the spread (sd) of those r over the held-out training slides."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanstd(self.fold_r, axis=0)

    def select_genes(self, genes: Sequence[str]) -> "TrustRecord":
        """The record restricted to ``genes`` (a subset of :attr:`genes`, in the order given)."""
        import dataclasses

        index = {g: i for i, g in enumerate(self.genes)}
        idx = np.asarray([index[str(g)] for g in genes], dtype=np.int64)
        return dataclasses.replace(self, genes=[self.genes[i] for i in idx], fold_r=self.fold_r[:, idx],
                                   fold_pred_sd=self.fold_pred_sd[idx], scale=np.asarray(self.scale)[idx],
                                   quantiles=np.asarray(self.quantiles)[:, idx],
                                   marginal=np.asarray(self.marginal)[..., idx])

    def summary(self, threshold: float) -> dict:
        """What ``run.json`` says of the record: folds, genes above ``threshold``, the median expected r."""
        r = self.expected_r
        return {"folds": list(self.fold_ids), "method": self.method, "reliable_r": float(threshold),
                "n_reliable": int(np.sum(r >= threshold)), "median_expected_r": float(np.nanmedian(r)),
                "ood_k": int(self.ood_k)}

    def save(self, path) -> Path:
        from ..utils.io import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, genes=np.asarray(self.genes, dtype=str), fold_ids=np.asarray(self.fold_ids, dtype=str),
                     fold_r=self.fold_r.astype(np.float32), fold_pred_sd=self.fold_pred_sd.astype(np.float32),
                     scale=self.scale, quantiles=self.quantiles, levels=INTERVAL_LEVELS, marginal=self.marginal,
                     ood_reference=self.ood_reference.astype(np.float32),
                     ood_calibration=self.ood_calibration.astype(np.float32), ood_k=np.int64(self.ood_k),
                     ood_scale=np.asarray(self.ood_scale, np.float32),
                     meta=np.asarray(json.dumps({"method": self.method, "info": self.info})))
        return path

    @classmethod
    def load(cls, path) -> "TrustRecord":
        with np.load(path, allow_pickle=False) as f:
            if not np.allclose(f["levels"], INTERVAL_LEVELS):
                raise ValueError(f"{path}: interval levels of another layout")
            meta = json.loads(str(f["meta"]))
            return cls(genes=[str(g) for g in f["genes"]], fold_ids=[str(s) for s in f["fold_ids"]],
                       fold_r=f["fold_r"].astype(np.float64), fold_pred_sd=f["fold_pred_sd"].astype(np.float64),
                       scale=f["scale"], quantiles=f["quantiles"], marginal=f["marginal"],
                       ood_reference=f["ood_reference"], ood_calibration=f["ood_calibration"],
                       ood_scale=f["ood_scale"], ood_k=int(f["ood_k"]), method=meta.get("method", ""), info=meta.get("info", {}))


def build_trust(genes: Sequence[str], y: np.ndarray, oof: np.ndarray, slide_ids: Sequence, embeddings: np.ndarray,
                method: str, ood_k: int = 10, info: Optional[dict] = None) -> TrustRecord:
    """A :class:`TrustRecord` from the training slides' values ``y`` (N, G, un-centred, in the predicted
    units), their out-of-slide predictions ``oof`` (N, G; each slide predicted by a model fitted without it),
    ``slide_ids`` (N,) and the image ``embeddings`` (N, d) the model gives them."""
    y = np.asarray(y, np.float64)
    oof = np.maximum(np.asarray(oof, np.float64), 0.0)
    ids = np.asarray(slide_ids).astype(str)
    folds = list(dict.fromkeys(ids.tolist()))
    if len(folds) < 2:
        raise ValueError("trust needs at least two training slides: each is predicted by a model fitted on the others")
    fold_r = np.stack([fold_gene_r(oof[ids == s], y[ids == s]) for s in folds])
    fold_sd = np.mean([oof[ids == s].std(0) for s in folds], axis=0)
    scale, quantiles = calibrate_intervals(y, oof)
    reference, calibration, whiten = calibrate_ood(embeddings, ids, ood_k)
    return TrustRecord(genes=list(map(str, genes)), fold_ids=folds, fold_r=fold_r, fold_pred_sd=fold_sd,
                       scale=scale, quantiles=quantiles, marginal=marginal_quantiles(y),
                       ood_reference=reference, ood_calibration=calibration, ood_scale=whiten, ood_k=int(ood_k),
                       method=method,
                       info=dict(info or {}))
