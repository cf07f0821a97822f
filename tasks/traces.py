"""The served champion's traces, read from MLflow for the round's prompt source (``arrivals.traces``).

The served chat model (``tasks/chat_model.py``) records each chat as a trace in an experiment (``rrhf serve``: the
workdir's store, experiment ``rrhf-served``); feedback on a trace is an assessment on it. This reads the traces at or
after the watermark's time as :class:`~rrhf_core.data.traffic.ServedChat` objects; what becomes of them is
:mod:`rrhf_core.data.traffic`'s (pure) business.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient

from rrhf_core.data.traffic import ServedChat

PAGE = 500


def _chat(trace: Any) -> ServedChat:
    root = next((s for s in trace.data.spans if s.parent_id is None), None)
    inputs = (root.inputs if root is not None else None) or {}
    outputs = (root.outputs if root is not None else None) or {}
    feedback = [
        {
            "name": a.name,
            "value": getattr(a, "value", None),
            "time_ms": a.last_update_time_ms or a.create_time_ms,
        }
        for a in trace.info.assessments or []
        if getattr(a, "feedback", None) is not None
    ]
    return ServedChat(
        trace_id=trace.info.trace_id,
        time_ms=int(trace.info.request_time),
        messages=inputs.get("messages") if isinstance(inputs, dict) else None,
        answer=str(outputs.get("answer", "")) if isinstance(outputs, dict) else "",
        feedback=feedback,
        model_sha256=trace.info.tags.get("rrhf.model_sha256", ""),
    )


def read_served(experiment: str, tracking_uri: str | None, since_ms: int) -> list[ServedChat]:
    """Every trace in ``experiment`` from ``since_ms`` on (an experiment not created yet: none, nothing served)."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    out: list[ServedChat] = []
    token = None
    while True:
        page = client.search_traces(
            locations=[exp.experiment_id],
            filter_string=f"trace.timestamp_ms >= {int(since_ms)}",
            max_results=PAGE,
            order_by=["timestamp_ms ASC"],
            page_token=token,
        )
        out += [_chat(t) for t in page]
        token = page.token
        if not token:
            return out
