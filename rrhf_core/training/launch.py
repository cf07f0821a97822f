"""Launching a training run on several processes (and machines) with torchrun.

:func:`train` is the entry point: it trains in this process, or calls :func:`launch` when the configuration asks for
more than one process and this process was not started by torchrun: the configuration is written to ``output_dir/launch_config.json`` and torchrun starts
``python -m rrhf_core.training.launch`` on it, once per process. Step metrics reach the caller's logger as the
main process writes them to ``metrics.jsonl``, so MLflow and Prefect see them live.

One machine: ``torchrun --standalone --nproc-per-node N``. Several machines: every machine runs the same command
(``rrhf train --config C --nnodes M --nproc N --rdzv-endpoint HOST:PORT``); they meet at the c10d rendezvous on
``HOST:PORT`` (the first machine) under an id derived from the configuration, and give up after
``rdzv_timeout_s`` instead of waiting forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from rrhf_core.config import fields_marked
from rrhf_core.errors import RRHFError
from rrhf_core.metrics import MetricsLogger, NullLogger, read_metrics
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.trainer import TrainResult, train_in_process

LAUNCH_CONFIG = "launch_config.json"
FAILED = ".failed-rank"  # each process that fails writes its exception to output_dir/.failed-rankR


class LaunchError(RRHFError):
    """A process of a multi-process training run failed (its output's tail is in the message)."""


def rendezvous_id(cfg: TrainConfig) -> str:
    """The same id on every machine that runs the same configuration (and another for another run)."""
    per_machine = fields_marked(type(cfg), "same_on_every_machine", (False,))
    text = json.dumps(cfg.model_dump(exclude=per_machine), sort_keys=True)
    return "rrhf-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def torchrun_command(cfg: TrainConfig, config_path: str | Path, python: str = sys.executable) -> list[str]:
    """The torchrun command line that runs ``config_path`` on ``cfg.nproc`` processes per machine."""
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.nproc}"]
    if cfg.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={cfg.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={cfg.rdzv_endpoint}",
            f"--rdzv-id={rendezvous_id(cfg)}",
            f"--rdzv-conf=join_timeout={cfg.rdzv_timeout_s}",
        ]
    return [*cmd, "-m", "rrhf_core.training.launch", str(config_path)]


class _MetricsTail:
    """Forwards the records the main process appends to ``metrics.jsonl`` (complete lines only, each step once)."""

    def __init__(self, path: Path, logger: MetricsLogger) -> None:
        self.path, self.logger, self.last_step = path, logger, 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        text = self.path.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            step = int(record.pop("step"))
            if step > self.last_step:
                self.logger.log(record, step)
                self.last_step = step


def train(cfg: TrainConfig, logger: MetricsLogger | None = None, progress: bool = True) -> TrainResult:
    """Train a policy with RRHF as configured; returns where the model and metrics went. Several processes
    (``nproc``/``nnodes``) start under torchrun (:func:`launch`) unless this process is one of torchrun's already."""
    if cfg.world_size <= 1 or "WORLD_SIZE" in os.environ:
        return train_in_process(cfg, logger, progress)
    out = launch(cfg, logger or NullLogger(), progress)
    summary = json.loads((out / "train_summary.json").read_text())
    history = read_metrics(out / "metrics.jsonl")
    model_dir = Path(summary["model_dir"]) if summary.get("model_dir") else None
    return TrainResult(out, model_dir, summary["steps"], summary["resumed_from"], history, summary)


def launch(cfg: TrainConfig, logger: MetricsLogger, progress: bool = True) -> Path:
    """Run ``cfg`` under torchrun, streaming its output and metrics; returns the run folder. Raises
    :class:`LaunchError` (with the output's tail) when any process fails."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / LAUNCH_CONFIG
    config_path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    for old in out.glob(FAILED + "*"):
        old.unlink()
    cmd = torchrun_command(cfg, config_path)
    if not progress:
        cmd.append("--no-progress")
    tail: deque[str] = deque(maxlen=40)
    metrics = _MetricsTail(out / "metrics.jsonl", logger)
    # with a progress bar the processes write to this terminal; without, their lines are echoed and kept for errors
    piped = None if progress else subprocess.PIPE
    with subprocess.Popen(cmd, stdout=piped, stderr=subprocess.STDOUT if piped else None, text=True) as proc:
        reader = (
            threading.Thread(target=_echo, args=(proc.stdout, tail), daemon=True) if proc.stdout else None
        )
        if reader:
            reader.start()
        while proc.poll() is None:
            metrics.poll()
            time.sleep(0.5)
        if reader:
            reader.join(timeout=10)
        rc = proc.returncode
    metrics.poll()
    if rc != 0:
        causes = [
            f"rank {p.stem.removeprefix(FAILED)}: {p.read_text()}" for p in sorted(out.glob(FAILED + "*"))
        ]
        shown = "\n".join(tail) if tail else "(above)"
        raise LaunchError(
            f"training on {cfg.world_size} processes failed (torchrun exit status {rc})"
            + (f": {causes[0]}" if causes else "")
            + f"\ncommand: {' '.join(cmd)}\nlast output:\n{shown}"
        )
    return out


def _echo(stream: IO[str], tail: deque[str]) -> None:
    for line in stream:
        sys.stdout.write(line)
        tail.append(line.rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """One torchrun process: read the launch configuration and train."""
    args = list(sys.argv[1:] if argv is None else argv)
    progress = "--no-progress" not in args
    paths = [a for a in args if a != "--no-progress"]
    cfg = TrainConfig.model_validate_json(Path(paths[0]).read_text())
    try:
        train_in_process(cfg, progress=progress)
    except Exception as e:  # the launcher reports each process's failure by rank, first in its error
        rank = os.environ.get("RANK", "0")
        (Path(cfg.output_dir) / f"{FAILED}{rank}").write_text(f"{type(e).__name__}: {e}")
        if not isinstance(e, RRHFError):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)  # a user's error: the message, not a traceback
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
