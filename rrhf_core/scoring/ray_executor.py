"""Scoring on Ray: ``score.executor: ray`` (the cluster: :mod:`rrhf_core.executors`).

A worker loads the reward once (by its spec) and keeps it; the first task asks a worker for the reward's id (what
the score cache is keyed by: a loaded hub model's id carries its revision), then every chunk still missing from
the cache becomes a task. Scores come back to this process, which checks them and writes them to the cache chunk by
chunk, so a rerun after a failure scores only what is missing, as locally. A worker that dies takes only its chunk
with it (Ray reruns the task).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rrhf_core.executors import gather, ray_session
from rrhf_core.scoring.config import ScoreConfig

_REWARDS: dict[tuple[Any, ...], Any] = {}  # in a worker process: the loaded reward, by its settings


def _reward(spec: str, batch_size: int, max_length: int, bucket: bool) -> Any:
    from rrhf_core.scoring.reward import make_reward

    key = (spec, batch_size, max_length, bucket)
    if key not in _REWARDS:
        _REWARDS.clear()  # one reward per worker at a time
        _REWARDS[key] = make_reward(spec, batch_size, max_length, bucket)
    return _REWARDS[key]


def _reward_id_task(*settings: Any) -> str:
    return str(_reward(*settings).reward_id)


def _chunk_task(settings: tuple[Any, ...], messages: list[Any], texts: list[str]) -> list[float]:
    return list(_reward(*settings).score(messages, texts))


def score_on_ray(
    cfg: ScoreConfig,
    plan: Callable[[str], list[tuple[list[str], list[Any], list[str]]]],
    accept: Callable[[str, list[str], list[float]], None],
) -> str:
    """Score the chunks ``plan(reward_id)`` returns as Ray tasks; ``accept(reward_id, chunk, values)`` is called
    here as each completes. Returns the reward's id."""
    import ray

    settings = (cfg.reward, cfg.batch_size, cfg.max_length, cfg.bucket)
    with ray_session(cfg.ray, "score.ray.address") as remote:
        reward_id = str(ray.get(remote(_reward_id_task).remote(*settings)))
        task = remote(_chunk_task)
        pending = {task.remote(settings, msgs, texts): chunk for chunk, msgs, texts in plan(reward_id)}
        gather(pending, lambda chunk, values: accept(reward_id, chunk, values))
    return reward_id
