"""Human review in the Prefect UI: the round pauses with a side-by-side form (a typed ``RunInput``), and the answer,
or the timeout, is recorded with the round. Called from the flow (a pause belongs to the flow run, not a task)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Running
from pydantic import create_model

from rrhf_core.evaluation import review as rv
from rrhf_core.evaluation.promotion import GateConfig

REVIEW_KEY = "human-review"


def review_form(pairs: list[rv.ReviewPair]) -> type[RunInput]:
    """The form the Prefect UI shows on the paused run (its JSON schema: one A / B / tie choice per pair,
    approve, note)."""
    return create_model("RoundReview", __base__=RunInput, **rv.form_fields(pairs))  # type: ignore[call-overload, no-any-return]


def human_review(eval_dir: str, gate: GateConfig, work: Path, round_id: str, seed: int = 0) -> rv.Review:
    """Pause the round for a reviewer; return the tally, or the timeout. The sheet is a Prefect artifact and an
    MLflow artifact; the choices become preference pairs in ``<workdir>/reviews/<round>.jsonl`` (and appended to
    ``reviews/pairs.jsonl``, for ``reward_models.*.pairs``)."""
    log = get_run_logger()
    samples = pq.read_table(Path(eval_dir) / "eval_samples.parquet").to_pylist()
    pairs = rv.review_sheet(samples, gate.human_pairs, seed)
    sheet = rv.sheet_markdown(pairs)
    create_markdown_artifact(key="review-sheet", markdown=sheet, description="side by side, before promotion")
    out = work / "reviews"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{round_id}.sheet.json").write_text(json.dumps([p.__dict__ for p in pairs], indent=2))
    form = review_form(pairs)
    log.info(
        f"human review ({gate.human}): the round is paused for {gate.human_timeout_s} s; open the flow run in the "
        f"Prefect UI and press Resume to answer the form ({len(pairs)} pairs, approve or reject)"
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form.with_initial_data(description=sheet),
            timeout=gate.human_timeout_s,
            key=REVIEW_KEY,
        )
        review = rv.tally(pairs, answer.model_dump(), gate.human)
    except FlowPauseTimeout:
        review = rv.timed_out(gate.human, len(pairs), gate.human_timeout_s)
        # the run goes on to record the default: a late form is refused (the run is no longer paused)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Running(), force=True)
    record = {**review.to_dict(), "round": round_id, "sheet": [p.__dict__ for p in pairs]}
    (out / f"{round_id}.review.json").write_text(json.dumps(record, indent=2))
    if review.preference_pairs:
        rows = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in review.preference_pairs)
        (out / f"{round_id}.jsonl").write_text(rows)
        with (out / "pairs.jsonl").open("a", encoding="utf-8") as f:
            f.write(rows)
    mlflow.log_dict(record, "review.json")
    if review.win_rate is not None:
        mlflow.log_metric("human.win_rate", review.win_rate)
    mlflow.set_tag("rrhf.review", review.status if review.status == "timeout" else
                   ("approved" if review.approve else "rejected"))  # fmt: skip
    log.info(f"human review: {_said(review)}")
    return review


def _said(review: rv.Review) -> str:
    if review.status == "timeout":
        return f"nobody answered within {review.timeout_s} s (gate.human {review.mode})"
    return (
        f"{'approved' if review.approve else 'rejected'}; challenger {review.wins} W {review.ties} T "
        f"{review.losses} L; {len(review.preference_pairs)} preference pairs kept"
    )
