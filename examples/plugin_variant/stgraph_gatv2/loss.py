"""Loss ``margin``: a hinge ranking loss between paired image and spot embeddings (VSE-style).

With L2-normalised image and spot embeddings ``I``, ``S`` (B, d) and cosine similarities ``C = S Iᵀ``,
the diagonal holding the true pairs:

.. math::
    \\mathcal{L} = \\frac{1}{B(B-1)} \\sum_i \\sum_{j \\ne i}
        \\tfrac12\\big[\\max(0, m - C_{ii} + C_{ij}) + \\max(0, m - C_{ii} + C_{ji})\\big]

Each true pair must beat every other pairing of its spot and of its image by the margin ``m``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stgraph.losses import register_loss

__all__ = ["MarginRankingLoss", "margin_ranking_loss"]


def margin_ranking_loss(image_emb: torch.Tensor, spot_emb: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """The loss above; shapes (B, d), (B, d) → (), B ≥ 2."""
    if image_emb.shape != spot_emb.shape or image_emb.dim() != 2 or image_emb.size(0) < 2:
        raise ValueError(f"margin loss needs paired (B, d) embeddings with B >= 2, got {tuple(image_emb.shape)} "
                         f"and {tuple(spot_emb.shape)}")
    sim = F.normalize(spot_emb, dim=1) @ F.normalize(image_emb, dim=1).T
    pos = sim.diagonal()
    off = ~torch.eye(sim.size(0), dtype=torch.bool, device=sim.device)
    spot_to_image = (margin - pos[:, None] + sim).clamp_min(0)[off]  # row i: spot i against every image j
    image_to_spot = (margin - pos[None, :] + sim).clamp_min(0)[off]  # column j: image j against every spot i
    return 0.5 * (spot_to_image.mean() + image_to_spot.mean())


@register_loss("margin")
class MarginRankingLoss(nn.Module):
    """Hinge ranking loss: each true pair beats every other pairing by the margin (cosine similarities)."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, image_emb: torch.Tensor, spot_emb: torch.Tensor) -> torch.Tensor:
        return margin_ranking_loss(image_emb, spot_emb, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
