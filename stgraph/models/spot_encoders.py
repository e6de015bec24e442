"""Spot (expression) encoders, registered by name.

A builder is ``(in_dim, **options) -> nn.Module`` (timm's entrypoint contract): ``in_dim`` is the width of
the spot-branch input, ``options`` the encoder's own settings from ``model.spot_encoder.options``, checked
against the builder's signature when the config is loaded.

Every encoder maps a spot batch ``x`` (N, G_in) — expression or its PCA — to (N, D_out) and exposes
``out_dim``. ``forward(x, coords)`` takes integer grid coordinates (N, 2) ``[x, y]``; only the transformer
uses them. An encoder over the spot graph sets ``uses_graph = True`` and gets ``forward(x, coords,
edge_index=edge_index)`` with the slide's graph (2, E) (whole slides: ``train.batching=slide``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn import MLP, SpotTransformer
from ..registry import Registry

__all__ = ["SPOT_ENCODERS", "create_spot_encoder", "uses_graph", "IdentitySpotEncoder", "MLPSpotEncoder",
           "TransformerSpotEncoder"]

SPOT_ENCODERS: Registry[nn.Module] = Registry("spot encoder", inputs=("in_dim",))


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
def identity(in_dim: int) -> nn.Module:
    """BLEEP: the expression vector itself, h = x (no options)."""
    return IdentitySpotEncoder(in_dim)


@SPOT_ENCODERS.register("mlp")
def mlp(in_dim: int, hidden_dims: list, dropout: float = 0.0) -> nn.Module:
    """h = MLP(x) with GELU hidden layers; output width = the last of hidden_dims."""
    return MLPSpotEncoder(in_dim, list(hidden_dims), dropout)


@SPOT_ENCODERS.register("transformer")
def transformer(in_dim: int, max_coord: int = 128, depth: int = 2, heads: int = 8, dim_head: int = 64,
                mlp_dim: Optional[int] = None, dropout: float = 0.0) -> nn.Module:
    """mclSTExp: x + learnable x/y position embeddings, then self-attention across the spots of a batch."""
    return TransformerSpotEncoder(in_dim, max_coord, depth, heads, dim_head, mlp_dim, dropout)


def create_spot_encoder(in_dim: int, name: str = "identity", options: Optional[dict] = None) -> nn.Module:
    """``SPOT_ENCODERS[name](in_dim, **options)``: the spot encoder registered as ``name`` with its settings
    (checked against its signature first: a wrong option name names the encoder and what it accepts)."""
    options = SPOT_ENCODERS.check_options(name, options, where=f"spot encoder {name!r}")
    return SPOT_ENCODERS.create(name, in_dim=in_dim, **options)


def uses_graph(name: str) -> bool:
    """Whether the spot encoder registered as ``name`` reads the slide's spot graph: its entry (class or
    builder) sets ``uses_graph = True``; its ``forward`` is then called as ``forward(x, coords,
    edge_index=...)`` and training needs ``train.batching=slide``."""
    return bool(getattr(SPOT_ENCODERS.get(name), "uses_graph", False))
