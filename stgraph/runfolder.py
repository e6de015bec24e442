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
    <out>/run.json           provenance + ``"state"``: ``training`` from the start, ``complete`` when written
    <out>/.stgraph.lock      while a writer owns the folder (:mod:`stgraph.utils.lock`)

``run.json`` is written first (``"state": "training"``) and rewritten atomically as ``"complete"`` once every
other file is in place; a run whose ``run.json`` has no ``"state"`` was written before the state was recorded
(and then last), so it is complete. :func:`load_run` refuses a run that is not complete, by name.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ConfigError, config_from_dict, config_to_dict
from .errors import StgraphError
from .models import create_model
from .preprocess.prepare import Preprocessor
from .retrieval.reference import ReferenceStore, saved_index_store
from .trust import TRUST_FILE, TrustRecord
from .utils import atomic_path, atomic_write_text, resolve_device
from .utils.lock import LOCK_NAME, is_locked

__all__ = ["Run", "RUN_FILES", "CheckpointError", "ModelFolderError", "load_checkpoint", "save_model",
           "load_run", "read_run_info", "write_run_info", "run_state", "foreign_entries", "clean_stale_files",
           "remove_run_tree", "STATE_TRAINING", "STATE_COMPLETE", "RUN_FOLDER_NAMES", "CHECKED_FILES", "file_records",
           "verify_run_files"]

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
    trust
        The :class:`~stgraph.trust.TrustRecord` (``trust.npz``: per-gene reliability, interval calibration,
        the out-of-distribution reference), or ``None`` (switched off, one training slide, an older run).
    """

    def __init__(self, model, config, preprocessor: Preprocessor, reference: ReferenceStore,
                 result: Optional[Any] = None, run_dir: Optional[Path] = None, info: Optional[dict] = None,
                 trust=None):
        self.model = model
        self.trust = trust
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
    from .utils.io import check_free_space

    check_free_space(path, sum(t.numel() * t.element_size() for t in state["model"].values()), what="model")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a run folder written by :func:`stgraph.training.train_model`.

    Raises :class:`ModelFolderError` naming the folder and the missing/corrupt file.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        olds = sorted(run_dir.parent.glob(f".{run_dir.name}.old-*")) if run_dir.parent.is_dir() else []
        if olds:  # a `train --force` killed between the two renames of its swap
            raise ModelFolderError(f"model folder {run_dir} is missing, and {olds[-1].name} beside it is the run a "
                                   f"killed `train --force` moved aside: the next `stgraph train --out {run_dir}` "
                                   "(or `--resume`) puts it back")
        raise FileNotFoundError(f"model folder not found: {run_dir}")
    if (run_dir / "run.json").is_file():
        info = read_run_info(run_dir)
        if run_state(info) != STATE_COMPLETE:
            busy = is_locked(run_dir)
            raise ModelFolderError(
                f"run {run_dir} is not complete (run.json state: {run_state(info)!r}): "
                + ("it is being written right now; wait for it to finish" if busy else
                   "its training was interrupted; finish it with `stgraph train --resume --out "
                   f"{run_dir} ...` (same config and slides) or train it again"))
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        hint = ("was training interrupted? resume it with `stgraph train --resume`"
                if (run_dir / "checkpoints" / "last.pt").is_file() else "train it again")
        raise ModelFolderError(f"model folder {run_dir} is incomplete: missing {missing} ({hint})")
    verify_run_files(run_dir, read_run_info(run_dir))  # before any file is read into memory
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
    info = read_run_info(run_dir)
    trust = None
    if (run_dir / TRUST_FILE).is_file():
        try:
            trust = TrustRecord.load(run_dir / TRUST_FILE)
        except (OSError, ValueError, KeyError) as err:
            raise ModelFolderError(f"{run_dir / TRUST_FILE}: not a readable trust record ({err})") from err
        if list(trust.genes) != list(preprocessor.genes):
            raise ModelFolderError(f"{run_dir / TRUST_FILE}: its genes differ from genes.txt")
    recorded = info.get("n_reference_spots")
    if recorded is not None and int(recorded) != reference.n_spots:
        raise ModelFolderError(f"{run_dir / 'reference.h5'} holds {reference.n_spots} spots where run.json records "
                               f"{recorded}: the file was changed or replaced; restore it or train the run again")
    return Run(model, config, preprocessor, reference, None, run_dir, info=info, trust=trust)


# ------------------------------------------------------------------------------------- state and ownership
#: ``run.json`` ``"state"`` while a writer (train, --resume) builds the run, and once it is complete.
STATE_TRAINING, STATE_COMPLETE = "training", "complete"

#: Every name stgraph writes at the top of a run folder (anything else there is the user's).
RUN_FOLDER_NAMES = frozenset(RUN_FILES) | {"preprocess.json", "preprocess.npz", "reference.prev.h5", "log.csv",
                                           "trust.npz", "loss_curve.png", "checkpoints", LOCK_NAME}
#: Names inside ``checkpoints/``.
CHECKPOINT_NAMES = frozenset({"best.pt", "last.pt"})
#: :func:`~stgraph.utils.atomic_path`'s temporaries: ``.<name>.<random>.tmp``.
_TMP = re.compile(r"^\.(?P<name>[^/]+?)\.[A-Za-z0-9_-]+\.tmp$")
#: The suffix of a build or swap folder of ours beside a run: ``.new-`` / ``.old-`` and mkdtemp's 8 characters.
_LEFTOVER = re.compile(r"^\.(new|old)-[A-Za-z0-9_]{8}$")
#: :func:`~stgraph.utils.io.check_writable_dir`'s probe files.
_PROBE = re.compile(r"^\.stgraph-probe-[A-Za-z0-9_]+\.tmp$")


def _known(name: str, known) -> bool:
    """A name stgraph writes: one of ``known``, or a saved kNN index of one (``reference.h5.<key>.faiss``)."""
    return name in known or saved_index_store(name) in known


def read_run_info(run_dir: str | Path) -> dict:
    """``run.json`` as a mapping; :class:`ModelFolderError` naming the file when it is not one."""
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(info, dict):
        raise ModelFolderError(f"{path}: expected a JSON object (mapping), got {type(info).__name__}; "
                               "this is not a run.json stgraph wrote")
    return info


def write_run_info(run_dir: str | Path, info: dict) -> None:
    """Rewrite ``run.json`` atomically (a kill leaves the old or the new one, never half of either)."""
    atomic_write_text(Path(run_dir) / "run.json", json.dumps(info, indent=2, default=float))


#: Run files whose size and SHA-256 ``run.json`` records (``"files"``) and :func:`load_run` checks.
CHECKED_FILES = ("config.yaml", "genes.txt", "model.pt", "reference.h5", "trust.npz")


def file_records(run_dir: str | Path, names=CHECKED_FILES) -> dict:
    """``{name: {"bytes": size, "sha256": hex}}`` of the run files that exist: what ``run.json`` records of the
    files it describes, written last."""
    from .utils.io import bytes_digest

    run_dir = Path(run_dir)
    return {n: {"bytes": (run_dir / n).stat().st_size, "sha256": bytes_digest(run_dir / n)}
            for n in names if (run_dir / n).is_file()}


def verify_run_files(run_dir: str | Path, info: dict) -> None:
    """Refuse a run whose files are not those ``run.json`` describes (changed, replaced by another run's,
    truncated or damaged after it was written), naming the file; runs written before the record are not
    checked."""
    from .utils.io import bytes_digest

    run_dir = Path(run_dir)
    for name, record in (info.get("files") or {}).items():
        path = run_dir / name
        if path.is_symlink():
            raise ModelFolderError(f"{path} is a link: a run's files are its own; copy the run instead of linking")
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing (run.json records it): the run is incomplete")
        if path.stat().st_size != record.get("bytes") or bytes_digest(path) != record.get("sha256"):
            raise ModelFolderError(f"{path} is not the file run.json records (changed, replaced, truncated or "
                                   "damaged since the run was written): restore it or train the run again")


def run_state(info: dict) -> str:
    """``training`` or ``complete`` (a ``run.json`` without ``"state"`` predates it and was written last)."""
    return str(info.get("state", STATE_COMPLETE))


def _is_run_info(path: Path) -> bool:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "state" in info or (
        isinstance(info, dict) and {"created", "method", "n_reference_spots"} <= set(info))


def foreign_entries(folder: str | Path) -> list[str]:
    """Names in ``folder`` that show it is not (only) a stgraph run, so replacing it could lose something.

    Empty when ``folder`` is empty, or is a run folder of ours (its ``run.json`` or lock record) holding
    nothing but the names stgraph writes (:data:`RUN_FOLDER_NAMES`, ``checkpoints/best.pt|last.pt`` and
    their temporaries). A folder without ``run.json`` or lock holding only the files a first ``train`` writes
    before its first checkpoint (``config.yaml``, ``genes.txt``, ``preprocess.*``) is a failed start of ours.
    """
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return []

    def ours(name: str, known) -> bool:
        m = _TMP.match(name)
        return _known(name, known) or bool(m and _known(m.group("name"), known)) or bool(_PROBE.match(name))

    foreign = [n for n in names if not ours(n, RUN_FOLDER_NAMES)]
    ckpt = folder / "checkpoints"
    if ckpt.is_symlink() or (ckpt.exists() and not ckpt.is_dir()):
        foreign.append("checkpoints")
    elif ckpt.is_dir():
        foreign += [f"checkpoints/{p.name}" for p in sorted(ckpt.iterdir())
                    if not ours(p.name, CHECKPOINT_NAMES) or p.is_dir()]
    if foreign:
        return foreign
    marked = _is_run_info(folder / "run.json") or (folder / LOCK_NAME).is_file()
    failed_start = set(names) <= {"config.yaml", "genes.txt", "preprocess.json", "preprocess.npz", "checkpoints"}
    if marked or (failed_start and not (ckpt / "last.pt").exists()):
        return []
    return [n for n in names if n != "checkpoints"] or ["checkpoints/"]


def remove_run_tree(folder: str | Path) -> None:
    """Remove a run folder of ours with its lock file last, so a kill halfway leaves it recognisable."""
    folder = Path(folder)
    for child in folder.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (folder / LOCK_NAME).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def clean_stale_files(run_dir: str | Path) -> list[Path]:
    """Remove what killed writers left, called by a writer that holds ``run_dir``'s lock.

    Only what is provably ours goes: temporaries named ``.<run file>.<random>.tmp`` in the run folder and in
    ``checkpoints/``, and sibling build folders ``.<run>.new-*`` / leftovers ``.<run>.old-*`` (beside an
    existing run) that are empty or carry our lock file with no live owner. Returns the removed paths.
    """
    run_dir = Path(run_dir)
    removed = []
    for folder, known in ((run_dir, RUN_FOLDER_NAMES), (run_dir / "checkpoints", CHECKPOINT_NAMES)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TMP.match(p.name)
            if (m and _known(m.group("name"), known) or _PROBE.match(p.name)) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    parent = run_dir.parent
    if parent.is_dir():
        for which in ("new", "old"):
            for p in parent.glob(f".{run_dir.name}.{which}-*"):
                if p.is_symlink() and _LEFTOVER.match(p.name[len(run_dir.name) + 1:]):
                    p.unlink()  # a link an earlier release's swap moved aside: the link only, never its target
                    removed.append(p)
                    continue
                if not p.is_dir() or (which == "old" and not run_dir.exists()):
                    continue
                entries = list(p.iterdir())
                if entries and not ((p / LOCK_NAME).is_file() and not is_locked(p)):
                    continue  # not provably ours, or its writer is alive
                remove_run_tree(p)
                removed.append(p)
    return removed
