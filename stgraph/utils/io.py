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

__all__ = ["atomic_path", "atomic_dir", "atomic_save_npy", "atomic_write_text", "check_writable_dir",
           "check_output_file", "check_not_in_run_folder", "DestinationError", "check_apart", "file_fingerprint", "bytes_digest",
           "is_stgraph_output", "check_free_space", "DiskFullError",
           "FULL_HASH_BYTES"]


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
    if path.exists() or path.is_symlink():
        check_replaceable(path)
    check_writable_dir(path.parent, what=f"folder of {what}")
    check_not_in_run_folder(path, what)


def check_replaceable(path: str | os.PathLike) -> None:
    """``--force`` replaces only an output stgraph wrote (:func:`is_stgraph_output`), never a link or another
    file of the user's."""
    path = Path(path)
    if path.is_symlink():
        raise DestinationError(f"{path} is a symbolic link: stgraph does not write through it; choose another path")
    if not is_stgraph_output(path):
        raise DestinationError(f"{path} exists and is not an output stgraph wrote: --force replaces only stgraph's "
                               "own predictions and figures; move it or choose another path")


def check_not_in_run_folder(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse an output inside (at any depth) or onto a stgraph run folder, whose files are stgraph's alone
    (``--force`` would refuse to replace a run that holds the user's files); links are resolved first."""
    from .lock import LOCK_NAME

    path = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    for folder in dict.fromkeys([path, *path.parents, real, *real.parents]):
        # run.json is written first (state: training) and model.pt last: a run still training is a run too.
        if folder.is_dir() and ((folder / "run.json").is_file() or (folder / LOCK_NAME).is_file()):
            raise DestinationError(f"{what} {path}: {folder} is a stgraph run folder; write outputs elsewhere")


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_apart(output: str | os.PathLike, inputs, what: str = "output") -> None:
    """Refuse, before any compute, an ``output`` that is, contains or lies inside one of ``inputs`` (slides,
    images, configs, gene lists, the run): both sides resolved (links followed), so a link or ``..`` cannot
    hide the overlap. ``--force`` does not change this: an output never replaces what it was computed from."""
    out = Path(os.path.realpath(os.path.abspath(output)))
    for given in inputs:
        if given is None:
            continue
        src = Path(os.path.realpath(os.path.abspath(given)))
        if out == src:
            how = "is"
        elif _within(src, out):
            how = "contains"
        elif _within(out, src):
            how = "lies inside"
        else:
            continue
        raise DestinationError(f"{what} {output} {how} the input {given}: an output never replaces or mixes with "
                               "what it is computed from; choose another path")


class DiskFullError(StgraphError, OSError):
    """Not enough free space for an output, found before it is written."""


#: Free space kept beyond an output's estimated size (file system metadata, other writers).
FREE_SPACE_MARGIN = 64 * 2 ** 20


def check_free_space(path: str | os.PathLike, nbytes: int, what: str = "output") -> None:
    """Raise :class:`DiskFullError` naming ``path`` when its file system has less free space than ``nbytes``
    (an output's estimated size) plus :data:`FREE_SPACE_MARGIN`, before anything is written."""
    import shutil

    base = _existing_ancestor(Path(path))
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return
    if free < int(nbytes) + FREE_SPACE_MARGIN:
        raise DiskFullError(f"{what} {path} needs about {nbytes / 2**20:.1f} MiB and {base} has {free / 2**20:.1f} MiB "
                            "free: free some space or write elsewhere")


def is_stgraph_output(path: str | os.PathLike) -> bool:
    """Whether an existing file is an output stgraph wrote (so ``--force`` may replace it): a prediction
    ``.h5ad`` (``uns['stgraph']``), its ``.csv`` / ``.parquet`` export (columns ``spot, x, y`` first), or a
    figure whose PNG metadata says ``Software: stgraph``, or a SpatialData ``.zarr`` store whose root attributes
    carry ``stgraph``. Anything else is the user's."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and path.suffix.lower() == ".zarr":
        return _zarr_root_attrs(path).get("stgraph") is not None
    if path.is_symlink() or not path.is_file():
        return False
    suffix = path.suffix.lower()
    try:
        if suffix == ".h5ad":
            import h5py

            with h5py.File(path, "r") as f:
                return "uns" in f and "stgraph" in f["uns"]
        if suffix == ".csv":
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.readline().startswith("spot,x,y")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            return names[:2] == ["x", "y"] and "spot" in names
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                return str(getattr(im, "text", {}).get("Software", "")).startswith("stgraph")
    except Exception:  # unreadable: not provably ours
        return False
    return False


def _zarr_root_attrs(path: Path) -> dict:
    """The root group attributes of a zarr store (v3 ``zarr.json`` or v2 ``.zattrs``); ``{}`` when unreadable."""
    import json

    for name, nested in (("zarr.json", True), (".zattrs", False)):
        meta = path / name
        if meta.is_file() and not meta.is_symlink():
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            attrs = data.get("attributes", {}) if nested and isinstance(data, dict) else data
            return attrs if isinstance(attrs, dict) else {}
    return {}


#: Files up to this size are hashed whole; larger ones (whole-slide images) by a sampled fingerprint.
FULL_HASH_BYTES = 256 * 2 ** 20
_FINGERPRINTS: dict = {}


def file_fingerprint(path: str | os.PathLike) -> str:
    """A content identity of a file: ``sha256:<20 hex>`` of its bytes (up to :data:`FULL_HASH_BYTES`), or of
    its size and 64 blocks of 1 MiB spread evenly over it (head and tail included) for larger files. Never
    name, size and mtime alone: an image replaced under the same name, size and mtime (``cp -p``, ``rsync
    -t``, tar) gets another identity. Memoised within the process by path, size, mtime, ctime and inode (ctime
    cannot be set back by a copy)."""
    import hashlib

    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if memo in _FINGERPRINTS:
        return _FINGERPRINTS[memo]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            kind = "sha256"
        else:
            h.update(str(st.st_size).encode())
            step = (st.st_size - (1 << 20)) / 63
            for i in range(64):
                fh.seek(int(i * step))
                h.update(fh.read(1 << 20))
            kind = "sampled-sha256"
    out = f"{kind}:{h.hexdigest()[:20]}"
    _FINGERPRINTS[memo] = out
    return out


def bytes_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's whole bytes: the checksum stgraph records for an artefact it wrote and checks
    on read (a run's files, a saved index, a cached array)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    remove_dead_temporaries(path)
    # The writer's pid is in the name: a temporary whose writer was killed (kill -9 runs no cleanup) is
    # provably ours and provably abandoned, and the next write of the same file removes it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
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


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a path inside a temporary folder beside ``path`` (``.<name>.<pid>-<random>.tmp/<name>``) for an
    output that is a folder (a ``.zarr`` store); when the block succeeds it is renamed onto ``path``.

    An existing ``path`` (with ``overwrite``) is moved aside first and removed only once the new folder is in
    place (moved back if that rename fails), so ``path`` holds the old output or the whole new one, never a
    half-written one. The temporary folder is removed when the block fails; one left by a killed writer is
    removed by the next write of the same path (:func:`remove_dead_temporaries`).
    Raises ``FileExistsError`` (naming the folder) when ``path`` exists and ``overwrite`` is false.
    """
    import shutil

    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite/--force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp"))
    target = work / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to the temporary {target}")
        old = None
        if path.exists() or path.is_symlink():
            old = work / f".old-{path.name}"
            os.replace(path, old)
        try:
            os.replace(target, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_dead_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` (files) and :func:`atomic_dir` (folders) left beside
    ``path`` when their writer died (``.<name>.<pid>-<random>.tmp`` whose pid is no longer alive on this host);
    returns what was removed."""
    import re

    from .lock import _pid_alive

    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            p = path.parent / name
            if p.is_symlink():
                continue
            if p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
            elif p.is_dir():
                import shutil

                shutil.rmtree(p, ignore_errors=True)
                if not p.exists():
                    removed.append(p)
    return removed


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (no ``.npy`` suffix games: writes through a file object)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
