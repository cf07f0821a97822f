"""Sampling shards as Ray tasks: ``sample.executor: ray``.

Each missing shard becomes one Ray task (``ray_cpus_per_shard`` / ``ray_gpus_per_shard`` reserved). A worker
process loads the policy once and keeps it for the shards it is given; the task returns the shard's records to
this process, which writes the shard file as the local executor does. So the resume semantics are the local ones
(a finished shard is on disk; a rerun does only what is missing), no shared file system is needed, and a worker
that dies takes only its running shard with it: Ray runs that task again (``max_retries``) and nothing else. Each
shard is seeded by its index (``seed + index``), so with the transformers backend the samples equal a local run's.

The cluster: ``ray_address`` unset starts a Ray instance on this machine for the stage (and stops it after);
``host:port`` (the head's address from ``ray start --head``) or ``auto`` joins a running cluster. The address is
tried with a plain TCP connection first, so one that does not answer is a clear error after ``ray_timeout_s``,
never a hang. Workers need this package and the policy: the same environment on every machine (a Docker image, or
the same virtual environment), and the model as a hub id, a path that exists on every worker, or ``embedded:``.

vLLM's own parallelism for large policies is ``vllm_tensor_parallel_size`` (one policy copy over several GPUs of a
worker; reserve as many with ``ray_gpus_per_shard``); data parallelism is the shards themselves.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from rrhf_core.errors import ConfigError, MissingPackageError
from rrhf_core.sampling import Sampler
from rrhf_core.sampling.config import SampleConfig

MAX_RETRIES = 3  # how often Ray reruns a shard whose worker died

_SAMPLERS: dict[str, Sampler] = {}  # in a worker process: the loaded policy, by sampler id


def _shard_task(cfg_json: str, shard: list[dict[str, Any]], index: int, sid: str) -> tuple[Any, int, int]:
    """Runs in a Ray worker: one shard's records, with the worker's cached sampler."""
    from rrhf_core.sampling.stage import make_sampler, sample_seeded_shard

    cfg = SampleConfig.model_validate_json(cfg_json)
    if sid not in _SAMPLERS:
        for old in _SAMPLERS.values():  # one policy per worker at a time
            old.close()
        _SAMPLERS.clear()
        _SAMPLERS[sid] = make_sampler(cfg)
    return sample_seeded_shard(shard, index, _SAMPLERS[sid], cfg, sid)


def check_reachable(address: str, timeout_s: float) -> None:
    """A clear error when ``host:port`` does not accept a connection within ``timeout_s``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"sample.ray_address {address!r} is not host:port (the head's address from `ray start --head`) or 'auto'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(
            f"sample.ray_address {address!r} does not answer ({e}); start the cluster's head with "
            f"`ray start --head --port {port}`, fix the address, or unset it to run Ray on this machine"
        ) from None


def connect(cfg: SampleConfig) -> bool:
    """Join or start Ray; True when this call started it (so the stage stops it again)."""
    try:
        import ray
    except ImportError:
        raise MissingPackageError(
            "sample.executor 'ray' needs Ray: `pip install -e .[ray]` (or executor 'local')"
        ) from None
    if ray.is_initialized():
        return False
    if cfg.ray_address and cfg.ray_address != "auto":
        check_reachable(cfg.ray_address, cfg.ray_timeout_s)
    ray.init(
        address=cfg.ray_address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def sample_on_ray(
    cfg: SampleConfig,
    shards: dict[int, list[dict[str, Any]]],
    sid: str,
    finished: Callable[[int, list[dict[str, Any]], int, int], None],
) -> None:
    """Run ``shards`` (index -> prompt rows) as Ray tasks; ``finished(index, records, tokens, skipped)`` is called
    in this process as each one completes, in completion order."""
    import ray

    started = connect(cfg)
    try:
        task = ray.remote(
            num_cpus=cfg.ray_cpus_per_shard, num_gpus=cfg.ray_gpus_per_shard, max_retries=MAX_RETRIES
        )(_shard_task)
        cfg_json = cfg.model_dump_json()
        pending = {task.remote(cfg_json, rows, i, sid): i for i, rows in shards.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            finished(i, *ray.get(ready[0]))
    finally:
        if started:
            ray.shutdown()
