"""Atomic writes: a file appears complete or not at all, and an existing file is never half-overwritten.

Also the destination checks every command runs before any compute (:func:`check_writable_dir`,
:func:`check_output_file`), so an OS error never arrives after the work is done.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import StgraphError

__all__ = ["atomic_path", "atomic_save_npy", "atomic_write_text", "check_writable_dir", "check_output_file",
           "check_not_in_run_folder", "DestinationError"]


class DestinationError(StgraphError, OSError):
    """An output path cannot be written (read-only folder, a folder where a file is expected, wrong suffix)."""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> None:
    """Raise :class:`DestinationError` unless ``path`` is (or can be created as) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DestinationError(f"{what} {path} exists and is not a folder")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise DestinationError(f"{what} {path}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK) or not _can_create_in(base):
        raise DestinationError(f"{what} {path}: {base} is not writable")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder``: ``os.access`` says yes to root everywhere, and to
    anyone on a read-only mount or in ``/proc``."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".stgraph-probe-", suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def check_output_file(path: str | os.PathLike, suffixes: Optional[tuple[str, ...]] = None,
                      force: bool = False, what: str = "output file") -> None:
    """Raise before any compute when ``path`` cannot receive the output: an existing folder, a wrong suffix,
    an existing file without ``force``, or an unwritable parent folder."""
    path = Path(path)
    if path.is_dir():
        raise DestinationError(f"{what} {path} is an existing folder, not a file")
    if suffixes and path.suffix.lower() not in suffixes:
        raise DestinationError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (use --force to replace it)")
    check_writable_dir(path.parent, what=f"folder of {what}")
    check_not_in_run_folder(path, what)


def check_not_in_run_folder(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse an output inside (or onto) a stgraph run folder, whose files are stgraph's alone (``--force``
    would refuse to replace a run that holds the user's files)."""
    from .lock import LOCK_NAME

    path = Path(os.path.abspath(path))
    for folder in (path, path.parent):
        # run.json is written first (state: training) and model.pt last: a run still training is a run too.
        if folder.is_dir() and ((folder / "run.json").is_file() or (folder / LOCK_NAME).is_file()):
            raise DestinationError(f"{what} {path}: {folder} is a stgraph run folder; write outputs elsewhere")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The file gets the mode an ordinary ``open`` would give it (``0666 & ~umask``), not ``mkstemp``'s 0600.
    The temporary is removed when the block fails (exception or ``KeyboardInterrupt``).
    Raises ``FileExistsError`` (naming the file) when ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite/--force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (no ``.npy`` suffix games: writes through a file object)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
