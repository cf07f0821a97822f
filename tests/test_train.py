"""The trainer on a tiny real Llama: learning, options, divergence, resume after SIGKILL, 1 vs 2 processes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import build_tiny_model, held_rrhf, wait_for_marker
from rrhf_core.data.contracts import load_listwise
from rrhf_core.encoding import Encoder
from rrhf_core.errors import TrainingDivergedError
from rrhf_core.metrics import read_metrics
from rrhf_core.models import load_causal_lm, load_tokenizer
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.launch import train
from rrhf_core.training.listwise import encode_examples, evaluate_listwise

ROOT = Path(__file__).resolve().parents[1]


def cfg(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        data=str(data),
        output_dir=str(out),
        dtype="fp32",
        max_length=64,
        max_response_tokens=16,
        micro_batch_size=2,
        grad_accum=2,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        threads=1,
    )
    return TrainConfig(**{**base, **kw})


def ranking_accuracy(model_path, data, c):
    tok = load_tokenizer(str(model_path))
    examples, _ = load_listwise(data)
    encoded, _, _ = encode_examples(
        Encoder(tok, c.max_length, c.max_response_tokens, c.prompt_format), examples
    )
    return evaluate_listwise(load_causal_lm(str(model_path)), encoded, c, tok.pad_token_id)


def test_rrhf_training_raises_ranking_accuracy(tiny_model_dir, learnable_set, tmp_path):
    c = cfg(tiny_model_dir, learnable_set, tmp_path / "run", epochs=24, learning_rate=3e-3)
    before = ranking_accuracy(tiny_model_dir, learnable_set, c)
    result = train(c, progress=False)
    after = ranking_accuracy(result.model_dir, learnable_set, c)
    assert after["ranking_accuracy"] >= 0.95 > before["ranking_accuracy"] + 0.2, (before, after)
    assert after["loss"] < before["loss"]
    history = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [h["step"] for h in history] == list(range(1, result.steps + 1))
    assert {"loss", "rank_loss", "sft_loss", "ranking_accuracy", "tokens_per_s"} <= set(history[0])
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["prompts_used"] == 16 and summary["steps"] == 96


def test_lora_with_gradient_checkpointing_trains_only_adapters(tiny_model_dir, learnable_set, tmp_path):
    c = cfg(
        tiny_model_dir,
        learnable_set,
        tmp_path / "run",
        max_steps=2,
        gradient_checkpointing=True,
        lora={"enabled": True, "r": 4, "alpha": 8},
    )
    result = train(c, progress=False)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(result.model_dir / "model.safetensors")
    assert set(before) == set(after)  # merged back into a plain model folder
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)  # adapters sit on linear layers only
    assert not any("norm" in k or "embed" in k for k in changed)


def test_nan_loss_stops_the_run_with_a_clear_error(tmp_path, learnable_set):
    broken = build_tiny_model(tmp_path / "nan-model")
    weights = load_file(broken / "model.safetensors")
    key = next(k for k in weights if "q_proj" in k)
    weights[key][0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 1 .*no update was applied"):
        train(cfg(broken, learnable_set, tmp_path / "run"), progress=False)


def _cli(*args: str, log: Path | None = None) -> subprocess.Popen:
    """``rrhf train`` in a subprocess; output to a pipe, or to ``log`` for a run that is polled (no pipe to fill)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = log.open("w") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "rrhf_cli", "train", "--no-progress", *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _train_args(model, data, out, *extra: str) -> list[str]:
    return [
        "--model",
        str(model),
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--dtype",
        "fp32",
        "--max-length",
        "128",
        "--max-response-tokens",
        "64",
        "--learning-rate",
        "1e-3",
        "--warmup-ratio",
        "0.1",
        "--scheduler",
        "cosine",
        "--threads",
        "1",
        *extra,
    ]


@pytest.mark.integration
def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    model = build_tiny_model(tmp_path / "model", layers=4, hidden=64)
    from conftest import learnable_records

    data = tmp_path / "set.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in learnable_records(n=16, response_len=48)))
    args = [
        "--micro-batch-size",
        "2",
        "--grad-accum",
        "2",
        "--max-steps",
        "24",
        "--checkpoint-every",
        "3",
        "--keep-checkpoints",
        "2",
    ]
    full = _cli(*_train_args(model, data, tmp_path / "full", *args))
    assert full.wait(timeout=300) == 0, full.stdout.read()

    log = tmp_path / "killed.log"
    marker = tmp_path / "held"
    # held after its second checkpoint (step 6 of 24), then killed there: on a fast machine and a slow one alike
    killed = held_rrhf(
        "rrhf_core.training.trainer:save_checkpoint",
        2,
        marker,
        ["train", "--no-progress", *_train_args(model, data, tmp_path / "killed", *args)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_for_marker(marker, killed, log=log)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model").exists()
    killed_at = max(
        json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    )
    assert killed_at < 24

    resumed = _cli(*_train_args(model, data, tmp_path / "killed", *args))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resumed from step" in out and "resumed from step 0" not in out

    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    steps_full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    steps_resumed = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert [s["step"] for s in steps_resumed] == list(range(1, 25))  # nothing logged twice or lost
    assert [s["loss"] for s in steps_resumed] == pytest.approx([s["loss"] for s in steps_full], rel=1e-6)


@pytest.mark.integration
def test_two_processes_give_the_loss_trajectory_of_one(tmp_path, learnable_set):
    model = build_tiny_model(tmp_path / "model")
    one = _cli(
        *_train_args(
            model,
            learnable_set,
            tmp_path / "one",
            "--micro-batch-size",
            "2",
            "--grad-accum",
            "2",
            "--max-steps",
            "6",
        )
    )
    out1, _ = one.communicate(timeout=300)
    assert one.returncode == 0, out1
    two = _cli(
        *_train_args(
            model,
            learnable_set,
            tmp_path / "two",
            "--micro-batch-size",
            "2",
            "--grad-accum",
            "1",
            "--max-steps",
            "6",
            "--nproc",
            "2",
        )
    )
    out2, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out2
    l1 = [m["loss"] for m in read_metrics(tmp_path / "one" / "metrics.jsonl")]
    l2 = [m["loss"] for m in read_metrics(tmp_path / "two" / "metrics.jsonl")]
    assert len(l1) == len(l2) == 6
    assert l2 == pytest.approx(l1, rel=1e-4)
    assert l1[-1] < l1[0]  # and it is really training
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["world_size"] == 2


def test_sft_best_is_rrhf_with_ranking_weight_zero(tiny_model_dir, learnable_set, tmp_path):
    import torch

    from rrhf_core.training.collate import collate_shared
    from rrhf_core.training.listwise import objective

    tok = load_tokenizer(str(tiny_model_dir))
    examples, _ = load_listwise(learnable_set)
    encoded, _, _ = encode_examples(Encoder(tok, 64, 16, "chat"), examples[:3])
    batch = collate_shared(encoded, tok.pad_token_id)
    sums, lengths = -torch.rand(batch.rewards.numel()) * 10, torch.full((batch.rewards.numel(),), 4.0)
    c = cfg(tiny_model_dir, learnable_set, tmp_path)
    sft_best = objective(sums, lengths, batch, c.model_copy(update={"loss": "sft_best"}))
    zero_rank = objective(sums, lengths, batch, c.model_copy(update={"rrhf_weight": 0.0}))
    assert torch.equal(sft_best.loss, zero_rank.loss) and torch.equal(sft_best.loss, sft_best.sft)


@pytest.mark.parametrize("loss", ["dpo", "simpo"])
def test_the_pairwise_baselines_train_on_the_listwise_set(tiny_model_dir, learnable_set, tmp_path, loss):
    c = cfg(tiny_model_dir, learnable_set, tmp_path / "run", epochs=24, learning_rate=3e-3, loss=loss)
    before = ranking_accuracy(tiny_model_dir, learnable_set, c)
    result = train(c, progress=False)
    after = ranking_accuracy(result.model_dir, learnable_set, c)
    assert after["ranking_accuracy"] > before["ranking_accuracy"] + 0.2, (before, after)
    history = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert history[-1]["loss"] < history[0]["loss"]


def test_per_example_ranking_agreement_matches_one_example_at_a_time(tiny_model_dir, learnable_set):
    from rrhf_core.training.listwise import ranking_agreement

    c = TrainConfig(model=str(tiny_model_dir), data=str(learnable_set), output_dir="-", dtype="fp32", micro_batch_size=3,
                    max_length=64, max_response_tokens=16)  # fmt: skip
    tok = load_tokenizer(str(tiny_model_dir))
    examples, _ = load_listwise(learnable_set)
    encoded, _, _ = encode_examples(Encoder(tok, 64, 16, c.prompt_format), examples)
    # prompts of different lengths: micro-batches group examples by length, and the results must come back in order
    encoded = [dataclasses.replace(e, prompt_ids=e.prompt_ids[(i * 7) % 11 :]) for i, e in enumerate(encoded)]
    sizes = [len(e.prompt_ids) + sum(map(len, e.response_ids)) for e in encoded]
    assert sizes != sorted(sizes)
    model = load_causal_lm(str(tiny_model_dir))
    batched = ranking_agreement(model, encoded, c, tok.pad_token_id)
    one = [evaluate_listwise(model, [e], c, tok.pad_token_id)["ranking_accuracy"] for e in encoded]
    assert len(batched) == len(encoded) and batched == pytest.approx(one)


def test_length_grouping_keeps_each_epoch_a_permutation_and_pads_less():
    """Grouped order: the same prompts each epoch, a function of (seed, epoch) only, similar lengths per step, the
    incomplete tail last; group 1 is the plain shuffle."""
    from rrhf_core.training.trainer import epoch_order, step_indices

    n, batch = 23, 4  # 5 full steps and a tail of 3
    lengths = [(7 * i) % 50 + 10 for i in range(n)]
    plain = epoch_order(n, seed=3, epoch=1)
    assert epoch_order(n, 3, 1, lengths, group=1, global_batch=batch) == plain
    grouped = epoch_order(n, 3, 1, lengths, group=4, global_batch=batch)
    assert sorted(grouped) == list(range(n))
    assert grouped == epoch_order(
        n, 3, 1, lengths, group=4, global_batch=batch
    )  # resumable: same order again
    assert sorted(grouped[20:]) == sorted(plain[20:])  # the skipped tail is the plain order's tail
    steps = [grouped[i : i + batch] for i in range(0, 20, batch)]
    # the first window (4 steps = 16 prompts) is sorted: each of its steps spans one quarter of it by length
    window = sorted(plain[:16], key=lambda i: lengths[i])
    assert sorted(map(sorted, steps[:4])) == sorted(
        sorted(window[j : j + batch]) for j in range(0, 16, batch)
    )
    assert sorted(steps[4]) == sorted(plain[16:20])  # the last, partial window is one step

    def padded(order: list[int]) -> int:
        return sum(batch * max(lengths[i] for i in order[j : j + batch]) for j in range(0, 20, batch))

    assert padded(grouped) < padded(plain)
    assert step_indices(n, batch, 3, 6, lengths, 4) == epoch_order(n, 3, 1, lengths, 4, batch)[4:8]


def test_fused_adamw_serves_plain_cpu_parameters_and_updates_like_the_default() -> None:
    import torch

    from rrhf_core.hardware import fused_adamw

    torch.manual_seed(0)
    start = [torch.randn(3, 4), torch.randn(5)]
    grads = [torch.randn(3, 4), torch.randn(5)]
    after = []
    for fused in (None, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        assert fused_adamw(params)
        opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.01, fused=fused)
        for _ in range(3):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
        after.append([p.detach() for p in params])
    for a, b in zip(*after, strict=True):
        torch.testing.assert_close(a, b)
    assert not fused_adamw([torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)])
    assert not fused_adamw([])
