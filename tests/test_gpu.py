"""Tests that need a CUDA GPU (marked ``gpu``; skipped cleanly without one). ``benchmarks/gpu_check.py`` calls them
directly on the GPU machine, where pytest is not installed, so they take no fixtures and import pytest softly."""

from __future__ import annotations

from typing import Any

import torch

try:
    import pytest

    gpu: Any = pytest.mark.gpu
except ImportError:  # the GPU machine

    def gpu(f: Any) -> Any:
        return f


@gpu
def test_fsdp_and_ddp_steps_agree_on_one_gpu():
    from rrhf_core.training.reference import strategy_step

    ddp = strategy_step("ddp", "smollm2-135m", 4, bf16=True)
    fsdp = strategy_step("fsdp", "smollm2-135m", 4, bf16=True)
    # the first step is the same model on the same batch; bf16 parameters (FSDP) vs bf16 autocast (DDP)
    assert abs(ddp["losses"][0] - fsdp["losses"][0]) <= 0.02 * abs(ddp["losses"][0]) + 0.02
    assert fsdp["peak_memory_gb"] is not None and fsdp["peak_memory_gb"] > 0


@gpu
def test_prefix_sharing_matches_the_plain_step_in_bf16_on_cuda():
    from rrhf_core.training.reference import prefix_sharing

    r = prefix_sharing(6, "sdpa")
    assert r["max_abs_score_diff"] < 0.05 and r["abs_loss_diff"] < 0.05 and r["grad_rel_diff"] < 0.05


@gpu
def test_bf16_auto_picks_bf16_on_a_gpu_that_has_it():
    from rrhf_core.hardware import use_bf16

    assert use_bf16("auto", torch.device("cuda")) == torch.cuda.is_bf16_supported()
