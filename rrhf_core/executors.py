"""Where a stage's work units run: here, one after another (``local``), or as Ray tasks over a cluster (``ray``).

:class:`RaySettings` is the ``ray`` section of the sampling and scoring settings. :func:`connect` joins the
cluster named by ``address`` (the head's ``host:port`` from ``ray start --head``, or ``auto``) after checking with a
plain TCP connection that it answers within ``timeout_s`` (a dead address is an error naming the setting, never a
hang), or, with no address, starts a Ray instance on this machine for the stage. Ray is imported only here and in
the stages' Ray executors.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rrhf_core.errors import ConfigError, MissingPackageError

Executor = Literal["local", "ray"]
MAX_RETRIES = 3  # how often Ray reruns a task whose worker died


class RaySettings(BaseModel):
    """The Ray cluster a stage's tasks run on (``executor: ray``)."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(
        None,
        description="The cluster to join: the head's host:port (from `ray start --head --port PORT`) or 'auto'; "
        "unset starts Ray on this machine for the stage.",
    )
    cpus_per_task: float = Field(1.0, gt=0.0, description="CPUs each task reserves.")
    gpus_per_task: float = Field(
        0.0,
        ge=0.0,
        description="GPUs each task reserves (a policy or reward model on GPU workers: 1 or more).",
    )
    timeout_s: float = Field(30.0, gt=0.0, description="Seconds to wait for the address to answer.")


def check_reachable(address: str, timeout_s: float, setting: str) -> None:
    """A clear error when ``host:port`` does not accept a connection within ``timeout_s``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"{setting} {address!r} is not host:port (the head's address from `ray start --head`) or 'auto'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(
            f"{setting} {address!r} does not answer ({e}); start the cluster's head with "
            f"`ray start --head --port {port}`, fix the address, or unset it to run Ray on this machine"
        ) from None


def connect(settings: RaySettings, setting: str) -> bool:
    """Join or start Ray; True when this call started the connection (so the caller ends it again)."""
    try:
        import ray
    except ImportError:
        raise MissingPackageError(
            f"{setting.rsplit('.', 1)[0]}.executor 'ray' needs Ray: `pip install -e .[ray]` (or executor 'local')"
        ) from None
    if ray.is_initialized():
        return False
    if settings.address and settings.address != "auto":
        check_reachable(settings.address, settings.timeout_s, setting)
    ray.init(address=settings.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


@contextmanager
def ray_session(settings: RaySettings, setting: str) -> Iterator[Callable[[Callable[..., Any]], Any]]:
    """Connected to Ray for the block; yields ``remote(fn)``, which makes ``fn`` a Ray task with the settings'
    resources that Ray reruns (up to ``MAX_RETRIES`` times) when its worker dies."""
    import ray

    started = connect(settings, setting)
    try:
        yield lambda fn: ray.remote(
            num_cpus=settings.cpus_per_task, num_gpus=settings.gpus_per_task, max_retries=MAX_RETRIES
        )(fn)
    finally:
        if started:
            ray.shutdown()


def gather(pending: dict[Any, Any], finished: Callable[[Any, Any], None]) -> None:
    """``finished(key, result)`` for each ``{object ref: key}`` of ``pending``, in completion order."""
    import ray

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        finished(key, ray.get(ready[0]))


def run_on_ray(
    settings: RaySettings,
    setting: str,
    fn: Callable[..., Any],
    jobs: Iterable[tuple[Any, tuple[Any, ...]]],
    finished: Callable[[Any, Any], None],
) -> None:
    """Run ``fn(*args)`` for each ``(key, args)`` of ``jobs`` as a Ray task; ``finished(key, result)`` is called
    here as each completes, in completion order."""
    with ray_session(settings, setting) as remote:
        task = remote(fn)
        gather({task.remote(*args): key for key, args in jobs}, finished)
