"""Weighted sum of named loss terms, with the per-term values for logging."""
from __future__ import annotations

import math
from typing import Mapping

import torch

__all__ = ["CompositeLoss"]


class CompositeLoss:
    r"""Total loss :math:`\mathcal{L} = \sum_k w_k \mathcal{L}_k` over named terms.

    A term whose weight is 0, or whose name is absent from ``weights``, is logged but not added; callers
    may skip computing it altogether by asking :meth:`is_active`.

    Parameters
    ----------
    weights
        ``{term name: weight}``; weights must be finite numbers.

    Examples
    --------
    >>> loss = CompositeLoss({"align": 1.0, "dgi_spot": 0.5})
    >>> total, logs = loss({"align": torch.tensor(2.0), "dgi_spot": torch.tensor(1.0)})
    >>> float(total), logs["total"]
    (2.5, 2.5)
    """

    def __init__(self, weights: Mapping[str, float]):
        checked = {}
        for name, weight in dict(weights).items():
            try:
                value = float(weight)
            except (TypeError, ValueError):
                raise ValueError(f"loss weight for {name!r} must be a number, got {weight!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"loss weight for {name!r} must be finite, got {weight!r}")
            checked[str(name)] = value
        if "total" in checked:
            raise ValueError("'total' is reserved for the weighted sum and cannot be a term name")
        self.weights: dict[str, float] = checked

    def is_active(self, name: str) -> bool:
        """Whether term ``name`` contributes to the total (present in ``weights`` with a non-zero weight)."""
        return self.weights.get(name, 0.0) != 0.0

    @property
    def active_terms(self) -> list[str]:
        """Names of the terms that contribute to the total."""
        return [name for name in self.weights if self.is_active(name)]

    def __call__(self, terms: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total and logs.

        Parameters
        ----------
        terms
            ``{name: scalar tensor}`` of unweighted term values.

        Returns
        -------
        total
            Scalar tensor :math:`\\sum_k w_k \\mathcal{L}_k` over active terms; an exact zero (on the
            terms' device) when none is active.
        logs
            ``{name: float}`` with every term's unweighted value and ``"total"``.
        """
        if not terms:
            raise ValueError("CompositeLoss got no loss terms")
        if "total" in terms:
            raise ValueError("'total' is reserved for the weighted sum and cannot be a term name")
        logs: dict[str, float] = {}
        total = None
        for name, value in terms.items():
            if value.numel() != 1:
                raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
            logs[name] = float(value.detach())
            if self.is_active(name):
                weighted = self.weights[name] * value.reshape(())
                total = weighted if total is None else total + weighted
        if total is None:
            first = next(iter(terms.values()))
            total = torch.zeros((), dtype=first.dtype, device=first.device)
        logs["total"] = float(total.detach())
        return total, logs

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weights})"
