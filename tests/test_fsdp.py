"""FSDP training (FSDP2 fully_shard over gloo on CPU), sharded checkpoints, and the torchrun launcher."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from conftest import free_port
from rrhf_core.errors import ConfigError
from rrhf_core.metrics import read_metrics
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.launch import LaunchError, rendezvous_id, torchrun_command, train
from rrhf_core.training.sharding import check_dcp_metadata


def _cfg(model: Path, data: Path, out: Path, **over) -> TrainConfig:
    base = dict(
        model=str(model),
        data=str(data),
        output_dir=str(out),
        dtype="fp32",
        max_length=128,
        max_response_tokens=64,
        learning_rate=1e-3,
        warmup_ratio=0.1,
        micro_batch_size=2,
        grad_accum=1,
        max_steps=6,
        threads=1,
        checkpoint_minutes=0,
    )
    return TrainConfig(**(base | over))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_ddp(tiny_model_dir, learnable_set, tmp_path):
    ddp = train(_cfg(tiny_model_dir, learnable_set, tmp_path / "ddp", nproc=2), progress=False)
    fsdp = train(
        _cfg(tiny_model_dir, learnable_set, tmp_path / "fsdp", nproc=2, strategy="fsdp"), progress=False
    )
    assert fsdp.summary["world_size"] == 2 and fsdp.steps == 6
    l_ddp = [m["loss"] for m in read_metrics(tmp_path / "ddp" / "metrics.jsonl")]
    l_fsdp = [m["loss"] for m in read_metrics(tmp_path / "fsdp" / "metrics.jsonl")]
    assert len(l_fsdp) == 6
    assert l_fsdp == pytest.approx(l_ddp, rel=1e-4)  # the same optimisation, sharded
    assert l_fsdp[-1] < l_fsdp[0]
    # the launcher streamed every step to the caller's history, and the saved folder is the whole model
    assert [h["step"] for h in fsdp.history] == list(range(1, 7))
    a, b = _weights(ddp.model_dir), _weights(fsdp.model_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5)
    # the gathered weights were assigned into a frame of the model: saved with the same configuration
    assert (Path(fsdp.model_dir) / "config.json").read_text() == (
        Path(ddp.model_dir) / "config.json"
    ).read_text()


@pytest.mark.slow
def test_fsdp_resumes_from_its_sharded_checkpoint(tiny_model_dir, learnable_set, tmp_path):
    whole = train(
        _cfg(tiny_model_dir, learnable_set, tmp_path / "whole", nproc=2, strategy="fsdp"), progress=False
    )
    cut = _cfg(tiny_model_dir, learnable_set, tmp_path / "cut", nproc=2, strategy="fsdp", checkpoint_every=2)
    with pytest.raises(LaunchError, match="injected failure at step 5"):
        train(cut.model_copy(update={"fail_at_step": 5}), progress=False)
    ckpt = tmp_path / "cut" / "checkpoints" / "step-00000004"
    assert (ckpt / "sharded" / ".metadata").exists() and not (ckpt / "trainable.pt").exists()

    # another number of processes is refused, saying why
    with pytest.raises(ConfigError, match="written by 2 process"):
        train(cut.model_copy(update={"nproc": 1}), progress=False)

    resumed = train(cut, progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == 6
    got = [m["loss"] for m in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    want = [m["loss"] for m in read_metrics(tmp_path / "whole" / "metrics.jsonl")]
    assert got == pytest.approx(want, rel=1e-5)
    a, b = _weights(whole.model_dir), _weights(resumed.model_dir)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_fsdp_on_one_process_with_lora_saves_the_merged_model(tiny_model_dir, learnable_set, tmp_path):
    cfg = _cfg(
        tiny_model_dir,
        learnable_set,
        tmp_path / "lora",
        strategy="fsdp",
        max_steps=3,
        checkpoint_every=2,
        lora={"enabled": True, "r": 4, "alpha": 8},
    )
    r = train(cfg, progress=False)
    assert r.steps == 3 and r.summary["world_size"] == 1
    assert (tmp_path / "lora" / "checkpoints" / "step-00000002" / "sharded" / ".metadata").exists()
    merged, base = _weights(r.model_dir), _weights(tiny_model_dir)
    assert not any("lora" in k for k in merged)
    assert merged.keys() == base.keys()
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed and all(
        "proj" in k for k in changed
    )  # the adapters were trained and merged into the layers


def test_planted_checkpoint_metadata_is_refused(tmp_path):
    import os

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo this must not run",))

    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ConfigError, match=r"\.system is not part of a checkpoint's metadata"):
        check_dcp_metadata(folder)
    with pytest.raises(ConfigError, match=r"no \.metadata"):
        check_dcp_metadata(tmp_path)


def test_torchrun_command_lines(tmp_path):
    one = torchrun_command(_cfg("m", "d", tmp_path, nproc=4), "c.json", python="py")
    assert one == [
        "py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
        "-m", "rrhf_core.training.launch", "c.json",
    ]  # fmt: skip
    cfg = _cfg("m", "d", tmp_path, nproc=8, nnodes=2, rdzv_endpoint="node0:29500", rdzv_timeout_s=120)
    two = torchrun_command(cfg, "c.json", python="py")
    assert two[:4] == ["py", "-m", "torch.distributed.run", "--nproc-per-node=8"]
    assert "--standalone" not in two
    assert {
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0:29500",
        "--rdzv-conf=join_timeout=120",
    } <= set(two)
    # every machine running the same configuration meets under the same id; another run under another
    assert f"--rdzv-id={rendezvous_id(cfg)}" in two
    assert rendezvous_id(cfg) == rendezvous_id(cfg.model_copy(update={"rdzv_timeout_s": 5}))
    assert rendezvous_id(cfg) != rendezvous_id(cfg.model_copy(update={"seed": 1}))
    assert cfg.world_size == 16
    with pytest.raises(ValidationError, match="set rdzv_endpoint"):
        _cfg("m", "d", tmp_path, nnodes=2)


@pytest.mark.slow
def test_a_machine_that_never_joins_fails_the_run_in_time(tiny_model_dir, learnable_set, tmp_path):
    port = free_port()
    cfg = _cfg(
        tiny_model_dir,
        learnable_set,
        tmp_path / "alone",
        nnodes=2,
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_timeout_s=5,
    )
    # it ends because the rendezvous timed out (rdzv_timeout_s), not after any wall-clock bound of the test's own:
    # a slow machine takes longer to start torchrun, never longer to give up on the missing machine
    with pytest.raises(LaunchError, match="torchrun exit status") as failed:
        train(cfg, progress=False)
    assert "RendezvousTimeoutError" in str(failed.value), str(failed.value)[-2000:]


def test_the_launcher_forwards_each_complete_metrics_line_once(tmp_path):
    from rrhf_core.training.launch import _MetricsTail

    got: list[tuple[int, dict]] = []

    class Sink:
        def log(self, metrics, step):
            got.append((step, dict(metrics)))

    path = tmp_path / "metrics.jsonl"
    tail = _MetricsTail(path, Sink())
    tail.poll()  # no file yet
    path.write_text(
        '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5'
    )  # the second line is still being written
    tail.poll()
    assert got == [(1, {"loss": 2.0})]
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    tail.poll()
    tail.poll()
    assert got == [(1, {"loss": 2.0}), (2, {"loss": 1.5})]
