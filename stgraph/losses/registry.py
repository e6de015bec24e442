"""Alignment losses by name, so a config string picks the loss (``loss.alignment: bleep``).

A new loss is one class in one file with one decorator::

    @register_loss("my_loss")
    class MyLoss(nn.Module):
        def __init__(self, temperature: float = 1.0): ...
        def forward(self, image_emb, spot_emb): ...   # (N, d), (N, d) -> scalar
"""
from __future__ import annotations

from typing import Callable, Type

from torch import nn

from ..registry import Registry, UnknownNameError

__all__ = ["LOSSES", "UnknownLossError", "register_loss", "create_loss", "loss_names"]


class UnknownLossError(UnknownNameError):
    """No loss is registered under the requested name (a :class:`KeyError` and a :class:`ValueError`)."""


#: name → loss class; ``clip``, ``bleep``, ``heclip`` register themselves in :mod:`stgraph.losses.contrastive`.
LOSSES: Registry[nn.Module] = Registry("loss", error=UnknownLossError)


def loss_names() -> list[str]:
    """The registered loss names, sorted."""
    return LOSSES.names()


def register_loss(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator adding a loss to :data:`LOSSES` under ``name``."""
    return LOSSES.register(name)


def create_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the loss registered as ``name`` with ``kwargs`` (e.g. ``temperature=1.0``).

    Raises :class:`UnknownLossError` (a ``KeyError`` and ``ValueError``) listing the valid names.
    """
    return LOSSES.create(name, **kwargs)
