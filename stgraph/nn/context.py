"""Neighbourhood context of spot features over the spot graph (TRIPLEX's neighbour view, parameter-free)."""
from __future__ import annotations

import torch
from torch_geometric.utils import remove_self_loops, scatter

__all__ = ["neighbour_mean"]


def neighbour_mean(x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    r"""Mean of each node's neighbours' features, self excluded; a node without neighbours keeps its own.

    .. math::
        \bar{\mathbf{x}}_i = \frac{1}{|\mathcal{N}(i)|}\sum_{j \in \mathcal{N}(i)} \mathbf{x}_j,
        \qquad \bar{\mathbf{x}}_i = \mathbf{x}_i \text{ if } \mathcal{N}(i) = \emptyset

    Shapes: ``x`` (N, F), ``edge_index`` (2, E) with messages flowing ``edge_index[0] → edge_index[1]``
    → (N, F).
    """
    edge_index, _ = remove_self_loops(edge_index)
    src, dst = edge_index
    summed = scatter(x[src], dst, dim=0, dim_size=x.size(0), reduce="sum")
    count = scatter(torch.ones_like(dst, dtype=x.dtype), dst, dim=0, dim_size=x.size(0), reduce="sum")
    alone = count == 0
    mean = summed / count.clamp(min=1).unsqueeze(-1)
    return torch.where(alone.unsqueeze(-1), x, mean)
