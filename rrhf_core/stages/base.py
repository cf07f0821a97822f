"""What a stage is: :class:`Stage`, one record per stage, declared in the stage's own module of this package."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from rrhf_core.pipeline import PipelineConfig, StageResult

Wiring = Callable[[PipelineConfig, Mapping[str, Any], str], dict[str, BaseModel]]


def _no_needs(cfg: PipelineConfig, instance: str) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Stage:
    """One stage of a round.

    - ``name``: the stage's name (its CLI subcommand, its Prefect task, its stage folders ``<name>-<key>``);
    - ``summary``: one line on what it does (the CLI's help);
    - ``config``: the configuration the stage runs on (its settings plus the wiring: inputs, output folder);
    - ``section``: where its settings sit in a pipeline file;
    - ``run``: ``module:function`` of the library function that runs it on a ``config`` (imported when called);
    - ``code``: the module whose source, with every ``rrhf_core`` module it imports, keys its reuse; None for a
      stage that every round runs (evaluate, register);
    - ``result``: what it hands the next stages (stored with a finished stage folder);
    - ``inputs``: the content fingerprints of what it reads, from its configuration (its reuse key's inputs);
    - ``configs``: the wiring: ``(pipeline config, results of the stages before, start model)`` -> its
      configurations by instance name (one, or one per reward model for ``train-rm``);
    - ``needs``: the instances whose results its wiring reads (a plan says ``after X`` while X has not run);
    - ``always_runs``: for a stage without ``code``, why every round runs it;
    - ``per_reward_model``: one instance per reward model of the round (``train-rm:NAME``).
    """

    name: str
    summary: str
    config: type[BaseModel]
    section: str
    run: str
    code: str | None = None
    result: type[StageResult] | None = None
    inputs: Callable[[Any], dict[str, str]] | None = None
    configs: Wiring | None = None
    needs: Callable[[PipelineConfig, str], tuple[str, ...]] = field(default=_no_needs)
    always_runs: str = ""
    per_reward_model: bool = False  # one instance per entry of the round's reward_models

    @property
    def reused(self) -> bool:
        """Whether a finished folder with the same key stands in for a run (the stage has a code digest)."""
        return self.code is not None

    def function(self) -> Callable[..., Any]:
        """The library function that runs the stage (``run``), imported now."""
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)

    def wire(self, cfg: PipelineConfig, results: Mapping[str, Any], start_model: str) -> dict[str, BaseModel]:
        """The stage's configurations in a round of ``cfg`` (see ``configs``), by instance name."""
        if self.configs is None:
            raise ValueError(f"stage {self.name!r} is wired by the round itself (it has no table wiring)")
        return self.configs(cfg, results, start_model)

    def instances(self, cfg: PipelineConfig) -> list[str]:
        """The instance names of this stage in a round of ``cfg``: the stage's name, or ``train-rm:NAME`` per
        reward model."""
        if self.per_reward_model:
            return [f"{self.name}:{name}" for name in cfg.reward_models]
        return [self.name]
