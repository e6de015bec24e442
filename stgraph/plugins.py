"""Plugins: modules that register components (encoders, losses, kNN backends, aggregations, ...) on import.

Three ways in, all imported before a config is validated, so a plugin's names are valid choices:

- a ``plugins:`` list in the YAML config (``plugins: [my_lab.encoders]``), stored in the run folder so that
  ``predict`` on the run imports them again;
- ``--plugin MODULE`` on every command line (``stgraph --plugin my_lab.encoders train ...``);
- the ``stgraph.plugins`` entry-point group of an installed package (``pyproject.toml``)::

      [project.entry-points."stgraph.plugins"]
      gatv2 = "stgraph_gatv2"

  loaded once, the first time a config is loaded or ``stgraph components`` runs.

A plugin that fails to import is a one-line :class:`PluginError` naming it.
"""
from __future__ import annotations

import importlib
import logging
from typing import Iterable

from .errors import StgraphError

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "load_plugins", "load_entry_points", "loaded_plugins"]

ENTRY_POINT_GROUP = "stgraph.plugins"
log = logging.getLogger("stgraph")

_loaded: dict[str, str] = {}  # module or entry point → how it came (config, cli, entry point)
_entry_points_done = False


class PluginError(StgraphError, ImportError):
    """A plugin module (or entry point) could not be imported."""


def _import(module: str, origin: str) -> None:
    if not isinstance(module, str) or not module.strip():
        raise PluginError(f"plugin names must be module names (e.g. my_lab.encoders), got {module!r}")
    module = module.strip()
    if module in _loaded:
        return
    try:
        importlib.import_module(module)
    except SystemExit as err:  # a module that exits at import would end the command with its status, silently
        raise PluginError(f"plugin {module!r} ({origin}) called sys.exit({err.code!r}) while it was imported: a "
                          "plugin registers components and returns") from None
    except Exception as err:  # noqa: BLE001 - any failure of a user's module is reported in one line
        raise PluginError(f"plugin {module!r} ({origin}) failed to import: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")) from err
    _loaded[module] = origin
    log.debug("plugin %s imported (%s)", module, origin)


def load_plugins(modules: Iterable[str] = (), origin: str = "config") -> list[str]:
    """Import the entry-point plugins (once) and then ``modules``; returns the modules asked for."""
    load_entry_points()
    modules = [modules] if isinstance(modules, str) else list(modules or ())
    for module in modules:
        _import(module, origin)
    return modules


def load_entry_points() -> list[str]:
    """Import every installed package's ``stgraph.plugins`` entry point (once per process)."""
    global _entry_points_done
    if _entry_points_done:
        return [k for k, v in _loaded.items() if v.startswith("entry point")]
    _entry_points_done = True
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name!r} of {getattr(ep.dist, 'name', '?')}"
        if ep.value in _loaded:
            continue
        try:
            ep.load()
        except SystemExit as err:
            raise PluginError(f"plugin {ep.value!r} ({origin}) called sys.exit({err.code!r}) while it was "
                              "imported: a plugin registers components and returns") from None
        except Exception as err:  # noqa: BLE001
            raise PluginError(f"plugin {ep.value!r} ({origin}) failed to import: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")) from err
        _loaded[ep.value] = origin
        names.append(ep.value)
    return names


def loaded_plugins() -> dict[str, str]:
    """Plugin modules imported so far → where they came from."""
    return dict(_loaded)
