"""The one reuse mechanism of the pipeline: a stage's output folder is keyed on everything that changes it.

A :class:`StageKey` covers the stage's output-changing settings (paths and bookkeeping excluded), the content
fingerprints of its inputs (files, models, rewards: :mod:`rrhf_core.digest`) and the digest of the library code
behind the stage. The :class:`StageStore` keeps each stage's output in ``<root>/<stage>-<key digest>/`` and writes
``_DONE`` (the key and the stage's result, as JSON) only after the stage returned, so a crash never leaves an
output that looks complete; a stage whose ``_DONE`` matches its key is reused, with its result, instead of rerun.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from rrhf_core.config import fields_marked
from rrhf_core.data.contracts import atomic_write_text
from rrhf_core.digest import code_digest, digest_json

R = TypeVar("R", bound=BaseModel)


def output_settings(cfg: BaseModel) -> dict[str, Any]:
    """The settings of a stage configuration that change its output: its fields but those marked as inputs (they
    count by content), locations and bookkeeping (:func:`rrhf_core.config.reuse`)."""
    excluded = fields_marked(type(cfg), "reuse", ("input", "location", "bookkeeping"))
    return cfg.model_dump(mode="json", exclude=excluded)


@dataclass(frozen=True)
class StageKey:
    """What a stage's output depends on. ``inputs`` maps input names to content fingerprints."""

    stage: str
    settings: Mapping[str, Any]
    inputs: Mapping[str, str] = field(default_factory=dict)
    code: str = ""

    @classmethod
    def of(cls, stage: str, cfg: BaseModel, inputs: Mapping[str, str]) -> StageKey:
        """The key of ``cfg`` for ``stage``, with the code digest of the stage's module."""
        return cls(stage, output_settings(cfg), dict(inputs), code_digest(stage_module(stage)))

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "settings": self.settings, "inputs": self.inputs, "code": self.code}

    def digest(self) -> str:
        return digest_json(self.as_dict())[:12]

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """What differs from a stored key (for the log line of a stage that runs again)."""
        ours = self.as_dict()
        diffs = []
        for part in ("settings", "inputs"):
            a, b = ours[part], other.get(part, {})
            diffs += [f"{part}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if ours["code"] != other.get("code"):
            diffs.append("code")
        return diffs


class StageStore:
    """Stage folders under ``root``; a folder is done once its ``_DONE`` record is written."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def folder(self, key: StageKey) -> Path:
        return self.root / f"{key.stage}-{key.digest()}"

    def load(self, key: StageKey, result_type: type[R]) -> R | None:
        """The stored result of a finished stage with this key, or None."""
        done = self.folder(key) / "_DONE"
        if not done.exists():
            return None
        record = json.loads(done.read_text())
        if record.get("key") != json.loads(json.dumps(key.as_dict(), default=str)):
            return None  # a digest collision or a hand-edited folder: never reuse on a mismatch
        return result_type.model_validate(record["result"])

    def save(self, key: StageKey, result: BaseModel) -> None:
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"key": key.as_dict(), "result": result.model_dump(mode="json")}
        atomic_write_text(folder / "_DONE", json.dumps(record, indent=2, default=str))

    def previous(self, stage: str) -> list[dict[str, Any]]:
        """Keys of this stage's finished folders, oldest first (to say why a stage was not reused). Only this stage's
        own: ``train-*`` also matches ``train-rm-*`` folders, so the stored key's stage must match."""
        out = []
        for done in sorted(self.root.glob(f"{stage}-*/_DONE"), key=lambda p: p.stat().st_mtime):
            try:
                key = json.loads(done.read_text())["key"]
            except (OSError, ValueError, KeyError):
                continue
            if key.get("stage") == stage:
                out.append(key)
        return out

    def why_runs(self, key: StageKey) -> str:
        """Why a stage with this key is not reused: its first run here, or how it differs from the finished run of
        this stage closest to it (the latest among equally close ones: a round with several reward models has a
        finished ``train-rm`` folder for each)."""
        previous = self.previous(key.stage)
        if not previous:
            return "first run of this stage here"
        closest = min(reversed(previous), key=lambda k: len(key.differences(k)))
        return "changed since the closest finished run: " + ", ".join(
            key.differences(closest) or ["(digest only)"]
        )


def stage_module(stage: str) -> str:
    """The module whose code (with its ``rrhf_core`` imports) keys ``stage``'s reuse (the stage table's ``code``)."""
    from rrhf_core.stages import stage as lookup

    code = lookup(stage).code
    if code is None:
        raise ValueError(f"stage {stage!r} is never reused: it has no reuse key")
    return code


def stage_inputs(stage: str, cfg: Any) -> dict[str, str]:
    """Content fingerprints of what a stage reads (its key's ``inputs``), from its configuration."""
    from rrhf_core.stages import stage as lookup

    inputs = lookup(stage).inputs
    if inputs is None:
        raise ValueError(f"stage {stage!r} is never reused: it has no input fingerprints")
    return inputs(cfg)
