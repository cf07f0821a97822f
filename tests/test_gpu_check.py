"""The prepared GPU check's parts, on this CPU: the random shapes it benchmarks and its prefix-sharing check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape, billions", [("smollm2-135m", 0.1347), ("llama-1b", 1.236)])
def test_random_shapes_have_the_named_sizes(shape, billions):
    from transformers import LlamaForCausalLM

    from rrhf_core.training.bench import random_config

    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(random_config(shape))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.01)


@pytest.mark.slow
def test_the_prefix_sharing_check_finds_the_two_steps_equal_in_bf16():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check import prefix_sharing
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    r = prefix_sharing(2, "sdpa")
    assert r["max_abs_score_diff"] < 0.05 and r["abs_loss_diff"] < 0.05  # bf16: a few 1e-3 expected
    assert r["grad_rel_diff"] < 0.05
