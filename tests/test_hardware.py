"""Precision is decided from the hardware's capabilities, once per round: the same machine always gets the same
answer (a busy one included), the round's stages, stage keys and record agree, and a bf16 the hardware cannot compute
is refused before any stage runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rrhf_cli import main
from rrhf_core import hardware
from rrhf_core.errors import ConfigError
from rrhf_core.pipeline import PipelineConfig, with_precision

CPU = torch.device("cpu")


@pytest.fixture
def flags(monkeypatch):
    """Set the CPU flags the decision sees."""

    def use(*names: str, vendor: str = "GenuineIntel") -> None:
        monkeypatch.setattr(hardware, "_cpuinfo", lambda: (vendor, frozenset(names)))

    return use


@pytest.mark.parametrize(
    ("vendor", "cpu", "auto", "bf16_allowed"),
    [
        ("AuthenticAMD", ("avx2",), "fp32", False),
        ("GenuineIntel", ("avx2", "avx512f", "avx512_bf16"), "fp32", True),  # native bf16, slower than fp32
        ("AuthenticAMD", ("avx2", "avx512f", "avx512_bf16"), "bf16", True),  # native bf16, faster
        ("GenuineIntel", ("avx2", "avx512f", "avx512_bf16", "amx_bf16"), "bf16", True),
    ],
    ids=["avx2", "intel-avx512-bf16", "amd-avx512-bf16", "intel-amx-bf16"],
)
def test_the_decision_follows_the_cpus_flags(vendor, cpu, auto, bf16_allowed, flags):
    flags(*cpu, vendor=vendor)
    assert hardware.decide_precision("auto", CPU) == auto
    assert hardware.decide_precision("fp32", CPU) == "fp32"
    if bf16_allowed:
        assert hardware.decide_precision("bf16", CPU) == "bf16"
    else:
        with pytest.raises(
            ConfigError, match=r"train\.dtype is bf16, but this machine computes no bf16.*fp32"
        ):
            hardware.decide_precision("bf16", CPU, "train.dtype")


def test_a_busy_machine_gets_the_same_answer():
    """Every core kept busy by other processes: the decision (no timing in it) does not move."""
    hardware._cpuinfo.cache_clear()
    quiet = [hardware.decide_precision("auto", CPU) for _ in range(3)]
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(2 * (torch.get_num_threads() or 1))
    ]
    try:
        hardware._cpuinfo.cache_clear()
        busy = [hardware.decide_precision("auto", CPU) for _ in range(3)]
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert busy == quiet and len(set(quiet)) == 1


def test_a_round_decides_once_and_every_auto_stage_follows(flags):
    flags("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    cfg = PipelineConfig(
        workdir="w",
        train={"dtype": "fp32"},  # pinned: kept
        reward_models={"rm": {"backbone": "embedded:smollm2-135m-instruct"}},
    )
    resolved, record = with_precision(cfg)
    assert (resolved.dtype, resolved.sample.dtype, resolved.evaluate.dtype) == ("bf16", "bf16", "bf16")
    assert resolved.train.dtype == "fp32" and resolved.reward_models["rm"].dtype == "bf16"
    assert record["round"] == "bf16" and record["train"] == "fp32" and record["reward_model:rm"] == "bf16"
    assert (
        record["decided_by"]
        == "hardware: GenuineIntel CPU with amx_bf16, avx512_bf16, avx512f, avx2: bf16 is faster"
    )
    # a preset pins the round's precision for every stage left at auto
    pinned, record = with_precision(cfg.model_copy(update={"dtype": "fp32"}))
    assert {pinned.sample.dtype, pinned.evaluate.dtype, pinned.reward_models["rm"].dtype} == {"fp32"}
    assert record["decided_by"].startswith("setting")


def test_the_stage_keys_name_the_decided_precision(flags):
    from rrhf_core.pipeline import sample_config, train_config
    from rrhf_core.reuse import StageKey

    def keys(*cpu: str) -> tuple[str, str]:
        flags(*cpu)
        cfg, _ = with_precision(PipelineConfig(workdir="w"))
        sample = StageKey.of("sample", sample_config(cfg, "p.parquet", cfg.policy), {})
        train = StageKey.of("train", train_config(cfg, "t.parquet", cfg.policy), {})
        return sample.digest(), train.digest()

    fp32, bf16 = keys("avx2"), keys("amx_bf16")
    assert (
        fp32[0] != bf16[0] and fp32[1] != bf16[1]
    )  # a stage computed in bf16 never stands in for an fp32 one
    assert keys("avx2") == fp32  # and the same machine keys the same


def test_a_pinned_bf16_the_machine_lacks_stops_the_round_before_any_stage(flags, tmp_path, capsys):
    flags("avx2")
    code = main(["pipeline", "--workdir", str(tmp_path / "w"), "--set", "train.dtype=bf16"])
    err = capsys.readouterr().err
    assert code == 2 and "train.dtype is bf16, but this machine computes no bf16" in err, err
    assert not (tmp_path / "w").exists()
    code = main(["pipeline", "--plan", "--workdir", str(tmp_path / "w"), "--set", "dtype=bf16"])
    assert code == 2 and "dtype is bf16" in capsys.readouterr().err
