"""Spot (expression) encoders, registered by name.

Every encoder maps a spot batch ``x`` (N, G_in) — expression or its PCA — to (N, D_out) and exposes
``out_dim``. ``forward(x, coords)`` takes integer grid coordinates (N, 2) ``[x, y]``; only the transformer
uses them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn import MLP, SpotTransformer
from ..registry import Registry

__all__ = ["SPOT_ENCODERS", "create_spot_encoder", "IdentitySpotEncoder", "MLPSpotEncoder",
           "TransformerSpotEncoder"]

SPOT_ENCODERS: Registry[nn.Module] = Registry("spot encoder")


class IdentitySpotEncoder(nn.Module):
    """BLEEP: the expression vector itself, ``h = x``."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x


class MLPSpotEncoder(nn.Module):
    """``h = MLP(x)`` with GELU hidden layers; output width = last hidden width."""

    def __init__(self, in_dim: int, hidden_dims: list[int], dropout: float = 0.0):
        super().__init__()
        if not hidden_dims:
            raise ValueError("spot encoder 'mlp' needs model.spot_encoder.hidden_dims, e.g. [512, 256]")
        self.mlp = MLP(in_dim, list(hidden_dims[:-1]), hidden_dims[-1], dropout=dropout)
        self.out_dim = hidden_dims[-1]

    def forward(self, x: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.mlp(x)


class TransformerSpotEncoder(nn.Module):
    """mclSTExp: ``z = x + E_x[c_x] + E_y[c_y]`` then self-attention across the spots of the batch.

    Output (N, G_in); attention treats the N spots of one batch (one slide) as one sequence.
    """

    def __init__(self, in_dim: int, max_coord: int = 128, depth: int = 2, heads: int = 8, dim_head: int = 64,
                 mlp_dim: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        self.transformer = SpotTransformer(in_dim, max_coord, max_coord, depth=depth, heads=heads,
                                           dim_head=dim_head, mlp_dim=mlp_dim, dropout=dropout)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        if coords is None:
            raise ValueError("the transformer spot encoder needs integer spot coordinates")
        return self.transformer(x, coords)


@SPOT_ENCODERS.register("identity")
def _identity(in_dim: int, cfg) -> nn.Module:
    return IdentitySpotEncoder(in_dim)


@SPOT_ENCODERS.register("mlp")
def _mlp(in_dim: int, cfg) -> nn.Module:
    return MLPSpotEncoder(in_dim, list(cfg.hidden_dims), cfg.dropout)


@SPOT_ENCODERS.register("transformer")
def _transformer(in_dim: int, cfg) -> nn.Module:
    return TransformerSpotEncoder(in_dim, cfg.max_coord, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim,
                                  cfg.dropout)


def create_spot_encoder(in_dim: int, cfg) -> nn.Module:
    """Build the spot encoder named by ``cfg.name`` (a :class:`SpotEncoderConfig`)."""
    return SPOT_ENCODERS.create(cfg.name, in_dim=in_dim, cfg=cfg)
