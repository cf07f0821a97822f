"""MLflow adapters: the tracking store, child runs per stage, the metrics logger, plots and the model registry.

Default store (no configuration): SQLite ``<workdir>/mlflow.db`` with artifacts in ``<workdir>/mlartifacts``; any
tracking URI works (``tracking_uri`` or ``MLFLOW_TRACKING_URI``). Runs are opened as context managers, so an
exception marks them FAILED, never leaves them RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from rrhf_core.config import redact_credentials
from rrhf_core.errors import ConfigError
from rrhf_core.redaction import redacted_error
from rrhf_core.workdir import held_here, workdir_lock

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# the user's MLFLOW_TRACKING_URI, read before anything here calls mlflow.set_tracking_uri (which also sets it)
_ENV_URI = os.environ.get("MLFLOW_TRACKING_URI")


def store_uri(workdir: str | Path, tracking_uri: str | None = None) -> str:
    """The tracking URI a round in ``workdir`` uses: the setting, else ``MLFLOW_TRACKING_URI``, else the workdir's
    SQLite file."""
    return tracking_uri or _ENV_URI or f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def configure(workdir: str | Path, experiment: str, tracking_uri: str | None = None) -> str:
    """Point MLflow at the store and experiment; return the tracking URI."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    uri = store_uri(workdir, tracking_uri)
    check_answers(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (workdir / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def _no_answer(url: str, timeout: float) -> str | None:
    """Why the HTTP server of ``url`` does not answer, or None when it does (any HTTP answer, an error status
    included, counts as answering)."""
    import urllib.error
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
    try:
        with urllib.request.urlopen(
            urllib.parse.urlunsplit((parts.scheme, host, "/", "", "")), timeout=timeout
        ):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


def check_answers(uri: str, timeout: float = 10.0) -> None:
    """A tracking server that does not answer is one clear error at once (MLflow's own client retries for minutes
    and then names the URI with its password)."""
    if not uri.startswith(("http://", "https://")):
        return
    reason = _no_answer(uri, timeout)
    if reason is not None:
        raise ConfigError(
            f"the MLflow tracking server at {redact_credentials(uri)} does not answer ({reason}): start it, or point "
            "tracking_uri / MLFLOW_TRACKING_URI at one that runs (unset, a round tracks to <workdir>/mlflow.db)"
        )


def check_prefect_api(timeout: float = 10.0) -> None:
    """A Prefect API (``PREFECT_API_URL``) that does not answer is one clear error before the flow starts (Prefect's
    client fails later with a traceback); unset, the round starts a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url or not str(url).startswith(("http://", "https://")):
        return
    reason = _no_answer(str(url), timeout)
    if reason is not None:
        raise ConfigError(
            f"the Prefect API at {redact_credentials(str(url))} (PREFECT_API_URL) does not answer ({reason}): start "
            "the server (`rrhf stack up`, or `prefect server start`), or unset PREFECT_API_URL so that the round "
            "runs on a temporary server of its own"
        )


_workdir_tag: str | None = None  # "host:/abs/workdir" of the workdir this process tracks


def run_tags() -> dict[str, str]:
    """Tags every run of this process carries: which workdir (and host) it belongs to."""
    return {"rrhf.workdir": _workdir_tag} if _workdir_tag else {}


def reap_stale_runs(experiment: str, tag: str) -> list[str]:
    """Mark FAILED the runs of this workdir that are still RUNNING: their process is gone (the caller holds the
    workdir's lock), e.g. killed with ``kill -9``. Returns their ids."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    client = MlflowClient()
    stale = [
        r
        for r in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
        if r.data.tags.get("rrhf.workdir") == tag
    ]
    for r in stale:
        client.set_tag(
            r.info.run_id, "rrhf.reaped", f"still RUNNING when the workdir was next opened, {time.ctime()}"
        )
        client.set_terminated(r.info.run_id, "FAILED")
    return [r.info.run_id for r in stale]


@contextlib.contextmanager
def tracked_workdir(
    workdir: str | Path, experiment: str, tracking_uri: str | None = None, what: str = "rrhf"
) -> Iterator[str]:
    """Hold the workdir (one run at a time), point MLflow at its store and close the runs a killed run left
    RUNNING; yields the tracking URI."""
    global _workdir_tag
    fresh = not held_here(workdir)
    with workdir_lock(workdir, what) as work:
        uri = configure(work, experiment, tracking_uri)
        _workdir_tag = f"{socket.gethostname()}:{work}"
        if fresh:
            reaped = reap_stale_runs(experiment, _workdir_tag)
            if reaped:
                print(
                    f"marked FAILED {len(reaped)} MLflow run(s) a stopped run left RUNNING: {', '.join(reaped)}"
                )
        try:
            yield uri
        except Exception as e:  # the error the flow run ends with is stored by Prefect: no credentials in it
            safe = redacted_error(e)
            if safe is e:
                raise
            raise safe from None


def start_run(run_name: str) -> Any:
    """A top-level run of a flow, tagged with its workdir (see :func:`run_tags`)."""
    return mlflow.start_run(run_name=run_name, tags=run_tags())


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return {k: v[:6000] for k, v in out.items()}


@contextlib.contextmanager
def stage_run(name: str, parent_run_id: str | None, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A child run of the pipeline run (FAILED if the body raises)."""
    with mlflow.start_run(
        run_name=name, nested=parent_run_id is not None, parent_run_id=parent_run_id, tags=run_tags()
    ) as run:
        mlflow.set_tag("rrhf.stage", name)
        if params:
            mlflow.log_params(flatten(params))
        yield run


class MlflowLogger:
    """The trainer's MetricsLogger protocol, writing step metrics to one run (thread-safe: uses the client)."""

    def __init__(self, run_id: str) -> None:
        self.client = MlflowClient()
        self.run_id = run_id

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        ts = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), ts, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)


def log_parquet_input(path: str | Path, context: str, name: str | None = None) -> None:
    """Dataset lineage: the Parquet (or JSON lines) file as an MLflow dataset input (schema, digest, source path)."""
    import pandas as pd

    df = pd.read_json(path, lines=True) if str(path).endswith(".jsonl") else pd.read_parquet(path)
    for (
        col
    ) in df.columns:  # nested columns are logged as JSON text (MLflow's schema inference needs flat types)
        if df[col].map(lambda v: isinstance(v, list | dict) or hasattr(v, "tolist")).any():
            df[col] = df[col].map(
                lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, default=str)
            )
    ds = mlflow.data.from_pandas(df, source=str(Path(path).resolve()), name=name or Path(path).parent.name)
    mlflow.log_input(ds, context=context)


def numeric(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested mapping, flattened (for log_metrics)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(numeric(v, f"{prefix}{k}."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[re.sub(r"[^A-Za-z0-9_\-. :/]", "_", f"{prefix}{k}")] = float(v)
    return out
