"""Reuse is keyed on content: a changed reward module, setting, input file or library module gives a new key;
changing nothing gives the same key, and the stored result comes back."""

from __future__ import annotations

import json
import textwrap

import pytest

from rrhf_core import pipeline as plan
from rrhf_core.digest import code_digest, code_modules, file_digest, model_fingerprint
from rrhf_core.pipeline import PipelineConfig, Scored
from rrhf_core.reuse import StageKey, StageStore
from rrhf_core.scoring.reward import FunctionReward, reward_fingerprint


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A reward function in a module of its own, importable as ``reuse_reward:score``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "reuse_reward.py"

    def write(bonus: float) -> None:
        path.write_text(
            textwrap.dedent(f"""
            def helper(text):
                return len(text) * {bonus}

            def score(messages, response):
                return helper(response)
            """)
        )

    write(1.0)
    return path, write


def score_key(tmp_path, reward: str, **score_settings) -> StageKey:
    for name, content in (("p.parquet", b"prompts"), ("s.parquet", b"samples")):
        if not (tmp_path / name).exists():
            (tmp_path / name).write_bytes(content)
    cfg = PipelineConfig(reward=reward, score=score_settings)
    sc = plan.score_config(cfg, str(tmp_path / "p.parquet"), str(tmp_path / "s.parquet"))
    inputs = {
        "prompts": file_digest(sc.prompts),
        "samples0": file_digest(sc.samples[0]),
        "reward": reward_fingerprint(sc.reward),
    }
    return StageKey.of("score", sc, inputs)


def test_changing_nothing_keeps_the_key(tmp_path, reward_module):
    assert score_key(tmp_path, "reuse_reward:score") == score_key(tmp_path, "reuse_reward:score")


def test_a_change_anywhere_in_the_reward_module_changes_the_key(tmp_path, reward_module):
    _, write = reward_module
    before = score_key(tmp_path, "reuse_reward:score")
    write(2.0)  # the function itself is unchanged: only a helper it calls
    after = score_key(tmp_path, "reuse_reward:score")
    assert before.digest() != after.digest()
    assert after.differences(before.as_dict()) == ["inputs.reward"]
    # the score cache is keyed the same way, so it cannot serve the old rewards either
    assert FunctionReward("reuse_reward:score").reward_id == reward_fingerprint("reuse_reward:score")


def test_a_setting_or_an_input_change_changes_the_key(tmp_path, reward_module):
    base = score_key(tmp_path, "reuse_reward:score")
    assert score_key(tmp_path, "reuse_reward:score", max_length=512).differences(base.as_dict()) == [
        "settings.max_length"
    ]
    (tmp_path / "s.parquet").write_bytes(b"other samples")
    assert score_key(tmp_path, "reuse_reward:score").differences(base.as_dict()) == ["inputs.samples0"]


def test_paths_and_bookkeeping_do_not_change_the_key(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"train")
    a = plan.train_config(PipelineConfig(), str(tmp_path / "t.parquet"), "m")
    b = a.model_copy(update={"output_dir": "elsewhere", "log_every": 5, "checkpoint_every": 3})
    c = a.model_copy(update={"learning_rate": 1e-4})
    inputs = {"data": file_digest(a.data)}
    assert StageKey.of("train", a, inputs) == StageKey.of("train", b, inputs)
    assert StageKey.of("train", a, inputs) != StageKey.of("train", c, inputs)


def test_a_local_model_is_keyed_on_its_weights(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    v1 = model_fingerprint(str(folder))
    (folder / "model.safetensors").write_bytes(b"weights v2")  # retrained in place
    assert model_fingerprint(str(folder)) != v1
    assert model_fingerprint("org/hub-model") == "org/hub-model"


def test_the_code_digest_follows_the_stage_imports():
    mods = code_modules("rrhf_core.scoring.stage")
    assert {"rrhf_core.scoring.stage", "rrhf_core.scoring.reward", "rrhf_core.data.contracts"} <= set(mods)
    assert "rrhf_core.training.trainer" not in mods
    assert code_digest("rrhf_core.scoring.stage") != code_digest("rrhf_core.data.build")


def test_data_stages_and_reward_models_do_not_depend_on_the_policy_trainer():
    """A change to the policy's training code (its batches, attention, loss) keeps the cached samples, scores and
    reward models of a workdir: those stages' code digests do not reach ``rrhf_core.training``."""
    from rrhf_core.reuse import stage_module

    for stage in ("ingest", "sample", "score", "build", "train-rm"):
        reached = [m for m in code_modules(stage_module(stage)) if m.startswith("rrhf_core.training")]
        assert not reached, f"{stage} reaches {reached}"
    assert "rrhf_core.encoding" in code_modules(stage_module("sample"))  # prompts tokenised as training does


def test_the_store_returns_the_stored_result_only_for_the_same_key(tmp_path):
    store = StageStore(tmp_path / "stages")
    key = StageKey("score", {"a": 1}, {"x": "d1"}, "code")
    assert store.load(key, Scored) is None
    result = Scored(folder=str(store.folder(key)), scores="s.parquet", reward_id="r", metrics={"n": 3.0})
    store.save(key, result)
    assert store.load(key, Scored) == result
    assert store.load(StageKey("score", {"a": 2}, {"x": "d1"}, "code"), Scored) is None
    # a folder whose record names another key (hand-edited, or a digest collision) is never reused
    done = store.folder(key) / "_DONE"
    record = json.loads(done.read_text())
    record["key"]["inputs"] = {"x": "other"}
    done.write_text(json.dumps(record))
    assert store.load(key, Scored) is None


def test_previous_keys_are_the_stages_own_not_a_stage_with_a_longer_name(tmp_path):
    store = StageStore(tmp_path / "stages")
    train = StageKey("train", {"lr": 1}, {}, "code")
    store.save(
        StageKey("train-rm", {"backbone": "x"}, {}, "code"), Scored(folder="f", scores="s", reward_id="r")
    )
    assert store.previous("train") == []
    store.save(train, Scored(folder="f", scores="s", reward_id="r"))
    assert [k["stage"] for k in store.previous("train")] == ["train"]
    assert [k["stage"] for k in store.previous("train-rm")] == ["train-rm"]
