"""One run at a time per workdir: an advisory lock (``flock``) on ``<workdir>/.rrhf.lock``.

The lock belongs to the open file, so the kernel releases it when the holder exits in any way (``kill -9``
included): a lock file left behind never blocks the next run. The file records who holds it (pid, host, command,
start time) for the error the next run prints. Re-entrant within one process (a flow calling another flow on the
same workdir keeps the one lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
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


def holder(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock file says about its last holder (None when there is no readable record)."""
    try:
        return dict(json.loads((Path(workdir) / LOCK_NAME).read_text() or "null") or {})
    except (OSError, ValueError, TypeError):
        return None


def held_here(workdir: str | os.PathLike[str]) -> bool:
    """Whether this process already holds the workdir's lock."""
    return Path(workdir).resolve() / LOCK_NAME in _held


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
