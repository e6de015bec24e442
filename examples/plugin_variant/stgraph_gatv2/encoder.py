"""Spot encoder ``gatv2``: GATv2 attention over the slide's spot graph.

.. math::
    h_i = \\mathrm{ELU}\\Big(\\big\\Vert_{m=1}^{M} \\sum_{j \\in N(i) \\cup \\{i\\}} \\alpha^m_{ij} W^m x_j\\Big),\\qquad
    \\alpha^m_{ij} = \\mathrm{softmax}_j\\big(a^{m\\top} \\mathrm{LeakyReLU}(W^m [x_i \\Vert x_j])\\big)

with ``M = heads`` attention heads of ``hidden_dim`` channels each, concatenated (output width
``heads · hidden_dim``). The encoder sets ``uses_graph = True``, so stgraph passes the slide's graph as
``edge_index`` (2, E) and training runs over whole slides (``train.batching: slide``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv

from stgraph.models import SPOT_ENCODERS

__all__ = ["GATv2SpotEncoder"]


@SPOT_ENCODERS.register("gatv2")
class GATv2SpotEncoder(nn.Module):
    """GATv2 attention over the spot graph (heads concatenated, ELU); needs train.batching=slide.

    Parameters
    ----------
    in_dim
        Width of the spot-branch input (genes or PCA components), given by stgraph.
    hidden_dim
        Channels per head.
    heads
        Attention heads M; the output width is ``heads * hidden_dim``.
    dropout
        Dropout of the attention coefficients (training only).
    """

    uses_graph = True

    def __init__(self, in_dim: int, hidden_dim: int = 32, heads: int = 2, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or hidden_dim < 1:
            raise ValueError(f"gatv2 needs heads >= 1 and hidden_dim >= 1, got {heads}, {hidden_dim}")
        self.conv = GATv2Conv(in_dim, hidden_dim, heads=heads, concat=True, dropout=dropout)
        self.act = nn.ELU()
        self.heads, self.hidden_dim = int(heads), int(hidden_dim)
        self.out_dim = self.heads * self.hidden_dim

    def forward(self, x: torch.Tensor, coords: Optional[torch.Tensor] = None,
                edge_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, in_dim) spots of one slide and its graph (2, E) → (N, heads · hidden_dim)."""
        if edge_index is None:
            raise ValueError("the gatv2 spot encoder needs the slide's spot graph (edge_index)")
        return self.act(self.conv(x, edge_index))
