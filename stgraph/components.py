"""What can be plugged in: every registry, its entries, their options and one line of doc each.

:func:`list_components` is what ``stgraph components`` prints (as timm's ``list_models``): for every
registry, each entry's name, the first line of its docstring, its options with their defaults (read from
the entry's signature, so a plugin's own options show up without any listing of its own) and the module
that defines it. Plugins (the ``stgraph.plugins`` entry points, and any modules given) are imported first.
"""
from __future__ import annotations

import importlib
from typing import Iterable

__all__ = ["REGISTRIES", "list_components", "format_components"]

#: Registries no config key chooses from: title → (module, attribute, what picks an entry).
OTHER_REGISTRIES: dict[str, tuple[str, str, str]] = {
    "baselines": ("stgraph.evaluation.baselines", "BASELINES", "stgraph evaluate --baselines"),
    "metrics": ("stgraph.metrics.evaluate", "METRICS", "evaluation report columns"),
    "readers": ("stgraph.data.readers", "READERS", "read_slide(path, format=...)"),
}


def _registries() -> dict[str, tuple[str, str, str]]:
    """Every listed registry: the config-chosen ones from the one table that maps a config key to its registry
    (:data:`stgraph.config.schema.REGISTRY_OPTIONS`), titled by the registry's name, then the others."""
    from .config.schema import REGISTRY_OPTIONS

    chosen = {attr.lower(): (module, attr, key) for key, (module, attr) in REGISTRY_OPTIONS.items()}
    return {**chosen, **OTHER_REGISTRIES}


#: Listed registries: title → (module, attribute, the config key or argument that picks an entry).
REGISTRIES: dict[str, tuple[str, str, str]] = _registries()


def list_components(plugins: Iterable[str] = ()) -> dict[str, dict]:
    """``{registry: {"key": config key, "kind": ..., "inputs": [...], "entries": [row, ...]}}``; each row
    has ``name``, ``summary``, ``options`` (name → default), ``any_options`` and ``module``."""
    from .plugins import load_plugins

    load_plugins(plugins, origin="--plugin")
    out = {}
    for title, (module, attr, key) in REGISTRIES.items():
        registry = getattr(importlib.import_module(module), attr)
        rows = registry.describe()
        for row in rows:  # a model kind also says what it needs and does (its ModelSpec)
            spec = getattr(registry.get(row["name"]), "spec", None)
            if spec is not None and hasattr(spec, "training"):
                row["spec"] = {"training": spec.training, "output": spec.output,
                               "cached_features": spec.cached_features, "seeded": spec.seeded,
                               "min_batch_size": spec.min_batch_size, "reference": list(spec.reference)}
        out[title] = {"key": key, "kind": registry.kind, "inputs": list(registry.inputs), "entries": rows}
    return out


def format_components(table: dict[str, dict]) -> str:
    """The table of :func:`list_components` as text: one block per registry, one line per entry."""
    lines = []
    for title, reg in table.items():
        given = f"; stgraph passes {', '.join(reg['inputs'])}" if reg["inputs"] else ""
        lines.append(f"{title}  ({reg['key']}{given})")
        for row in reg["entries"]:
            opts = ", ".join(f"{k}={v!r}" if v != "<required>" else k for k, v in row["options"].items())
            if row["any_options"]:
                opts = f"{opts}, **kwargs" if opts else "**kwargs"
            lines.append(f"  {row['name']:<22} {row['summary']}")
            if "spec" in row:
                sp = row["spec"]
                how = ("trained by the Trainer" if sp["training"] == "trainer" else "fitted in one call") + "; " + (
                    "retrieves from its reference (kNN)" if sp["output"] == "retrieval" else "predicts expression") + (
                    "; cached features" if sp["cached_features"] else "") + ("" if sp["seeded"] else "; seed-free")
                lines.append(f"  {'':<22}   does: {how}")
            if opts:
                lines.append(f"  {'':<22}   options: {opts}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
