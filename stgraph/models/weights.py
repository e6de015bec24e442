"""Where a backbone's pretrained weights come from, looked up the way timm and the Hugging Face hub find them.

A config names a timm model (``model.image_encoder.backbone: mobilenetv2_100``) and ``pretrained: true``,
with no machine path. :func:`resolve_weights` looks, in order, in

1. ``model.image_encoder.weights``: a file named in the config (a missing one is an error, not skipped);
2. the folder ``$STGRAPH_WEIGHTS``: a file named after the model, ``<model>.<suffix>`` or
   ``<model>.<tag>.<suffix>`` (``mobilenetv2_100.imagenet.pth``, ``resnet50.a1_in1k.safetensors``); for a hub
   id ``hf-hub:org/name`` also ``org/name/{model.safetensors,pytorch_model.bin}`` and ``name.<suffix>``;
3. the local caches timm downloads into: the Hugging Face hub cache (``huggingface_hub.try_to_load_from_cache``
   on the model's ``hf_hub_id``; ``$HF_HUB_CACHE``/``$HF_HOME``) and torch's hub folder for URL weights;
4. the hub itself, unless ``HF_HUB_OFFLINE`` is set or the hub's host cannot be reached (a 3 s connection
   probe, so an offline machine fails at once instead of after the hub client's retries).

Nothing is downloaded here: the result tells :class:`~stgraph.models.image_encoders.TimmImageEncoder` which
file to load (timm's ``pretrained_cfg_overlay=dict(file=...)``) or that timm may download. When every place
fails, one :class:`WeightsNotFoundError` names the config key and every place looked.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from ..errors import StgraphError

__all__ = ["ENV_VAR", "WeightsSource", "WeightsNotFoundError", "PretrainedWeightsError", "resolve_weights",
           "check_pretrained_weights"]

log = logging.getLogger(__name__)

#: Environment variable naming a folder of local weight files.
ENV_VAR = "STGRAPH_WEIGHTS"
#: Weight file suffixes, in order of preference (safetensors cannot run code on load).
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: File names a hub repository stores its weights under (timm, then transformers/open_clip).
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
HUB_PREFIX = "hf-hub:"
KEY = "model.image_encoder.weights"


class PretrainedWeightsError(StgraphError, RuntimeError):
    """Raised when pretrained weights cannot be loaded (corrupt file, key mismatch, no hub access)."""


class WeightsNotFoundError(PretrainedWeightsError, FileNotFoundError):
    """No pretrained weights anywhere stgraph looks; the message names the config key and every place."""


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from: a local ``file``, or ``None`` when timm loads them from the hub."""

    file: Optional[Path]
    origin: str  # "config", "$STGRAPH_WEIGHTS", "hub cache", "torch hub cache", "hub"

    @property
    def label(self) -> str:
        """A short name of the weights, for cache keys and logs (the file's stem, or ``imagenet`` for the hub
        default)."""
        if self.file is None:
            return "imagenet"
        name = self.file.name
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return self.file.stem


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, read from the environment now (the hub client reads
    the same variables, once, at import)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy in use) opens within ``timeout`` seconds."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else _hub_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cache_dir() -> str:
    """The Hugging Face hub cache as the hub client finds it (``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
    ``~/.cache/huggingface/hub``), read from the environment now rather than at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


def _model_name(backbone: str, architecture: Optional[str]) -> str:
    return architecture if backbone.startswith(HUB_PREFIX) and architecture else backbone


def _folder_candidates(folder: Path, backbone: str, architecture: Optional[str]) -> list[Path]:
    """Files in ``folder`` named after the model: ``<name>.<suffix>`` first, then ``<name>.<tag>.<suffix>``.
    The character after the name must be a dot, so ``resnet50`` never matches ``resnet50d.pth``."""
    names = []
    if backbone.startswith(HUB_PREFIX):
        repo = backbone[len(HUB_PREFIX):]
        sub = folder / repo
        found = [sub / f for f in HUB_FILENAMES if (sub / f).is_file()]
        if found:
            return found
        names.append(repo.rsplit("/", 1)[-1])
        if architecture:
            names.append(architecture)
    else:
        names.append(backbone)
    out: list[Path] = []
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return []
    for name in names:
        exact = [folder / f"{name}{s}" for s in SUFFIXES if (folder / f"{name}{s}").is_file()]
        tagged = [p for p in files if p.name.startswith(f"{name}.") and p.suffix in SUFFIXES and p not in exact]
        out += exact + tagged
    return out


def _hub_cache_candidates(backbone: str) -> tuple[list[Path], list[str]]:
    """Cached files of the model's hub repository (and of timm's URL weights in torch's hub folder), and a
    description of where this looked."""
    import timm

    looked: list[str] = []
    found: list[Path] = []
    repo, url, filename = None, None, None
    if backbone.startswith(HUB_PREFIX):
        repo = backbone[len(HUB_PREFIX):]
    else:
        try:
            cfg = timm.models.get_pretrained_cfg(backbone)
        except Exception:  # noqa: BLE001 - an unknown name is reported by the model factory
            cfg = None
        if cfg is not None:
            repo, url, filename = cfg.hf_hub_id, cfg.url, cfg.hf_hub_filename
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        try_to_load_from_cache = None
    cache = hub_cache_dir()
    if repo and try_to_load_from_cache is not None:
        repo_id = repo.split("@", 1)[0]
        for name in ([filename] if filename else []) + list(HUB_FILENAMES):
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache)
            if isinstance(hit, str) and Path(hit).is_file():
                found.append(Path(hit))
                break
        looked.append(f"the Hugging Face hub cache {cache} ({repo_id}: not cached)" if not found
                      else f"the Hugging Face hub cache {cache}")
    if url and not found:
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if path.is_file():
            found.append(path)
        looked.append(f"torch's hub cache {path}")
    return found, looked


def resolve_weights(backbone: str, weights: Optional[str] = None, architecture: Optional[str] = None,
                    *, key: str = KEY, probe_timeout: float = 3.0) -> WeightsSource:
    """Find the pretrained weights of a timm ``backbone`` (see the module docstring for the order).

    Raises :class:`WeightsNotFoundError` naming ``key`` and every place looked when there are none and the
    hub cannot be used.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            log.debug("pretrained weights of %s from %s: %s", backbone, key, path)
            return WeightsSource(path, "config")
        raise WeightsNotFoundError(f"{key}: pretrained weights file not found: {path} (set {key}=null to look "
                                   f"in ${ENV_VAR} and the hub cache, or pretrained=false)")
    looked = [f"{key} (not set)"]
    folder = os.environ.get(ENV_VAR)
    name = _model_name(backbone, architecture)
    if folder:
        root = Path(folder).expanduser()
        found = _folder_candidates(root, backbone, architecture) if root.is_dir() else []
        if found:
            if len(found) > 1:
                log.info("%s holds %d files for %s; using %s", ENV_VAR, len(found), name, found[0].name)
            log.debug("pretrained weights of %s from $%s: %s", backbone, ENV_VAR, found[0])
            return WeightsSource(found[0], f"${ENV_VAR}")
        what = f"no {name}.*{{{','.join(SUFFIXES)}}} file" if root.is_dir() else "not a folder"
        looked.append(f"${ENV_VAR}={root} ({what})")
    else:
        looked.append(f"${ENV_VAR} (not set)")
    cached, where = _hub_cache_candidates(backbone)
    looked += where
    if cached:
        hub_id_without_architecture = backbone.startswith(HUB_PREFIX) and not architecture
        log.debug("pretrained weights of %s from the hub cache: %s", backbone, cached[0])
        # A hub id needs its timm architecture to load a bare file; without it timm reads the cache itself.
        return WeightsSource(None if hub_id_without_architecture else cached[0], "hub cache")
    if hub_offline():
        looked.append("the hub (HF_HUB_OFFLINE is set)")
    elif not hub_reachable(probe_timeout):
        looked.append(f"the hub ({_hub_endpoint()} cannot be reached: offline?)")
    else:
        log.debug("pretrained weights of %s: downloaded by timm from the hub", backbone)
        return WeightsSource(None, "hub")
    raise WeightsNotFoundError(
        f"{key}: no pretrained weights for {backbone!r}. Looked in: " + "; ".join(looked)
        + f". Put a {name}.pth (or .safetensors) file in a folder named by ${ENV_VAR}, set {key}=FILE, "
        "or set model.image_encoder.pretrained=false")


def check_pretrained_weights(config) -> Optional[WeightsSource]:
    """:func:`resolve_weights` for a config's image encoder, or ``None`` when it is not pretrained."""
    cfg = config.model.image_encoder
    if not cfg.pretrained:
        return None
    return resolve_weights(cfg.backbone, cfg.weights, cfg.architecture)
