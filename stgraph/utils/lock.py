"""Advisory ownership of a folder while it is written: one writer at a time, a dead writer's lock is stale.

A writer holds ``<folder>/.stgraph.lock``: an exclusive ``fcntl.flock`` on that file (released by the
kernel when the process dies, ``kill -9`` included) plus the owner's record in it (pid, host, start time,
command), which names the owner in the refusal of a second writer. A record left by a writer whose pid is
gone on this host is stale and taken over; a record of a live pid on this host is honoured even when the
file system does not enforce ``flock``; a record from another host cannot be checked and is refused with
the lock file's path (remove it if that writer is gone).

The lock lives inside the folder, so it moves with it: a run folder swapped aside by ``train --force``
carries its writer's lock, and a hidden ``.<run>.new-*`` build folder carries its own.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional

from ..errors import StgraphError

__all__ = ["LOCK_NAME", "FolderLock", "FolderLockedError", "is_locked", "check_unlocked"]

#: The lock file's name inside the owned folder.
LOCK_NAME = ".stgraph.lock"
#: Open flag that refuses to follow a symbolic link in the last path component (0 where the OS has none).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class FolderLockedError(StgraphError, RuntimeError):
    """Another process is writing the folder (or its lock record cannot be proven stale)."""


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _fcntl():
    try:
        import fcntl
    except ImportError:  # Windows: the recorded owner alone decides
        return None
    return fcntl


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is gone for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_record(path: Path) -> Optional[dict]:
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)  # never read through a link planted as the lock
    except OSError:
        return None
    try:
        with os.fdopen(fd, "r") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        record = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _describe(record: Optional[dict]) -> str:
    if not record:
        return "another process"
    cmd = record.get("command")
    return (f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')}"
            + (f" ({cmd})" if cmd else ""))


def _live_foreign_record(record: Optional[dict]) -> bool:
    """A record that names a writer which may still be alive (its pid on this host, or another host)."""
    if not record:
        return False
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)


def is_locked(folder: str | os.PathLike) -> bool:
    """Whether a live writer holds ``folder`` (probe only: takes nothing, creates nothing)."""
    return _holder(Path(folder)) is not None


def _holder(folder: Path) -> Optional[dict]:
    """The record of a live holder of ``folder``'s lock ({} when unnamed), else ``None``."""
    path = folder / LOCK_NAME
    if not path.is_file() or path.is_symlink():
        return None
    record = _read_record(path)
    fcntl = _fcntl()
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                if record and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
                    return None  # this process holds it (a writer re-checking its own folder)
                return record or {}
            raise
        finally:
            os.close(fd)
    return record if _live_foreign_record(record) else None


def check_unlocked(folder: str | os.PathLike, what: str = "run folder") -> None:
    """Raise :class:`FolderLockedError` naming the owner when a live writer holds ``folder``."""
    folder = Path(folder)
    record = _holder(folder)
    if record is not None:
        raise FolderLockedError(f"{what} {folder} is being written by {_describe(record)}; wait for it to "
                                f"finish{_other_host_hint(record, folder / LOCK_NAME)}")


def _other_host_hint(record: Optional[dict], path: Path) -> str:
    """Only a record from another host may need a person: its process cannot be checked from here. A live
    writer on this host (its flock held) is never to be removed by hand, and a dead one's lock is taken over."""
    if record and record.get("host") not in (None, socket.gethostname()):
        return (f" (it runs on another host, which stgraph cannot check from here: only if that process has "
                f"ended, remove {path})")
    return ""


class FolderLock:
    """Exclusive ownership of ``folder`` (which must exist) while it is written.

    ``with FolderLock(run_dir, what="run folder"):`` or ``acquire()`` / ``release()``. Raises
    :class:`FolderLockedError` naming the owner when another live writer holds it. Releasing removes the lock
    file (only when it is still the one this lock created).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run folder"):
        self.folder = Path(folder)
        self.what = what
        self._fd: Optional[int] = None
        self._record: Optional[dict] = None
        self.stale: Optional[dict] = None  #: the record of a dead writer this lock took over, if any

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        fcntl = _fcntl()
        for _ in range(10):  # the file may be unlinked by its releasing owner between open and flock
            try:
                # Never through a link: a link planted as the lock would have the user's file truncated.
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
            except OSError as err:
                if err.errno == errno.ELOOP or self.path.is_symlink():
                    raise FolderLockedError(f"{self.path} is a symbolic link, not stgraph's lock file: stgraph never "
                                            "writes through it; move it away") from None
                raise
            if not _is_regular(fd):
                os.close(fd)
                raise FolderLockedError(f"{self.path} is not a regular file: stgraph writes its lock there; move it away")
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as err:
                        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                            raise FolderLockedError(
                                f"{self.what} {self.folder} is being written by {_describe(_read_record(self.path))}; "
                                "wait for it to finish") from None
                        raise
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                record = _read_record(self.path)
                if _live_foreign_record(record):
                    raise FolderLockedError(
                        f"{self.what} {self.folder} is recorded as being written by {_describe(record)}; wait for "
                        f"it to finish{_other_host_hint(record, self.path)}")
                self.stale = record
                mine = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300]}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(mine).encode(), 0)
                os.fsync(fd)
                self._fd, self._record = fd, mine
                return self
            except BaseException:
                if self._fd is None:
                    os.close(fd)
                raise
        raise FolderLockedError(f"{self.what} {self.folder}: could not take {self.path} (it keeps changing)")

    def verify(self) -> None:
        """Raise :class:`FolderLockedError` unless the lock file is still this lock's: the same file (inode)
        holding this writer's record. A writer calls it before each write and before its final swap, so a
        lock removed or replaced meanwhile (by hand, or by a writer that took it over) stops it before it
        writes anything more."""
        if self._fd is None:
            raise FolderLockedError(f"{self.what} {self.folder}: this process does not hold its lock")
        try:
            st = os.stat(self.path, follow_symlinks=False)
            same = st.st_ino == os.fstat(self._fd).st_ino and st.st_dev == os.fstat(self._fd).st_dev
        except FileNotFoundError:
            same = False
        if not same or _read_record(self.path) != self._record:
            raise FolderLockedError(f"{self.what} {self.folder}: its lock {self.path} was removed or replaced while this "
                                    f"process held it ({_describe(_read_record(self.path))} holds it now); nothing "
                                    "more is written")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
