"""The prepared GPU check's parts, on this CPU: the random shapes it benchmarks and its prefix-sharing check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def render(report: Path) -> str:
    """``gpu_check.py --render``: a saved report as Markdown, as the docs' figures are made (run as the script)."""
    import os
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--render", str(report)],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


@pytest.mark.parametrize("shape, billions", [("smollm2-135m", 0.1347), ("llama-1b", 1.236)])
def test_random_shapes_have_the_named_sizes(shape, billions):
    from transformers import LlamaForCausalLM

    from rrhf_core.training.reference import random_config

    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(random_config(shape))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.01)


@pytest.mark.slow
def test_the_prefix_sharing_check_finds_the_two_steps_equal_in_bf16():
    from rrhf_core.training.reference import prefix_sharing

    # the tiny shape: a CPU without fast bf16 (AVX2 only) takes minutes over the 135M shape; the GPU check runs that
    r = prefix_sharing(2, "sdpa", "tiny")
    assert r["max_abs_score_diff"] < 0.05 and r["abs_loss_diff"] < 0.05  # bf16: a few 1e-3 expected
    assert r["grad_rel_diff"] < 0.05


@pytest.mark.integration  # minutes of real training steps in subprocesses: not in `make test-fast`
def test_the_quick_check_runs_on_this_cpu_and_writes_every_section(tmp_path):
    import json
    import os
    import subprocess

    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for key in ("environment", "bench_tiny", "prefix_sharing_sdpa", "strategy_ddp", "strategy_fsdp"):
        assert "error" not in report[key], (key, report[key])
    assert report["bench_tiny"]["cases"]
    case = report["bench_tiny"]["cases"][0]  # our step also with the block mask over one row per prompt
    assert case["project_mask"]["step_s"] > 0 and case["block_attention_speedup"] > 0
    assert "(block attention " in render(tmp_path / "gpu_check.json")
    ddp, fsdp = report["strategy_ddp"], report["strategy_fsdp"]
    assert len(ddp["losses"]) == len(fsdp["losses"]) == 2
    assert fsdp["losses"][0] == pytest.approx(ddp["losses"][0], rel=0.02)  # one model, one batch, bf16
    assert report["gpu_tests"] == {"skipped": "no CUDA device"}
    assert report["not_covered"]


@pytest.mark.integration
def test_a_check_out_of_time_keeps_what_it_finished_and_lists_the_rest(tmp_path):
    """``--budget-s 0``: every correctness section still runs and is saved; no benchmark case starts, each k is
    listed as not run, and the report is complete (``finished`` set)."""
    import json
    import os
    import subprocess

    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--budget-s", "0"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["finished"] and "error" not in report["strategy_fsdp"]
    assert report["bench_tiny"]["cases"] == [] and report["bench_tiny"]["not_run"]["k"] == [2]


def test_the_h200_report_renders_as_markdown_with_the_work_ratio():
    text = render(ROOT / "benchmarks" / "results" / "gpu_check-h200-2026-12-04.json")
    assert text.startswith("NVIDIA H200")
    assert "tests marked gpu: 3 of 3 passed" in text
    # k = 6 at one prompt per step: the reference runs 6 rows of prompt + response (padded), ours the prompt once
    row = next(line for line in text.splitlines() if line.startswith("| 6 |"))
    assert "| 2.64x |" in row


def test_the_benchmark_steps_agree_with_several_prompts_per_step():
    """``--prompts 3``: the reference step (3 x k padded rows, one group per prompt) and ours (the three blocks)
    give the same per-response scores, the same loss and the same gradients in fp32 (ours in both forms: block
    attention over one packed row, the block mask over one row per prompt)."""
    from rrhf_core.training import reference as b
    from rrhf_core.training.prefix import PrefixSharedLM

    model, vocab, pad = b.random_model("tiny")
    model.eval()  # no dropout
    examples = b.hh_batch(3, 2, vocab, seed=0)
    # prompts of different lengths: padding on the reference side
    assert len({len(p) for p, _, _ in examples}) > 1
    results = []
    for step, scorer in (
        (b.reference_step, model),
        (b.project_step, PrefixSharedLM(model)),
        (b.project_step, PrefixSharedLM(model, blocked=False)),
    ):
        model.zero_grad(set_to_none=True)
        record: list = []
        step(scorer, examples, pad, torch.device("cpu"), False, record=record)
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((record[0], grads))
    (ref, g1), *ours_both = results
    for ours, g2 in ours_both:
        assert ours.scores.detach() == pytest.approx(ref.scores.detach(), abs=1e-5)
        assert float(ours.loss.detach().sum()) == pytest.approx(float(ref.loss.detach().sum()), abs=1e-5)
        assert float((g1 - g2).norm() / g1.norm()) < 1e-4
