"""A small metrics-logger protocol; tracking backends (MLflow, ...) live outside rrhf_core and adapt to it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol


class MetricsLogger(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...


class NullLogger:
    """Stands in when tracking is off, so the training code never branches on it."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        return None


class JsonlLogger:
    """Appends ``{"step": s, **metrics}`` lines to a file (the run folder's ``metrics.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run redoes them), so no step is logged twice."""
        if not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


class FanOutLogger:
    def __init__(self, *loggers: MetricsLogger) -> None:
        self.loggers = loggers

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
