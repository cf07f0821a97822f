"""The temporary Prefect server lives no longer than the ``rrhf`` command that started it.

Without a Prefect API URL, Prefect starts a temporary server in a child process and stops it at exit; a ``kill -9``
of the command skips that and leaves the server running. :func:`guard_temporary_server` starts that server itself
(Prefect then reuses it: one instance per process) and a small watcher in its own session, which stops the server
once the command is gone, however it ended. ``python -m rrhf_cli.reaper PARENT_PID SERVER_PID`` is the watcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rrhf_core.workdir import pid_alive

_alive = pid_alive  # the stack and the tests import it from here


def _is_prefect_server(pid: int) -> bool:
    try:
        return b"prefect.server.api.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def guard_temporary_server() -> int | None:
    """Start Prefect's temporary server (when no API URL is configured) with a watcher; its pid, or None."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    if server.server_process is None:
        return None
    pid = server.server_process.pid
    subprocess.Popen(
        [sys.executable, "-m", "rrhf_cli.reaper", str(os.getpid()), str(pid)],
        start_new_session=True,  # not killed with the command's process group
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return pid


def watch(parent: int, server: int, poll_s: float = 0.5) -> bool:
    """Wait until ``parent`` is gone, then stop ``server``; True when it had to stop it."""
    while _alive(server):
        if os.getppid() != parent or not _alive(parent):
            break
        time.sleep(poll_s)
    else:
        return False
    if not _is_prefect_server(server):  # gone meanwhile, or the pid now names another process
        return False
    os.kill(server, signal.SIGTERM)
    for _ in range(50):
        if not _alive(server):
            return True
        time.sleep(0.1)
    os.kill(server, signal.SIGKILL)
    return True


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
