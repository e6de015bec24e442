"""Name → object registries, in the spirit of timm's ``register_model`` / ``create_model``.

Every pluggable piece is registered by name in one :class:`Registry`, and configs, the CLI's ``choices=``
and the tests ask the registry for the valid names. Which config key chooses from which registry is said once,
in :data:`stgraph.config.schema.REGISTRY_OPTIONS`; ``stgraph components`` lists every registry with its
entries (:mod:`stgraph.components`).

An unknown name fails with the valid choices (:class:`UnknownNameError`, a ``KeyError`` and a
``ValueError``).

Settings (timm's ``**kwargs`` to an entrypoint, PyG's ``act_kwargs``): an entry is called with the inputs
stgraph supplies (the registry's ``inputs``, e.g. ``in_dim`` for a spot encoder) plus the user's
``options`` as keyword arguments. The options an entry accepts are read from its signature
(:meth:`Registry.options`), so a config is checked at load time (:meth:`Registry.check_options`) and
``stgraph components`` can list them.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Generic, Iterator, Mapping, Optional, Sequence, TypeVar

from .errors import StgraphError

__all__ = ["Registry", "UnknownNameError", "UnknownOptionError", "REQUIRED"]

T = TypeVar("T")


class UnknownNameError(StgraphError, KeyError, ValueError):
    """No entry is registered under the requested name (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class UnknownOptionError(StgraphError, TypeError, ValueError):
    """An option the component does not take, or a required one missing (a ``TypeError`` and ``ValueError``)."""


class _Required:
    def __repr__(self) -> str:
        return "<required>"


#: Marks an option without a default in :meth:`Registry.options`.
REQUIRED: Any = _Required()


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
    inputs
        Parameters stgraph itself passes to every entry (``("in_dim",)`` for spot encoders); every other
        parameter of an entry's signature is a user option.
    """

    def __init__(self, kind: str, error: type = UnknownNameError, inputs: Sequence[str] = ()):
        self.kind = kind
        self.error = error
        self.inputs = tuple(inputs)
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

    # ------------------------------------------------------------------------------------ settings
    def _parameters(self, name: str) -> list[inspect.Parameter]:
        entry = self.get(name)
        try:
            sig = inspect.signature(entry)
        except (TypeError, ValueError):  # a builtin without a signature: no options known
            return []
        return list(sig.parameters.values())

    def accepts_any(self, name: str) -> bool:
        """Whether the entry takes ``**kwargs`` (then any option name is passed on, as timm does)."""
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self._parameters(name))

    def options(self, name: str) -> dict[str, Any]:
        """The options of entry ``name``: parameter → default (:data:`REQUIRED` when it has none), in
        signature order; the registry's ``inputs`` and ``*args``/``**kwargs`` are not options."""
        out = {}
        for p in self._parameters(name):
            if p.name in self.inputs or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                continue
            out[p.name] = REQUIRED if p.default is p.empty else p.default
        return out

    def takes(self, name: str, parameter: str) -> bool:
        """Whether entry ``name`` has a parameter called ``parameter`` (an input it may be given)."""
        return any(p.name == parameter for p in self._parameters(name)) or self.accepts_any(name)

    def check_options(self, name: str, options: Optional[Mapping[str, Any]], where: str = "options") -> dict:
        """``options`` as a dict when entry ``name`` accepts every one of them and they name all its required
        options; else :class:`UnknownOptionError` naming the component and the options it accepts."""
        options = dict(options or {})
        accepted = self.options(name)
        bad = [k for k in options if not isinstance(k, str) or k in self.inputs
               or (k not in accepted and not self.accepts_any(name))]
        if bad:
            given_by = [k for k in bad if k in self.inputs]
            why = f" ({given_by} are set by stgraph itself)" if given_by else ""
            raise UnknownOptionError(f"{where}: {self.kind} {name!r} has no option(s) {bad}{why}; "
                                     f"it accepts {list(accepted) or 'none'}")
        missing = [k for k, v in accepted.items() if v is REQUIRED and k not in options]
        if missing:
            raise UnknownOptionError(f"{where}: {self.kind} {name!r} needs option(s) {missing}; "
                                     f"it accepts {list(accepted)}")
        hints = self.annotations(name)
        for key, value in options.items():
            annotation = hints.get(key)
            if annotation is not None and not _matches(value, annotation):
                raise UnknownOptionError(f"{where}.{key}: {self.kind} {name!r} takes {_type_name(annotation)}, got "
                                         f"{value!r} ({type(value).__name__})")
        return options

    def annotations(self, name: str) -> dict[str, Any]:
        """The entry's parameter annotations, resolved (``{}`` when they cannot be: a forward reference)."""
        import typing

        entry = self.get(name)
        target = getattr(entry, "from_config", None) if inspect.isclass(entry) and hasattr(entry, "spec") else entry
        target = target.__init__ if inspect.isclass(target) else target
        try:
            return typing.get_type_hints(target)
        except Exception:  # NameError of an unresolvable annotation: no type check, names still are
            return {}

    def summary(self, name: str) -> str:
        """The first line of the entry's docstring (``""`` when it has none)."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.strip().splitlines()[0].strip() if doc.strip() else ""

    def describe(self) -> list[dict]:
        """One row per entry: ``name``, ``summary`` (first docstring line), ``options`` (name → default, as
        text when not plain data), ``any_options`` (takes ``**kwargs``), ``module`` where it is defined."""
        rows = []
        for name in self.names():
            entry = self.get(name)
            opts = {k: ("<required>" if v is REQUIRED else v if _plain(v) else repr(v))
                    for k, v in self.options(name).items()}
            rows.append({"name": name, "summary": self.summary(name), "options": opts,
                         "any_options": self.accepts_any(name),
                         "module": getattr(entry, "__module__", None) or type(entry).__module__})
        return rows

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


def _matches(value, annotation) -> bool:
    """Whether a YAML-given option value fits a parameter annotation: int (not bool), float (int too), bool,
    str, list / tuple / Sequence (a list), dict / Mapping, Optional / Union, Literal; anything else passes."""
    import collections.abc as cabc
    import typing

    if annotation is typing.Any or annotation is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    base = origin or annotation
    if base in (list, tuple, cabc.Sequence, set, frozenset):
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(_matches(v, args[0]) for v in value) if base is not tuple else True
    if base in (dict, cabc.Mapping):
        return isinstance(value, dict)
    return True


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _plain(value) -> bool:
    """Whether ``value`` is JSON-like data (printed as it is) rather than an object (printed as repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False
