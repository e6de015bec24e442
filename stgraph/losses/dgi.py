"""Deep Graph Infomax loss, as a function of the model that owns the discriminator."""
from __future__ import annotations

import torch

from ..nn.dgi import GraphInfomax

__all__ = ["dgi_loss"]


def dgi_loss(model: GraphInfomax, pos_z: torch.Tensor, neg_z: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
    r"""DGI binary cross-entropy with ``model``'s bilinear discriminator :math:`D`.

    .. math::
        \mathcal{L}_{DGI} = -\frac{1}{N}\sum_i \log D(\mathbf{z}_i, \mathbf{s})
                            -\frac{1}{N}\sum_i \log\big(1 - D(\mathbf{z}'_i, \mathbf{s})\big)

    Shapes: ``pos_z``, ``neg_z`` (N, H), ``summary`` (H,) → ().
    """
    if pos_z.shape != neg_z.shape:
        raise ValueError(f"positive and corrupted embeddings must have the same shape, got {tuple(pos_z.shape)} "
                         f"and {tuple(neg_z.shape)}")
    return model.loss(pos_z, neg_z, summary)
