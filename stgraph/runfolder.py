"""One trained run, in memory and on disk: :class:`Run`, its folder layout, checkpoints, save and load.

Both the training job (which writes a run) and inference (which reads one) use this module; neither
imports the other.

Run folder layout::

    <out>/config.yaml        resolved config
    <out>/genes.txt          the model's genes (prediction columns)
    <out>/preprocess.*       fitted preprocessing (PCA of the gene branch, provenance)
    <out>/model.pt           best weights (backbone included) + what is needed to rebuild the model
    <out>/reference.h5       the reference: embeddings + expression + genes + slide ids
    <out>/checkpoints/       best.pt, last.pt (for resume)
    <out>/log.csv            per-epoch losses, one column per term; loss_curve.png
    <out>/run.json           provenance; written last, so its presence marks a complete run
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ConfigError, config_from_dict, config_to_dict
from .errors import StgraphError
from .models import create_model
from .preprocess.prepare import Preprocessor
from .retrieval.reference import ReferenceStore
from .utils import atomic_path, resolve_device

__all__ = ["Run", "RUN_FILES", "CheckpointError", "ModelFolderError", "load_checkpoint", "save_model",
           "load_run"]

#: Files a complete run folder holds; ``run.json`` is written last.
RUN_FILES = ("config.yaml", "genes.txt", "model.pt", "reference.h5", "run.json")


class CheckpointError(StgraphError, ValueError):
    """A checkpoint file is missing, truncated or does not match the model."""


class ModelFolderError(StgraphError, ValueError):
    """A run folder is incomplete or one of its files is corrupt."""


class Run:
    """A trained model with everything prediction needs.

    ``train_model`` returns one (with the training ``result``); :func:`load_run` reads one from its folder
    (``result`` is then ``None``).

    Attributes
    ----------
    model
        The :class:`~stgraph.models.ContrastiveSTModel`.
    config
        Its :class:`~stgraph.config.Config`.
    preprocessor
        The fitted :class:`~stgraph.preprocess.prepare.Preprocessor`.
    reference
        The :class:`~stgraph.retrieval.ReferenceStore` (embeddings + expression of the training spots).
    result
        :class:`~stgraph.training.TrainResult` (history, best epoch) after training, else ``None``.
    info
        The provenance of ``run.json`` (training slides, ``resolution``, ...).
    run_dir
        The run folder, or ``None`` for an in-memory run.
    """

    def __init__(self, model, config, preprocessor: Preprocessor, reference: ReferenceStore,
                 result: Optional[Any] = None, run_dir: Optional[Path] = None, info: Optional[dict] = None):
        self.model = model
        self.config = config
        self.preprocessor = preprocessor
        self.reference = reference
        self.result = result
        self.run_dir = run_dir
        self.info = dict(info or {})

    @property
    def resolution(self) -> Optional[dict]:
        """The physical resolution it was trained at (``run.json`` ``"resolution"``; see
        :mod:`stgraph.preprocess.resolution`), or ``None`` for runs written before it was recorded."""
        return self.info.get("resolution")

    @property
    def genes(self) -> list[str]:
        return list(self.reference.genes)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Run":
        """Same as :func:`load_run`."""
        return load_run(path, device)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by the trainer, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: checkpoint has no 'model' state")
    return state


def save_model(path: Path, model, config, spot_in_dim: int, best_epoch: int) -> None:
    """Write ``model.pt``: weights + the config and input width needed to rebuild the model (atomic)."""
    state = {"model": model.state_dict(), "config": config_to_dict(config), "spot_in_dim": spot_in_dim,
             "best_epoch": best_epoch, "format": 1}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a run folder written by :func:`stgraph.training.train_model`.

    Raises :class:`ModelFolderError` naming the folder and the missing/corrupt file.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {run_dir}")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        hint = ("was training interrupted? resume it with `stgraph train --resume`"
                if (run_dir / "checkpoints" / "last.pt").is_file() else "train it again")
        raise ModelFolderError(f"model folder {run_dir} is incomplete: missing {missing} ({hint})")
    try:
        state = load_checkpoint(run_dir / "model.pt")
        config = config_from_dict(state["config"])
    except (CheckpointError, ConfigError, KeyError) as err:
        raise ModelFolderError(f"{run_dir / 'model.pt'}: {err}") from err
    preprocessor = Preprocessor.load(run_dir)
    model = create_model(config, int(state["spot_in_dim"]), pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ModelFolderError(f"{run_dir / 'model.pt'}: weights do not match the config ({err})") from err
    model.to(resolve_device(device)).eval()
    reference = ReferenceStore.load(run_dir / "reference.h5")
    if list(reference.genes) != list(preprocessor.genes):
        raise ModelFolderError(f"{run_dir}: reference.h5 genes differ from genes.txt")
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{run_dir / 'run.json'}: not readable JSON ({err})") from err
    return Run(model, config, preprocessor, reference, None, run_dir, info=info if isinstance(info, dict) else {})
