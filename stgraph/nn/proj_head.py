"""The projection head shared by BLEEP, HECLIP, mclSTExp and ST-GCHB."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjHead"]


class ProjHead(nn.Module):
    r"""Residual projection head into the joint image/spot space.

    .. math::
        \mathbf{h}_1 = \mathbf{W}_1 \mathbf{x} + \mathbf{b}_1, \qquad
        \mathbf{h} = \mathrm{Dropout}\big(\mathbf{W}_2\,\mathrm{GELU}(\mathbf{h}_1) + \mathbf{b}_2\big), \qquad
        \mathbf{y} = \mathrm{LayerNorm}(\mathbf{h}_1 + \mathbf{h})

    Parameters
    ----------
    in_dim
        Input width ``d_in``.
    out_dim
        Output (joint space) width ``p``.
    dropout
        Dropout probability on the second linear layer's output.

    Shapes
    ------
    ``(*, d_in) -> (*, p)``; usually ``(B, d_in) -> (B, p)``.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"ProjHead needs positive widths, got in_dim={in_dim}, out_dim={out_dim}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.projection(x)
        h = self.dropout(self.fc(self.gelu(h1)))
        return self.layer_norm(h1 + h)

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.out_dim}"
