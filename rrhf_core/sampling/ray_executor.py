"""Sampling shards as Ray tasks: ``sample.executor: ray`` (the cluster: :mod:`rrhf_core.executors`).

Each missing shard becomes one Ray task. A worker process loads the policy once and keeps it for the shards it
is given; the task returns the shard's records to this process, which writes the shard file as the local executor
does. So the resume semantics are the local ones (a finished shard is on disk; a rerun does only what is missing),
no shared file system is needed, and a worker that dies takes only its running shard with it: Ray runs that task
again and nothing else. Each shard is seeded by its index (``seed + index``), so with the transformers backend the
samples equal a local run's.

Workers need this package and the policy: the same environment on every machine (the same virtual environment
with the ``ray`` extra), and the model as a hub id, a path that exists on every worker, or ``embedded:``. vLLM's own
parallelism for large policies is ``vllm_tensor_parallel_size`` (one policy copy over several GPUs of a worker;
reserve as many with ``ray.gpus_per_task``); data parallelism is the shards themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rrhf_core.executors import run_on_ray
from rrhf_core.sampling import Sampler
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.sampling.shard import make_sampler, sample_seeded_shard

_SAMPLERS: dict[str, Sampler] = {}  # in a worker process: the loaded policy, by sampler id


def _shard_task(cfg_json: str, shard: list[dict[str, Any]], index: int, sid: str) -> tuple[Any, int, int]:
    """Runs in a Ray worker: one shard's records, with the worker's cached sampler."""
    cfg = SampleConfig.model_validate_json(cfg_json)
    if sid not in _SAMPLERS:
        for old in _SAMPLERS.values():  # one policy per worker at a time
            old.close()
        _SAMPLERS.clear()
        _SAMPLERS[sid] = make_sampler(cfg)
    return sample_seeded_shard(shard, index, _SAMPLERS[sid], cfg, sid)


def sample_on_ray(
    cfg: SampleConfig,
    shards: dict[int, list[dict[str, Any]]],
    sid: str,
    finished: Callable[[int, list[dict[str, Any]], int, int], None],
) -> None:
    """Run ``shards`` (index -> prompt rows) as Ray tasks; ``finished(index, records, tokens, skipped)`` is called
    in this process as each one completes, in completion order."""
    cfg_json = cfg.model_dump_json()
    run_on_ray(
        cfg.ray,
        "sample.ray.address",
        _shard_task,
        ((i, (cfg_json, rows, i, sid)) for i, rows in shards.items()),
        lambda i, result: finished(i, *result),
    )
