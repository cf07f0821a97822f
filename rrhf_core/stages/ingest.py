"""ingest: prompt inputs (files, HF datasets, the embedded sets) -> prompts.parquet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rrhf_core.data.config import IngestConfig
from rrhf_core.pipeline import Ingested, PipelineConfig, ingest_config
from rrhf_core.stages.base import Stage


def inputs(cfg: IngestConfig) -> dict[str, str]:
    from rrhf_core.data.ingest import input_fingerprint

    return {f"input{i}": input_fingerprint(src) for i, src in enumerate(cfg.inputs)}


def configs(cfg: PipelineConfig, results: Mapping[str, Any], start_model: str) -> dict[str, BaseModel]:
    return {"ingest": ingest_config(cfg)}


STAGE = Stage(
    name="ingest",
    summary="read prompts (JSONL/JSON/Parquet/CSV, HH, RRHF data) into prompts.parquet",
    config=IngestConfig,
    section="ingest",
    run="rrhf_core.data.ingest:run_ingest",
    code="rrhf_core.data.ingest",
    result=Ingested,
    inputs=inputs,
    configs=configs,
)
