"""Name → class registries, in the spirit of timm's ``create_model``.

Config strings resolve through these tables; an unknown name fails with the list of valid choices.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of constructors.

    >>> SPOT_ENCODERS = Registry("spot encoder")
    >>> @SPOT_ENCODERS.register("identity")
    ... def build_identity(**kw): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._table: Dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._table[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._table:
            raise KeyError(f"unknown {self.kind} {name!r}; valid choices: {sorted(self._table)}")
        return self._table[name]

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table
