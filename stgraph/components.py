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

#: Listed registries: title → (module, attribute, the config key or argument that picks an entry).
REGISTRIES: dict[str, tuple[str, str, str]] = {
    "models": ("stgraph.models.factory", "MODELS", "model.kind"),
    "image_encoders": ("stgraph.models.image_encoders", "IMAGE_ENCODERS", "model.image_encoder.name"),
    "spot_encoders": ("stgraph.models.spot_encoders", "SPOT_ENCODERS", "model.spot_encoder.name"),
    "losses": ("stgraph.losses", "LOSSES", "loss.alignment"),
    "knn_backends": ("stgraph.retrieval.knn", "KNN_BACKENDS", "inference.backend"),
    "similarities": ("stgraph.retrieval.knn", "SIMILARITIES", "inference.similarity"),
    "aggregations": ("stgraph.retrieval.impute", "AGGREGATIONS", "inference.aggregation"),
    "distances": ("stgraph.retrieval.impute", "WEIGHT_DISTANCES", "inference.distance"),
    "baselines": ("stgraph.evaluation.baselines", "BASELINES", "stgraph evaluate --baselines"),
    "metrics": ("stgraph.metrics.evaluate", "METRICS", "evaluation report columns"),
    "readers": ("stgraph.data.readers", "READERS", "read_slide(path, format=...)"),
}


def list_components(plugins: Iterable[str] = ()) -> dict[str, dict]:
    """``{registry: {"key": config key, "kind": ..., "inputs": [...], "entries": [row, ...]}}``; each row
    has ``name``, ``summary``, ``options`` (name → default), ``any_options`` and ``module``."""
    from .plugins import load_plugins

    load_plugins(plugins, origin="--plugin")
    out = {}
    for title, (module, attr, key) in REGISTRIES.items():
        registry = getattr(importlib.import_module(module), attr)
        out[title] = {"key": key, "kind": registry.kind, "inputs": list(registry.inputs),
                      "entries": registry.describe()}
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
            if opts:
                lines.append(f"  {'':<22}   options: {opts}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
