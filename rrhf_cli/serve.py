"""``rrhf serve``: the champion over HTTP with every chat traced; ``rrhf feedback``: a person's verdict on a trace.

``rrhf serve`` runs ``mlflow models serve`` on ``models:/<name>@<alias>`` of the workdir's store with
``MLFLOW_TRACKING_URI`` at that store and ``MLFLOW_EXPERIMENT_NAME`` at the traffic experiment (``rrhf-served``), so
every chat the served model answers becomes a trace there (``tasks/chat_model.py``); a round with ``arrivals.traces:
rrhf-served`` takes the new ones as prompts. ``rrhf feedback TRACE --up|--down|--preferred TEXT`` logs the feedback
that round reads (``mlflow.log_feedback`` with a human source; the MLflow UI's trace view shows it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rrhf_core.errors import ConfigError

TRAFFIC = "rrhf-served"


def _store(workdir: str, tracking_uri: str | None) -> str:
    from tasks.tracking import store_uri

    uri = store_uri(Path(workdir).resolve(), tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ConfigError(
            f"{workdir} holds no MLflow store ({uri.removeprefix('sqlite:///')}): name the workdir a round ran in "
            "(--workdir), or its tracking server (--tracking-uri / MLFLOW_TRACKING_URI)"
        )
    return uri


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="serve the champion over HTTP (mlflow models serve), every chat traced into the workdir's store",
    )
    s.add_argument("--workdir", default="runs/pipeline", help="the round's workdir (its MLflow store)")
    s.add_argument("--tracking-uri", default=None, help="an MLflow server instead of the workdir's store")
    s.add_argument("--model", default="rrhf-policy", help="the registered model")
    s.add_argument("--alias", default="champion")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5001)
    s.add_argument("--experiment", default=TRAFFIC, help="the experiment the traces go to")
    s.add_argument(
        "--trace-share",
        type=float,
        default=1.0,
        help="share of requests traced (0: none; MLFLOW_TRACE_SAMPLING_RATIO)",
    )
    s.set_defaults(func=cmd_serve)

    f = sub.add_parser(
        "feedback", help="a person's verdict on a served answer (a trace): thumbs or a better answer"
    )
    f.add_argument("trace_id", help="the trace's id (tr-...: the MLflow UI's Traces tab of rrhf-served)")
    how = f.add_mutually_exclusive_group(required=True)
    how.add_argument("--up", action="store_true", help="the answer was good")
    how.add_argument("--down", action="store_true", help="the answer was bad")
    how.add_argument("--preferred", metavar="TEXT", help="the answer it should have given")
    f.add_argument("--workdir", default="runs/pipeline")
    f.add_argument("--tracking-uri", default=None)
    f.add_argument(
        "--user", default=os.environ.get("USER", "reviewer"), help="who says so (the feedback's source)"
    )
    f.set_defaults(func=cmd_feedback)


def cmd_serve(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not 0.0 <= args.trace_share <= 1.0:
        raise ConfigError(f"--trace-share {args.trace_share}: a share between 0 and 1")
    uri = _store(args.workdir, args.tracking_uri)
    client = MlflowClient(uri, registry_uri=uri)
    try:
        mv = client.get_model_version_by_alias(args.model, args.alias)
    except MlflowException:
        raise ConfigError(
            f"no {args.model}@{args.alias} in {uri}: run a round first (`rrhf pipeline --workdir {args.workdir}`), "
            "or name the store with --workdir / --tracking-uri"
        ) from None
    exp = client.get_experiment_by_name(args.experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(args.experiment)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        # by id: an MLFLOW_EXPERIMENT_ID inherited from the caller would win over a name
        "MLFLOW_EXPERIMENT_ID": exp_id,
        "MLFLOW_EXPERIMENT_NAME": args.experiment,
        "MLFLOW_TRACE_SAMPLING_RATIO": str(args.trace_share),
        # the server starts `uvicorn` from PATH: this environment's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    print(
        f"serving {args.model} version {mv.version} ({args.alias}) on http://{args.host}:{args.port}/invocations; "
        f"traces ({args.trace_share:.0%} of requests) to experiment {args.experiment} of {uri}",
        flush=True,
    )
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{args.model}@{args.alias}",
           "--env-manager", "local", "--host", args.host, "-p", str(args.port)]  # fmt: skip
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def cmd_feedback(args: argparse.Namespace) -> int:
    import mlflow
    from mlflow.entities import AssessmentSource
    from mlflow.exceptions import MlflowException

    from rrhf_core.data.traffic import PREFERRED, THUMBS

    mlflow.set_tracking_uri(_store(args.workdir, args.tracking_uri))
    try:
        found = mlflow.get_trace(args.trace_id)
    except MlflowException:
        found = None
    if found is None:
        raise ConfigError(
            f"no trace {args.trace_id} in {mlflow.get_tracking_uri()}: copy its id from the MLflow UI (experiment "
            f"{TRAFFIC}, Traces tab), and name the store the server traced into with --workdir / --tracking-uri"
        )
    source = AssessmentSource(source_type="HUMAN", source_id=args.user)
    if args.preferred is not None:
        if not args.preferred.strip():
            raise ConfigError("--preferred: the better answer is empty")
        mlflow.log_feedback(
            trace_id=args.trace_id, name=PREFERRED, value=args.preferred.strip(), source=source
        )
    else:
        mlflow.log_feedback(trace_id=args.trace_id, name=THUMBS, value=bool(args.up), source=source)
    print(f"feedback on {args.trace_id} recorded; {_taken_yet(found, Path(args.workdir))}")
    return 0


def _taken_yet(trace: Any, workdir: Path) -> str:
    """Whether a round of ``workdir`` already read the trace (its feedback then comes too late to train on)."""
    from rrhf_core.data.arrivals import WATERMARK, Watermark
    from rrhf_core.errors import DataError

    try:
        mark = Watermark.load(workdir / WATERMARK)
    except DataError:
        mark = Watermark()
    if mark.read_trace(trace.info.trace_id, int(trace.info.request_time)):
        return (
            f"note: a round of {workdir} already read this trace, so this feedback is not trained on (feedback "
            "counts when it is given before the next round runs)"
        )
    return "the next round with arrivals.traces takes it"
