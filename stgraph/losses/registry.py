"""Alignment losses by name, so a config string picks the loss (``loss.alignment: bleep``).

A new loss is one class in one file with one decorator; its ``__init__`` parameters are its options
(``loss.options`` in the config, checked at load time), ``temperature`` coming from ``loss.temperature``
when the loss takes it::

    @register_loss("my_loss")
    class MyLoss(nn.Module):
        def __init__(self, temperature: float = 1.0, margin: float = 0.2): ...
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
LOSSES: Registry[nn.Module] = Registry("loss", error=UnknownLossError, inputs=("temperature",))


def loss_names() -> list[str]:
    """The registered loss names, sorted."""
    return LOSSES.names()


def register_loss(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator adding a loss to :data:`LOSSES` under ``name``."""
    return LOSSES.register(name)


def create_loss(name: str, temperature: float | None = None, **options) -> nn.Module:
    """Instantiate the loss registered as ``name``: ``temperature`` (when given and the loss takes it) and
    its ``options`` (e.g. ``detach_targets=True``), checked against its signature.

    Raises :class:`UnknownLossError` (a ``KeyError`` and ``ValueError``) listing the valid names, and
    :class:`~stgraph.registry.UnknownOptionError` for an option the loss does not take.
    """
    options = LOSSES.check_options(name, options, where=f"loss {name!r}")
    if temperature is not None and LOSSES.takes(name, "temperature"):
        options["temperature"] = temperature
    return LOSSES.create(name, **options)
