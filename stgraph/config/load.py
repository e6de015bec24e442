"""Load YAML configs into :class:`~stgraph.config.schema.Config`, with inheritance and dotted overrides.

A YAML file may start with ``base: other.yaml`` (path relative to the file); its keys are merged over the
base recursively. Command-line overrides are ``dotted.key=value`` strings whose value is parsed as YAML
(``train.epochs=5``, ``model.hsic.enabled=false``, ``data.genes=null``).
"""
from __future__ import annotations

import copy
import dataclasses
import typing
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional

import yaml

from ..errors import StgraphError
from .schema import COMPONENT_OPTIONS, Config, choices, registry_of
from .shipped import find_config

__all__ = ["ConfigError", "load_config", "config_from_dict", "config_to_dict", "apply_overrides", "save_config",
           "config_base", "ignored_options", "IgnoredOptionWarning"]


class ConfigError(StgraphError, ValueError):
    """Raised for an invalid config: unknown key, wrong type, or a value outside its choices."""


class IgnoredOptionWarning(UserWarning):
    """A config sets options its model kind never reads (they would silently do nothing)."""


def _read_yaml(path: Path, _chain: tuple = ()) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}" + (f" (base of {_chain[-1]})" if _chain else ""))
    _check_base_cycle(path, _chain)
    data = _parse_yaml_file(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base must be a file name, got {base!r}")
    return deep_merge(_read_yaml(_base_path(path, base), _chain + (path.resolve(),)), data)


def _base_path(path: Path, base: str) -> Path:
    """A ``base:`` file: beside the config, else a shipped config by name (``base: cpu/stgchb``, as
    ``--config cpu/stgchb`` takes it); the file beside the config wins when both exist."""
    from .shipped import shipped_dir

    beside = (path.parent / base).resolve()
    if beside.is_file():
        return beside
    for shipped in (shipped_dir() / base, shipped_dir() / f"{base}.yaml"):
        if shipped.is_file():
            return shipped.resolve()
    return beside  # the missing-file error names it, as the config's base


def _check_base_cycle(path: Path, chain: tuple) -> None:
    """``base:`` files form a chain; a file that bases itself, directly or through others, is a cycle."""
    if path.resolve() in chain:
        names = " → ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{chain[-1]}: base files form a cycle ({names})")


def _parse_yaml_file(path: Path) -> dict:
    """The YAML mapping in ``path``; :class:`ConfigError` naming the file for undecodable bytes, invalid YAML,
    a top level that is not a mapping, or an empty file (which would silently train on every default)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file ({err.reason} at byte {err.start})") from None
    data = load_yaml_text(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; start from one of configs/*.yaml "
                          "(e.g. `base: bleep.yaml` plus the keys you change)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


#: Limits of YAML that stgraph reads (configs, overrides, a run's config.yaml): its size, the values it
#: expands to through aliases (a 1 KB "billion laughs" expands to billions), and its nesting depth.
YAML_MAX_BYTES = 1 << 20
YAML_MAX_VALUES = 200_000
YAML_MAX_DEPTH = 64


def _flow_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` outside quotes and comments (a linear scan)."""
    import re

    clean = re.sub(r"'[^'\n]*'|\"(?:\\.|[^\"\\\n])*\"|#[^\n]*", "", text)
    depth = best = 0
    for ch in clean:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return best


def load_yaml_text(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` within :data:`YAML_MAX_BYTES`, :data:`YAML_MAX_VALUES` (counted with every
    alias expanded, on the composed node graph, before anything is built) and :data:`YAML_MAX_DEPTH`; a
    :class:`ConfigError` naming ``where`` otherwise, in well under a second."""
    if len(text) > YAML_MAX_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters of YAML, over the {YAML_MAX_BYTES:,} a config may hold")
    if _flow_depth(text) > YAML_MAX_DEPTH:  # before the parser recurses into it
        raise ConfigError(f"{where}: YAML nested deeper than {YAML_MAX_DEPTH} levels")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested deeper than {YAML_MAX_DEPTH} levels") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None
    if root is None:
        return None
    # Post-order over the node graph: an alias is the same node object, counted each time it is used.
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack, open_ = [(root, False)], set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        kids = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in kids)
            depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
            if size[key] > YAML_MAX_VALUES:
                raise ConfigError(f"{where}: YAML that expands to over {YAML_MAX_VALUES:,} values through its aliases "
                                  "(&anchor / *alias): refused")
            if depth[key] > YAML_MAX_DEPTH:
                raise ConfigError(f"{where}: YAML nested deeper than {YAML_MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_:
            raise ConfigError(f"{where}: a YAML alias refers to a value that contains it (a cycle)")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in kids if id(c) not in size)
    return yaml.safe_load(text)


def config_base(path) -> Optional[Path]:
    """The resolved ``base:`` file a YAML config inherits from (``None`` without one): what makes
    ``configs/ablations/stgchb_no_hsic.yaml`` an ablation of ``configs/stgchb.yaml``."""
    path = find_config(path)  # a file, or a shipped config by name, as load_config takes it
    base = _parse_yaml_file(path).get("base")
    return None if base is None else _base_path(path, base)


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into (``["a", "b", "c"]``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    return keys, load_yaml_text(raw, f"override {key.strip()}") if raw.strip() else None


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply dotted ``key=value`` overrides to a raw config mapping (validated later)."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return data


#: String options whose values YAML would read as numbers.
_STRINGS_THAT_LOOK_NUMERIC = {"train.precision"}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is typing.Any:  # checked by validate_config (e.g. data.include_genes: a list or a file)
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return _build(annotation, value, where)
    if value is None and (annotation is dict or origin is dict):
        return {}  # `options:` with nothing under it
    if value is None:
        raise ConfigError(f"{where}: may not be null")
    if origin is Literal:  # a closed set of strings
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in args:
            value = str(value)  # `precision: 32` in YAML is an int
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if where in _STRINGS_THAT_LOOK_NUMERIC and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `precision: 32` in YAML is an int
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if args:  # list[X]: every item is checked as an X
            return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
        return list(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{where}: keys must be names (strings), got {bad}")
        return dict(value)
    return value


def _build(cls: type, data: Mapping, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'config'}; valid keys: {names}"
        )
    kwargs = {}
    for name in names:
        if name in data:
            path = f"{where}.{name}" if where else name
            value = _coerce(data[name], hints[name], path)
            valid = choices(path)
            if valid is not None and value not in valid:
                raise ConfigError(f"{path}: {value!r} is not one of {list(valid)}")
            kwargs[name] = value
    return cls(**kwargs)


#: Flat ``model.spot_encoder`` keys of configs written before each encoder took ``options``: each is moved
#: into ``options`` when the chosen encoder takes it (over the same option there: a flat key typed as an
#: override, ``model.spot_encoder.heads=2``, must not be lost), and dropped otherwise, as the encoders that
#: did not use them always ignored them.
LEGACY_SPOT_ENCODER_KEYS = ("hidden_dims", "depth", "heads", "dim_head", "mlp_dim", "dropout", "max_coord")


def _import_plugins(data: Mapping) -> None:
    """Import the installed ``stgraph.plugins`` entry points and the config's ``plugins:`` modules, so that
    their names are valid choices of what follows."""
    from ..plugins import load_plugins

    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        raise ConfigError(f"plugins: expected a list of module names, got {plugins!r}")
    load_plugins(plugins, origin="config plugins:")


def _migrate_model_kind(data: dict) -> None:
    """``model.name: ridge`` without ``model.kind`` (configs before ``model.kind``) means ``kind: ridge``."""
    model = data.get("model")
    if isinstance(model, dict) and "kind" not in model and model.get("name") in _LEGACY_MODEL_NAMES:
        warnings.warn(f"model.name={model['name']} choosing the model is deprecated: write "
                      f"model.kind={model['name']} (model.name is a free label)", DeprecationWarning, stacklevel=4)
        model["kind"] = model["name"]


#: ``model.name`` values that chose the model before ``model.kind`` existed.
_LEGACY_MODEL_NAMES = ("ridge", "spot_graph")
#: ``model.spot_graph`` keys of configs written when spot_graph repeated the ridge's settings; its base ridge
#: is ``model.ridge`` now.
_SPOT_GRAPH_RIDGE_KEYS = ("n_components", "alpha", "gene_rank", "alpha_grid", "gene_rank_grid", "center_targets")


def _migrate_spot_graph_ridge_keys(data: dict) -> None:
    """Move the ridge keys of an earlier ``model.spot_graph`` into ``model.ridge`` (for ``kind: spot_graph``,
    whose base ridge they set, over ``model.ridge``'s); other kinds never read them: dropped."""
    model = data.get("model")
    sg = model.get("spot_graph") if isinstance(model, dict) else None
    if not isinstance(sg, dict) or not any(k in sg for k in _SPOT_GRAPH_RIDGE_KEYS):
        return
    moved = {k: sg.pop(k) for k in _SPOT_GRAPH_RIDGE_KEYS if k in sg}
    if model.get("kind") == "spot_graph":
        ridge = model.get("ridge")
        model["ridge"] = {**(ridge if isinstance(ridge, dict) else {}), **moved}
        warnings.warn(f"model.spot_graph.{next(iter(moved))} (and {list(moved)[1:]}) set spot_graph's base ridge: "
                      "write them under model.ridge (one section for both kinds)", DeprecationWarning, stacklevel=4)


def _migrate_spot_encoder_keys(data: dict) -> None:
    """Move the flat keys of :data:`LEGACY_SPOT_ENCODER_KEYS` into ``model.spot_encoder.options``."""
    enc = (data.get("model") or {}).get("spot_encoder") if isinstance(data.get("model"), dict) else None
    if not isinstance(enc, dict) or not any(k in enc for k in LEGACY_SPOT_ENCODER_KEYS):
        return
    name = enc.get("name", "identity")
    try:
        accepted = registry_of("model.spot_encoder.name").options(name)
    except KeyError:  # an unknown name is reported by the choice check, with the valid names
        accepted = {}
    options = dict(enc.get("options") or {})
    moved = []
    for key in LEGACY_SPOT_ENCODER_KEYS:
        if key in enc:
            value = enc.pop(key)
            if key in accepted:  # a flat key is the older spelling of the same setting, and wins (an override)
                options[key] = value
                moved.append(key)
    if moved:
        warnings.warn(f"model.spot_encoder.{moved[0]} (and the other flat keys {moved[1:]}) are deprecated: write "
                      f"model.spot_encoder.options.{moved[0]}", DeprecationWarning, stacklevel=4)
    enc["options"] = options


def _check_component_options(config: Config) -> None:
    """Each registry-chosen component's ``options`` against its entry's signature (:data:`COMPONENT_OPTIONS`)."""
    for name_path, options_path in COMPONENT_OPTIONS.items():
        name, options = _get(config, name_path), _get(config, options_path)
        try:
            registry_of(name_path).check_options(name, options, where=options_path)
        except StgraphError as err:
            raise ConfigError(str(err)) from None


def _get(config: Config, path: str):
    node = config
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _reads(spec, path: str) -> bool:
    """Whether a model kind reads the option at dotted ``path`` (not under one of its ``spec.ignores``)."""
    return not any(path == p or path.startswith(p + ".") for p in spec.ignores)


def validate_config(config: Config) -> Config:
    """Cross-field checks the dataclass types cannot express (at load time, before any data is read); what
    the model kind needs comes from its class (:class:`~stgraph.models.ModelSpec`, ``check_config``)."""
    m, t = config.model, config.train
    model = registry_of("model.kind").get(m.kind)
    spec = model.spec
    if _reads(spec, "model.image_dgi") and (m.image_dgi.enabled or m.spot_dgi.enabled) and t.batching != "slide":
        raise ConfigError("DGI encoders run over a whole slide graph: set train.batching=slide")
    if m.image_encoder.cache_features and m.image_encoder.freeze != "all":
        raise ConfigError("model.image_encoder.cache_features needs model.image_encoder.freeze=all")
    enc = m.image_encoder
    if enc.cache_stage_input and enc.freeze != "all_but_last_stage":
        raise ConfigError("model.image_encoder.cache_stage_input needs model.image_encoder.freeze=all_but_last_stage")
    if (enc.context_scale is not None or enc.neighbour_context) and not enc.cache_features:
        raise ConfigError("model.image_encoder.context_scale / neighbour_context work on cached features: "
                          "set model.image_encoder.cache_features=true (and freeze=all)")
    if enc.context_scale is not None and not enc.context_scale > 0:
        raise ConfigError(f"model.image_encoder.context_scale must be > 0, got {enc.context_scale}")
    if spec.cached_features and not enc.cache_features:
        raise ConfigError(f"model.kind={m.kind} fits on cached backbone features: set "
                          "model.image_encoder.cache_features=true and freeze=all")
    if config.inference.reference not in spec.reference:
        raise ConfigError(f"model.kind={m.kind} stores {' or '.join(spec.reference)} embeddings in its reference: "
                          f"set inference.reference={spec.reference[0]}")
    model.check_config(config)
    if not 0.0 <= config.inference.smoothing <= 1.0:
        raise ConfigError(f"inference.smoothing must be in [0, 1], got {config.inference.smoothing}")
    tr = config.trust
    if tr.interval is not None and not 0.5 <= tr.interval <= 0.99:
        raise ConfigError(f"trust.interval must be a level in [0.50, 0.99] (or null), got {tr.interval}")
    if not 0.5 <= tr.ood_quantile < 1.0:
        raise ConfigError(f"trust.ood_quantile must be in [0.5, 1), got {tr.ood_quantile}")
    if tr.ood_k < 1:
        raise ConfigError(f"trust.ood_k must be ≥ 1, got {tr.ood_k}")
    if not 0.5 <= tr.ood_slide_quantile < 1.0:
        raise ConfigError(f"trust.ood_slide_quantile must be in [0.5, 1), got {tr.ood_slide_quantile}")
    if _reads(spec, "model.spot_encoder"):
        _check_graph_spot_encoder(config)
    _check_model_name(m.name)
    _check_component_options(config)
    _check_ranges(config, spec)
    _check_list_items(config)
    return config


def ignored_options(config: Config) -> list[str]:
    """``path=value`` of every option the config sets (differs from the default) that its model kind never
    reads (its spec's ``ignores``), in config order."""
    spec = registry_of("model.kind").get(config.model.kind).spec
    mine, default = _flat(config_to_dict(config)), _flat(config_to_dict(Config()))
    return [f"{path}={value!r}" for path, value in mine.items()
            if not _reads(spec, path) and value != default.get(path)]


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _warn_ignored(config: Config) -> None:
    ignored = ignored_options(config)
    if ignored:
        spec = registry_of("model.kind").get(config.model.kind).spec
        shown = ", ".join(ignored[:6]) + (f" and {len(ignored) - 6} more" if len(ignored) > 6 else "")
        warnings.warn(f"model.kind={config.model.kind} ignores {shown}: {spec.ignores_why}", IgnoredOptionWarning,
                      stacklevel=3)


#: List options whose every item must be one of a fixed set (path → valid items).
LIST_ITEM_CHOICES = {"model.hsic.branches": ("spot", "image")}


def _check_list_items(config: Config) -> None:
    """Each item of a list option is one of its choices (a typo would silently drop the term it names)."""
    for path, valid in LIST_ITEM_CHOICES.items():
        value = config
        for part in path.split("."):
            value = getattr(value, part)
        bad = [v for v in value if v not in valid]
        if bad:
            raise ConfigError(f"{path}: {bad} not among {list(valid)}")
        dup = sorted({v for v in value if list(value).count(v) > 1})
        if dup:
            raise ConfigError(f"{path}: {dup} listed more than once")


def _check_graph_spot_encoder(config: Config) -> None:
    """A spot encoder over the spot graph (its entry sets ``uses_graph``) sees whole slides."""
    name = config.model.spot_encoder.name
    if getattr(registry_of("model.spot_encoder.name").get(name), "uses_graph", False) and \
            config.train.batching != "slide":
        raise ConfigError(f"spot encoder {name!r} runs over a whole slide graph: set train.batching=slide")


def _check_model_name(name) -> None:
    """``model.name`` is a free label (``model.kind`` picks the model): refuse only an empty one."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("model.name must be a non-empty label (e.g. bleep, stgchb); model.kind picks the model")


def _check_ranges(config: Config, spec) -> None:
    """Numeric ranges, so a nonsensical value fails at load time rather than after (or instead of) training."""
    m, t, d, i = config.model, config.train, config.data, config.inference
    at_least = [("train.epochs", t.epochs, 1), ("train.batch_size", t.batch_size, spec.min_batch_size),
                ("inference.k", i.k, 1), ("inference.chunk_size", i.chunk_size, 1),
                ("inference.smoothing_steps", i.smoothing_steps, 1), ("model.embed_dim", m.embed_dim, 1),
                ("model.pca_components", m.pca_components, 1), ("data.patch_size", d.patch_size, 1),
                ("data.n_top_hvg", d.n_top_hvg, 1), ("data.harmony_pcs", d.harmony_pcs, 1),
                ("model.image_dgi.pretrain_epochs", m.image_dgi.pretrain_epochs, 0),
                ("model.spot_dgi.pretrain_epochs", m.spot_dgi.pretrain_epochs, 0)]
    for key, value, low in at_least:
        if value < low:
            why = (f" (model.kind={m.kind} needs at least {low} spots per batch)" if key == "train.batch_size"
                   else "")
            raise ConfigError(f"{key} must be ≥ {low}, got {value}{why}")
    positive = [("train.lr", t.lr), ("loss.temperature", config.loss.temperature)]
    if t.grad_clip is not None:
        positive.append(("train.grad_clip", t.grad_clip))
    if d.patch_um is not None:
        positive.append(("data.patch_um", d.patch_um))
    if d.graph.radius is not None:
        positive.append(("data.graph.radius", d.graph.radius))
    if d.graph.radius_factor is not None:
        positive.append(("data.graph.radius_factor", d.graph.radius_factor))
    if d.graph.radius_um is not None:
        positive.append(("data.graph.radius_um", d.graph.radius_um))
        if d.graph.radius is not None:
            raise ConfigError("data.graph.radius (pixels) and data.graph.radius_um (µm) are two answers to one "
                              "question: give one")
    for key, value in positive:
        if not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if d.n_top_expressed < 0:
        raise ConfigError(f"data.n_top_expressed must be ≥ 0, got {d.n_top_expressed}")
    inc = d.include_genes
    if inc is not None and not (isinstance(inc, str) or (isinstance(inc, list)
                                                         and all(isinstance(g, str) and g for g in inc))):
        raise ConfigError(f"data.include_genes must be a list of gene names or a gene-list file, got {inc!r}")
    if d.graph.knn is not None and d.graph.knn < 1:
        raise ConfigError(f"data.graph.knn must be ≥ 1, got {d.graph.knn}")
    if t.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be ≥ 0, got {t.weight_decay}")
    if t.accumulate < 1:
        raise ConfigError(f"train.accumulate must be ≥ 1, got {t.accumulate}")
    if t.accumulate > 1 and t.batching != "slide" and not t.within_slide:
        raise ConfigError("train.accumulate > 1 needs whole jobs per step (train.batching=slide or "
                          "train.within_slide=true); spot batches across slides grow with train.batch_size")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers must be ≥ 0, got {t.num_workers}")
    if not 0.0 <= t.val_fraction < 1.0:
        raise ConfigError(f"train.val_fraction must be in [0, 1), got {t.val_fraction}")


def config_from_dict(data: Mapping) -> Config:
    """Validate a raw mapping into a :class:`Config` (defaults fill what is missing; cross-field checks).

    The config's ``plugins`` (and the installed ``stgraph.plugins`` entry points) are imported first; the
    keys of earlier configs are mapped (``model.name: ridge`` → ``model.kind``, flat spot-encoder keys →
    ``model.spot_encoder.options``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    data = copy.deepcopy(dict(data))
    _import_plugins(data)
    _migrate_model_kind(data)
    _migrate_spot_graph_ridge_keys(data)
    _migrate_spot_encoder_keys(data)
    return validate_config(_build(Config, data, ""))


def config_to_dict(config: Config) -> dict:
    """The config as plain Python data (for YAML/JSON)."""
    return dataclasses.asdict(config)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (with ``base:`` inheritance), apply dotted overrides, validate.

    Parameters
    ----------
    path
        YAML file, or the name of a shipped config (``"stgraph"``, ``"cpu/bleep"``:
        :func:`~stgraph.config.shipped.find_config`); ``None`` starts from the defaults.
    overrides
        ``"dotted.key=value"`` strings, e.g. ``["train.epochs=5", "model.hsic.enabled=false"]``.
    """
    if path is not None:
        path = find_config(path)  # a file, or a shipped config by name ("stgraph", "cpu/bleep")
    data = _read_yaml(Path(path)) if path is not None else {}
    try:
        config = config_from_dict(apply_overrides(data, overrides))
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
    if path is not None:
        resolve_relative_paths(config, Path(path).resolve().parent)
    _warn_ignored(config)
    return config


#: Config values that name files, as (section path, attribute).
PATH_FIELDS = (("model.image_encoder", "weights"), ("data", "genes"), ("data", "include_genes"))
_GENE_SELECTION_KEYWORDS = ("hvg_union", "shared")


def resolve_relative_paths(config: Config, config_dir: Path) -> None:
    """Make relative file paths absolute: the working directory first, then the config file's folder."""
    for section_path, attr in PATH_FIELDS:
        section = config
        for part in section_path.split("."):
            section = getattr(section, part)
        value = getattr(section, attr)
        if not isinstance(value, str) or value in _GENE_SELECTION_KEYWORDS or Path(value).is_absolute():
            continue
        for root in (Path.cwd(), config_dir):
            candidate = (root / value).resolve()
            if candidate.exists():
                setattr(section, attr, str(candidate))
                break


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
