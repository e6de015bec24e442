"""A plain multi-layer perceptron."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ACTIVATIONS", "make_activation"]

ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate the activation called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid choices: {sorted(ACTIVATIONS)}") from None


class MLP(nn.Module):
    r"""Stack of linear layers with an activation and dropout after every hidden layer.

    .. math::
        \mathbf{h}_0 = \mathbf{x}, \qquad
        \mathbf{h}_{l} = \mathrm{Dropout}\big(\sigma(\mathbf{W}_l \mathbf{h}_{l-1} + \mathbf{b}_l)\big)
        \ (l = 1..L), \qquad
        \mathbf{y} = \mathbf{W}_{out} \mathbf{h}_L + \mathbf{b}_{out}

    The output layer is linear (no activation, no dropout). With ``hidden_dims=[]`` the MLP is one
    linear layer.

    Parameters
    ----------
    in_dim, out_dim
        Input and output widths.
    hidden_dims
        Widths of the hidden layers, in order.
    dropout
        Dropout probability after each hidden activation.
    activation
        Name of the hidden activation: ``gelu`` (default), ``relu``, ``prelu``, ``elu``, ``silu``, ``tanh``,
        ``identity``.

    Shapes
    ------
    ``(*, in_dim) -> (*, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, dropout: float = 0.0,
                 activation: str = "gelu"):
        super().__init__()
        widths = [int(in_dim), *[int(h) for h in hidden_dims], int(out_dim)]
        if min(widths) <= 0:
            raise ValueError(f"MLP widths must be positive, got in={in_dim}, hidden={list(hidden_dims)}, "
                             f"out={out_dim}")
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-2], widths[1:-1]):
            layers += [nn.Linear(width_in, width_out), make_activation(activation), nn.Dropout(dropout)]
        layers.append(nn.Linear(widths[-2], widths[-1]))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = widths[0], widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
