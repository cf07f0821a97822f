"""Prefect flows run for real against a temporary Prefect server (prefect_test_harness)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rrhf_core.training.config import TrainConfig


@pytest.mark.integration
def test_train_flow_returns_the_model_folder(prefect_harness, tiny_model_dir, learnable_set, tmp_path):
    from flows.pipeline import train_flow

    cfg = TrainConfig(
        model=str(tiny_model_dir),
        data=str(learnable_set),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        micro_batch_size=2,
        grad_accum=1,
        max_length=64,
        max_response_tokens=16,
        dtype="fp32",
    )
    state = train_flow(cfg, workdir=str(tmp_path / "w"), return_state=True)
    assert state.is_completed()
    model_dir = Path(state.result())
    assert (model_dir / "config.json").exists()


@pytest.mark.integration
def test_bad_data_fails_the_flow_with_the_reason(prefect_harness, tiny_model_dir, tmp_path):
    from flows.pipeline import train_flow

    (tmp_path / "bad.jsonl").write_text('{"prompt_id": "x"}\n')
    cfg = TrainConfig(
        model=str(tiny_model_dir), data=str(tmp_path / "bad.jsonl"), output_dir=str(tmp_path / "run")
    )
    state = train_flow(cfg, workdir=str(tmp_path / "w"), return_state=True)
    assert state.is_failed()
    assert "lacks column(s)" in state.message or "lacks column(s)" in str(
        state.result(raise_on_failure=False)
    )
