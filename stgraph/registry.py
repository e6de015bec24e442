"""Name → object registries, in the spirit of timm's ``register_model`` / ``create_model``.

Every pluggable piece is registered by name in one :class:`Registry`, and configs, the CLI's ``choices=``
and the tests ask the registry for the valid names:

==========================  ================================  ====================================
registry                    module                            config key / argument
==========================  ================================  ====================================
``SPOT_ENCODERS``           ``stgraph.models.spot_encoders``  ``model.spot_encoder.name``
``LOSSES``                  ``stgraph.losses.registry``       ``loss.alignment``
``KNN_BACKENDS``            ``stgraph.retrieval.knn``         ``inference.backend``
``SIMILARITIES``            ``stgraph.retrieval.knn``         ``inference.similarity``
``AGGREGATIONS``            ``stgraph.retrieval.impute``      ``inference.aggregation``
``WEIGHT_DISTANCES``        ``stgraph.retrieval.impute``      ``inference.distance``
``BASELINES``               ``stgraph.evaluation.baselines``  ``stgraph evaluate --baselines``
``METRICS``                 ``stgraph.metrics.evaluate``      the columns of an evaluation report
``READERS``                 ``stgraph.data.readers``          ``read_slide(path, format=...)``
==========================  ================================  ====================================

An unknown name fails with the valid choices (:class:`UnknownNameError`, a ``KeyError`` and a
``ValueError``).
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, Optional, TypeVar

from .errors import StgraphError

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(StgraphError, KeyError, ValueError):
    """No entry is registered under the requested name (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named table of constructors (classes or functions).

    >>> SPOT_ENCODERS = Registry("spot encoder")
    >>> @SPOT_ENCODERS.register("identity")
    ... class IdentitySpotEncoder: ...
    >>> SPOT_ENCODERS.names()
    ['identity']

    Parameters
    ----------
    kind
        What the entries are, for messages (``"spot encoder"``).
    error
        Exception class raised for an unknown name (a subclass of :class:`UnknownNameError`).
    """

    def __init__(self, kind: str, error: type = UnknownNameError):
        self.kind = kind
        self.error = error
        self._table: Dict[str, Callable[..., T]] = {}

    def register(self, name: str, obj: Optional[Callable[..., T]] = None):
        """Decorator (``@REG.register("name")``) or call (``REG.register("name", obj)``) adding ``name``.

        Registering the same object twice is a no-op; another object under a taken name fails.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._table and self._table[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({getattr(self._table[name], '__name__', self._table[name])})")
            self._table[name] = fn
            return fn

        return decorator if obj is None else decorator(obj)

    def unregister(self, name: str) -> Callable[..., T]:
        """Remove ``name`` (e.g. a test's temporary entry) and return what it held."""
        return self._table.pop(name)

    def get(self, name: str) -> Callable[..., T]:
        """The entry registered as ``name``; an unknown name fails with the valid choices."""
        try:
            return self._table[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; valid choices: {self.names()}") from None

    def check(self, name: str) -> str:
        """``name`` itself when it is registered, else the :meth:`get` error."""
        self.get(name)
        return name

    def create(self, name: str, **kwargs) -> T:
        """Call the entry registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._table)

    def items(self) -> list[tuple[str, Callable[..., T]]]:
        """``(name, entry)`` pairs in registration order (e.g. the order formats are auto-detected in)."""
        return list(self._table.items())

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
