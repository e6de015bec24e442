r"""Contrastive alignment losses between paired image and spot embeddings.

Notation: ``I`` image embeddings and ``S`` spot embeddings, both (B, d), row ``i`` of each from the same
spot; ``τ`` the temperature; soft cross-entropy ``CE(p, t) = (−t · log_softmax(p, −1)).sum(−1)``, one value
per row.

- :func:`clip_loss` (mclSTExp): hard identity targets, both directions.
- :func:`bleep_loss` (BLEEP): targets smoothed by the in-batch image and spot similarities, both directions.
- :func:`heclip_loss` (HECLIP): targets from image similarities only, image → spot direction only.

As in the BLEEP and HECLIP reference code, the soft targets are **not detached**: gradients also flow
through the similarity matrices that build them. ``detach_targets=True`` treats them as constants instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_loss

__all__ = ["soft_cross_entropy", "clip_loss", "bleep_loss", "heclip_loss", "CLIPLoss", "BLEEPLoss",
           "HECLIPLoss"]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Row-wise soft cross-entropy :math:`\mathrm{CE}(p, t)_i = -\sum_j t_{ij}\log\mathrm{softmax}(p_i)_j`.

    Shapes: ``logits`` (B, C), ``targets`` (B, C) → (B,).
    """
    return (-targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def _check_pair(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float) -> None:
    if image_emb.dim() != 2 or spot_emb.dim() != 2:
        raise ValueError(f"contrastive losses expect (B, d) embeddings, got image {tuple(image_emb.shape)} "
                         f"and spot {tuple(spot_emb.shape)}")
    if image_emb.shape != spot_emb.shape:
        raise ValueError(f"image and spot embeddings must be paired row by row with the same width, got "
                         f"{tuple(image_emb.shape)} and {tuple(spot_emb.shape)}")
    if image_emb.size(0) == 0:
        raise ValueError("contrastive losses need at least one pair (got an empty batch)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def clip_loss(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Symmetric CLIP loss with identity labels (mclSTExp).

    .. math::
        \mathcal{L} = \frac{1}{B}\sum_i \tfrac12\Big[\mathrm{CE}\big(\tfrac{S I^\top}{\tau}, \mathbf{1}\big)_i
        + \mathrm{CE}\big(\tfrac{I S^\top}{\tau}, \mathbf{1}\big)_i\Big]

    Symmetric in its two arguments. Shapes: (B, d), (B, d) → ().
    """
    _check_pair(image_emb, spot_emb, temperature)
    logits = spot_emb @ image_emb.T / temperature
    labels = torch.arange(logits.size(0), device=logits.device)
    spot_to_image = F.cross_entropy(logits, labels, reduction="none")
    image_to_spot = F.cross_entropy(logits.T, labels, reduction="none")
    return ((spot_to_image + image_to_spot) / 2).mean()


def bleep_loss(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float = 1.0,
               detach_targets: bool = False) -> torch.Tensor:
    r"""BLEEP's similarity-smoothed CLIP loss.

    .. math::
        L = \frac{S I^\top}{\tau}, \quad
        T = \mathrm{softmax}\Big(\frac{I I^\top + S S^\top}{2\tau}\Big), \quad
        \mathcal{L} = \frac{1}{B}\sum_i \tfrac12\big[\mathrm{CE}(L, T)_i + \mathrm{CE}(L^\top, T^\top)_i\big]

    Swapping the arguments leaves :math:`T` unchanged (its similarity matrix is symmetric in ``I`` and
    ``S``) but transposes :math:`L`, so ``bleep_loss(S, I)`` pairs :math:`L` with :math:`T^\top`: the value
    is the same only when :math:`T` is a symmetric matrix (e.g. when every row of the similarity matrix has
    the same softmax normaliser); in general the two differ slightly. Targets are differentiated through
    unless ``detach_targets``. Shapes: (B, d), (B, d) → ().
    """
    _check_pair(image_emb, spot_emb, temperature)
    logits = spot_emb @ image_emb.T / temperature
    similarity = (image_emb @ image_emb.T + spot_emb @ spot_emb.T) / 2
    targets = F.softmax(similarity / temperature, dim=-1)
    if detach_targets:
        targets = targets.detach()
    spots_loss = soft_cross_entropy(logits, targets)
    images_loss = soft_cross_entropy(logits.T, targets.T)
    return ((spots_loss + images_loss) / 2).mean()


def heclip_loss(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float = 1.0,
                detach_targets: bool = False) -> torch.Tensor:
    r"""HECLIP's image-centric loss: one direction, targets from image similarities only.

    .. math::
        L = \frac{S I^\top}{\tau}, \quad T = \mathrm{softmax}\Big(\frac{I I^\top}{\tau}\Big), \quad
        \mathcal{L} = \frac{1}{B}\sum_i \mathrm{CE}(L^\top, T^\top)_i

    There is no spot-side term, so the loss is **not** symmetric in its arguments and the spot embeddings
    receive gradient only through the logits. Shapes: (B, d), (B, d) → ().
    """
    _check_pair(image_emb, spot_emb, temperature)
    logits = spot_emb @ image_emb.T / temperature
    targets = F.softmax(image_emb @ image_emb.T / temperature, dim=-1)
    if detach_targets:
        targets = targets.detach()
    return soft_cross_entropy(logits.T, targets.T).mean()


class _PairLoss(nn.Module):
    """Module wrapper holding the temperature; ``forward(image_emb, spot_emb) -> ()``."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@register_loss("clip")
class CLIPLoss(_PairLoss):
    """Symmetric CLIP loss with identity targets (mclSTExp); module form of :func:`clip_loss`."""

    def forward(self, image_emb: torch.Tensor, spot_emb: torch.Tensor) -> torch.Tensor:
        return clip_loss(image_emb, spot_emb, self.temperature)


@register_loss("bleep")
class BLEEPLoss(_PairLoss):
    """BLEEP's similarity-smoothed CLIP loss; module form of :func:`bleep_loss`."""

    def __init__(self, temperature: float = 1.0, detach_targets: bool = False):
        super().__init__(temperature)
        self.detach_targets = bool(detach_targets)

    def forward(self, image_emb: torch.Tensor, spot_emb: torch.Tensor) -> torch.Tensor:
        return bleep_loss(image_emb, spot_emb, self.temperature, self.detach_targets)


@register_loss("heclip")
class HECLIPLoss(_PairLoss):
    """HECLIP's image-similarity targets, image → spot only; module form of :func:`heclip_loss`."""

    def __init__(self, temperature: float = 1.0, detach_targets: bool = False):
        super().__init__(temperature)
        self.detach_targets = bool(detach_targets)

    def forward(self, image_emb: torch.Tensor, spot_emb: torch.Tensor) -> torch.Tensor:
        return heclip_loss(image_emb, spot_emb, self.temperature, self.detach_targets)
