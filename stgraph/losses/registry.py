"""Alignment losses by name, so a config string picks the loss (``loss.alignment: bleep``)."""
from __future__ import annotations

from typing import Callable, Dict, Type

from torch import nn

from ..errors import StgraphError
from .contrastive import BLEEPLoss, CLIPLoss, HECLIPLoss

__all__ = ["LOSSES", "UnknownLossError", "register_loss", "create_loss", "loss_names"]

LOSSES: Dict[str, Type[nn.Module]] = {"clip": CLIPLoss, "bleep": BLEEPLoss, "heclip": HECLIPLoss}


class UnknownLossError(StgraphError, KeyError, ValueError):
    """No loss is registered under the requested name (a :class:`KeyError` and a :class:`ValueError`)."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def loss_names() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(LOSSES)


def register_loss(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator adding a loss to :data:`LOSSES` under ``name``.

    >>> @register_loss("my_loss")
    ... class MyLoss(nn.Module): ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a loss name must be a non-empty string, got {name!r}")

    def decorator(cls: Type[nn.Module]) -> Type[nn.Module]:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered ({LOSSES[name].__name__})")
        LOSSES[name] = cls
        return cls

    return decorator


def create_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the loss registered as ``name`` with ``kwargs`` (e.g. ``temperature=1.0``).

    Raises :class:`UnknownLossError` (a ``KeyError`` and ``ValueError``) listing the valid names.
    """
    try:
        cls = LOSSES[name]
    except (KeyError, TypeError):
        raise UnknownLossError(f"unknown loss {name!r}; valid choices: {loss_names()}") from None
    return cls(**kwargs)
