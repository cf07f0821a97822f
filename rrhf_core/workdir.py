"""One run at a time per workdir: an advisory lock (``flock``) on ``<workdir>/.rrhf.lock``.

The lock belongs to the open file, so the kernel releases it when the holder exits in any way (``kill -9``
included): a lock file left behind never blocks the next run. The file records who holds it (pid, host, command,
start time) for the error the next run prints. Re-entrant within one process (a flow calling another flow on the
same workdir keeps the one lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rrhf_core.errors import ConfigError

LOCK_NAME = ".rrhf.lock"
_held: dict[Path, int] = {}  # lock path -> nesting depth in this process


class WorkdirBusyError(ConfigError):
    """Another run holds the workdir."""


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, exited and not yet reaped, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def holder(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock file says about its last holder (None when there is no readable record)."""
    try:
        return dict(json.loads((Path(workdir) / LOCK_NAME).read_text() or "null") or {})
    except (OSError, ValueError, TypeError):
        return None


def held_here(workdir: str | os.PathLike[str]) -> bool:
    """Whether this process already holds the workdir's lock."""
    return Path(workdir).resolve() / LOCK_NAME in _held


def open_lock_file(path: Path, whose: str) -> int:
    """Open (or create) the lock file ``path`` without following a link: a link planted there would have the lock's
    record written into whatever it points at. A link, a folder or anything but a plain file there is a
    :class:`ConfigError` saying what to remove."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if (
            not path.is_symlink()
            and not path.exists()
            and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        ):
            raise ConfigError(
                f"cannot write to output folder {path.parent} ({e.strerror}); make it writable and check its free "
                "space, or choose another folder"
            ) from None
        kind = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "not usable"
        raise ConfigError(
            f"the lock file of {whose}, {path}, is {kind} ({e.strerror}): a lock must be a plain file. "
            "Remove it (nothing else uses that name) and run again"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(
            f"the lock file of {whose}, {path}, is not a plain file: remove it (nothing else uses that name) and "
            "run again"
        )
    return fd


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike[str], what: str = "rrhf") -> Iterator[Path]:
    """Hold ``workdir`` for the body; :class:`WorkdirBusyError` naming the holder when another process has it."""
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    path = work / LOCK_NAME
    if path in _held:
        _held[path] += 1
        try:
            yield work
        finally:
            _held[path] -= 1
        return
    fd = open_lock_file(path, f"the workdir {work}")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = holder(work) or {}
            since = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started"])) if "started" in h else "?"
            )
            raise WorkdirBusyError(
                f"workdir {work} is in use by pid {h.get('pid', '?')} on {h.get('host', '?')} "
                f"({h.get('what', '?')}, started {since}). Wait for it to finish, stop it, or give another "
                "--workdir (two runs in one workdir would write the same stage folders and MLflow store)."
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "what": what,
            "argv": sys.argv[:8],
            "started": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        _held[path] = 1
        try:
            yield work
        finally:
            del _held[path]
    finally:
        os.close(fd)  # releases the flock
