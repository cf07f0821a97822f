"""The pipeline flow for real: Prefect (temporary server), MLflow (SQLite store, registry), tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rrhf_core.pipeline import PipelineConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"write some letters, case {i}"}) + "\n" for i in range(12))
    )
    return path


def tiny_config(workdir: Path, prompts: Path, model: Path, **train) -> PipelineConfig:
    return PipelineConfig(
        workdir=str(workdir),
        prompts=[str(prompts)],
        ingest={"eval_share": 0.25},
        policy=str(model),
        reward="reward_fns:checksum",
        registered_model="tiny-policy",
        sample={"backend": "hf", "k": 3, "max_new_tokens": 8, "temperature": 1.0, "dtype": "fp32"},
        train={
            "max_steps": 2,
            "micro_batch_size": 2,
            "grad_accum": 1,
            "max_length": 96,
            "max_response_tokens": 16,
            "learning_rate": 1e-3,
            "dtype": "fp32",
            **train,
        },
        evaluate={"max_new_tokens": 8},
    )


def runs_by_stage(workdir: Path) -> dict[str, list]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["rrhf"], output_format="list")
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags.get("rrhf.stage", r.info.run_name), []).append(r)
    return out


def test_pipeline_round_tracks_every_stage_and_registers_a_challenger(
    prefect_harness, tmp_path, prompts_file, tiny_model_dir
):
    from flows.pipeline import pipeline_flow

    summary = pipeline_flow(tiny_config(tmp_path / "w", prompts_file, tiny_model_dir))
    assert summary["evaluation"]["prompts"] >= 1
    # the latest round's prompts and training set at stable paths (the evaluate and train deployments read them)
    from rrhf_core.data.contracts import load_listwise

    assert (
        load_listwise(tmp_path / "w" / "train.parquet")[0] and (tmp_path / "w" / "prompts.parquet").exists()
    )
    runs = runs_by_stage(tmp_path / "w")
    assert {"ingest", "sample", "score", "build", "train", "evaluate", "register", "rrhf-round"} <= set(runs)
    assert all(r.info.status == "FINISHED" for rs in runs.values() for r in rs)
    parent = runs["rrhf-round"][0].info.run_id
    assert all(rs[0].data.tags["mlflow.parentRunId"] == parent for k, rs in runs.items() if k != "rrhf-round")
    assert "loss" in runs["train"][0].data.metrics and "win_rate" in runs["evaluate"][0].data.metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mv = client.get_model_version_by_alias("tiny-policy", "challenger")
    assert str(mv.version) == summary["promotion"]["version"]
    assert (
        mv.tags["rrhf.promotion"] in ("promoted", "rejected", "inconclusive")
        and "judge gain" in mv.description
    )
    assert mv.run_id == runs["train"][0].info.run_id  # the version's source is the run that trained it
    train_run = client.get_run(mv.run_id).info  # logging the model there kept the training's own end time
    assert train_run.end_time < runs["register"][0].info.start_time
    round_tags = client.get_run(parent).data.tags  # the round lists what it registered
    assert round_tags["rrhf.registered_model"] == f"tiny-policy v{mv.version}"
    assert round_tags["rrhf.promotion"] == mv.tags["rrhf.promotion"]

    def contexts(stage: str) -> set[str]:
        run = client.get_run(runs[stage][0].info.run_id)
        return {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}

    assert "samples" in contexts("score") and "evaluation" in contexts("evaluate")
    scored = client.list_artifacts(runs["score"][0].info.run_id)
    assert "scored_samples_head.json" in {a.path for a in scored}  # the samples beside their rewards
    table = json.loads(
        Path(
            client.download_artifacts(runs["score"][0].info.run_id, "scored_samples_head.json", str(tmp_path))
        ).read_text()
    )
    assert {"prompt_id", "source", "reward", "text"} <= set(table["columns"])

    # the plan of the same round in the same workdir: every stage reused, nothing run by planning
    from rrhf_core.plan import plan_round

    cfg = tiny_config(tmp_path / "w", prompts_file, tiny_model_dir)
    stages = tmp_path / "w" / "stages"
    before = sorted(stages.iterdir())
    plan = {p.stage: p for p in plan_round(cfg, str(tiny_model_dir), stages)}
    assert [(k, p.action) for k, p in plan.items()] == [
        ("ingest", "reuse"),
        ("sample", "reuse"),
        ("score", "reuse"),
        ("build", "reuse"),
        ("train", "reuse"),
        ("evaluate", "run"),
        ("register", "run"),
    ]
    assert plan["train"].folder == str(Path(summary["model_dir"]).parent)
    retrain = {
        p.stage: p
        for p in plan_round(
            tiny_config(tmp_path / "w", prompts_file, tiny_model_dir, seed=3), str(tiny_model_dir), stages
        )
    }
    assert retrain["build"].action == "reuse" and retrain["train"].action == "run"
    assert retrain["train"].why == "changed since the closest finished run: settings.seed"
    resample = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"seed": 9})})
    actions = [(p.stage, p.action) for p in plan_round(resample, str(tiny_model_dir), stages)]
    assert actions[1:5] == [
        ("sample", "run"),
        ("score", "after sample"),
        ("build", "after score"),
        ("train", "after build"),
    ]
    assert sorted(stages.iterdir()) == before


@pytest.mark.slow
def test_the_training_stage_launches_torchrun_itself(prefect_harness, tmp_path, prompts_file, tiny_model_dir):
    """train.nproc > 1: the stage starts torchrun (here FSDP over gloo), and its steps still reach MLflow."""
    from flows.pipeline import pipeline_flow

    summary = pipeline_flow(
        tiny_config(tmp_path / "w", prompts_file, tiny_model_dir, nproc=2, strategy="fsdp", max_steps=3)
    )
    train_dir = Path(summary["model_dir"]).parent
    assert json.loads((train_dir / "train_summary.json").read_text())["world_size"] == 2
    assert (train_dir / "launch_config.json").exists()
    from mlflow.tracking import MlflowClient

    train_run = runs_by_stage(tmp_path / "w")["train"][0]
    history = MlflowClient().get_metric_history(train_run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert summary["evaluation"]["prompts"] >= 1


def test_registry_promotes_a_better_model_and_not_a_worse_one(prefect_harness, tmp_path, tiny_model_dir):
    import mlflow
    from mlflow.tracking import MlflowClient

    from rrhf_core.evaluation.promotion import GateConfig
    from rrhf_core.pipeline import Trained
    from tasks.stages import promote_task
    from tasks.tracking import configure

    configure(tmp_path, "rrhf")

    def report(cand: float, base: float, win: float) -> dict:
        side = {"tokens_mean": 10.0}
        return {
            "candidate": {**side, "reward_mean": cand},
            "baseline": {**side, "reward_mean": base},
            "win_rate": win,
        }

    import shutil

    def model_copy(tag: str) -> str:  # three distinct models (content differs), one architecture
        folder = tmp_path / f"model-{tag}"
        shutil.copytree(tiny_model_dir, folder)
        (folder / "note.txt").write_text(tag)
        return str(folder)

    def trained(folder: str) -> Trained:
        return Trained(folder=folder, model_dir=folder)

    gate = GateConfig()
    with mlflow.start_run() as run:
        rid = run.info.run_id
        first = promote_task.fn(trained(model_copy("first")), report(0.2, 1.0, 0.1), gate, "gate-test", rid)
        better = promote_task.fn(trained(model_copy("better")), report(1.0, 0.5, 0.8), gate, "gate-test", rid)
        worse = promote_task.fn(trained(model_copy("worse")), report(0.2, 1.0, 0.1), gate, "gate-test", rid)
        # better numbers from a judge no better than a coin on held-out human pairs: inconclusive, not promoted
        coin = {"spec": "trained:judge", "rule": False, "held_out_pairs": 76, "held_out_accuracy": 0.5}
        unproven = {**report(2.0, 0.5, 0.9), "judges": [{**coin, "held_out_accuracy_ci": [0.39, 0.61]}]}
        inconclusive = promote_task.fn(trained(model_copy("coin")), unproven, gate, "gate-test", rid)
        failed = promote_task.fn(trained(model_copy("failed")), None, gate, "gate-test", rid)
        retried = promote_task.fn(trained(str(tmp_path / "model-failed")), None, gate, "gate-test", rid)
    assert retried["version"] == failed["version"]  # a retried registration registers nothing twice
    client = MlflowClient()
    # a version's description speaks of a champion only when there is one
    assert client.get_model_version("gate-test", first["version"]).description.startswith(
        "not promoted (there is no champion yet)"
    )
    assert client.get_model_version("gate-test", worse["version"]).description.startswith(
        "keep the current champion"
    )
    assert better["promoted"] and not worse["promoted"] and not failed["promoted"]
    assert str(client.get_model_version_by_alias("gate-test", "champion").version) == better["version"]
    assert str(client.get_model_version_by_alias("gate-test", "challenger").version) == failed["version"]
    assert not inconclusive["promoted"] and inconclusive["decision"]["verdict"] == "inconclusive"
    # the promotion, and only it, is a Prefect event that automations can react to
    promoted = _events("rrhf.champion.promoted", "mlflow.registered-model.gate-test")
    assert [e["payload"]["version"] for e in promoted] == [better["version"]]
    coin_version = client.get_model_version("gate-test", inconclusive["version"])
    assert coin_version.tags["rrhf.promotion"] == "inconclusive"
    assert coin_version.description.startswith("inconclusive, keep the current champion")
    tags = client.get_model_version("gate-test", worse["version"]).tags
    assert (
        tags["rrhf.promotion"] == "rejected" and "reward_gain" in json.loads(tags["rrhf.decision"])["numbers"]
    )

    # the champion's weights: its own folder only inside the trusted workdir and unchanged; else the registry's copy
    from tasks import registry

    local = registry.champion("gate-test", trusted_root=tmp_path)
    assert local["model_dir"] == str((tmp_path / "model-better").resolve())
    elsewhere = registry.champion("gate-test", trusted_root=tmp_path / "other-workdir")
    assert (
        elsewhere["model_dir"] != local["model_dir"]
        and (Path(elsewhere["model_dir"]) / "config.json").exists()
    )
    client.set_model_version_tag(
        "gate-test", better["version"], "rrhf.model_dir", str(tmp_path / "model-worse")
    )
    planted = registry.champion(
        "gate-test", trusted_root=tmp_path
    )  # a tag pointing at other weights is not obeyed
    assert "model-worse" not in planted["model_dir"]


def _events(name: str, resource: str, want: int = 1, timeout_s: float = 60.0) -> list[dict]:
    """The Prefect events ``name`` about ``resource`` (once ``want`` of them arrived: emission is asynchronous)."""
    import time

    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource]}}, "limit": 50}
    deadline = time.monotonic() + timeout_s
    while True:
        got = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=body, timeout=30).json()["events"]
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(1.0)


def test_failure_in_training_fails_runs_and_the_rerun_reuses_data_stages(
    prefect_harness, tmp_path, prompts_file, tiny_model_dir
):
    from flows.pipeline import pipeline_flow

    work = tmp_path / "w"
    failing = tiny_config(work, prompts_file, tiny_model_dir, fail_at_step=2, checkpoint_every=1)
    state = pipeline_flow(failing, return_state=True)
    assert state.is_failed()
    assert "injected failure at step 2" in str(state.result(raise_on_failure=False))
    runs = runs_by_stage(work)
    assert runs["train"][0].info.status == "FAILED" and runs["rrhf-round"][0].info.status == "FAILED"
    done = {p.parent.name: p.stat().st_mtime_ns for p in (work / "stages").glob("*/_DONE")}
    assert {n.split("-")[0] for n in done} == {"ingest", "sample", "score", "build"}

    summary = pipeline_flow(tiny_config(work, prompts_file, tiny_model_dir, checkpoint_every=1))  # no fault
    assert summary["promotion"]["version"]
    train_summary = json.loads((Path(summary["model_dir"]).parent / "train_summary.json").read_text())
    assert train_summary["resumed_from"] == 1 and train_summary["steps"] == 2  # step 1 was not redone
    after = {p.parent.name: p.stat().st_mtime_ns for p in (work / "stages").glob("*/_DONE")}
    assert all(after[name] == stamp for name, stamp in done.items())  # sampling and scoring were not redone
    reused = [
        r for rs in runs_by_stage(work).values() for r in rs if r.data.tags.get("rrhf.reused") == "true"
    ]
    assert {r.data.tags["rrhf.stage"] for r in reused} == {"ingest", "sample", "score", "build"}


def test_a_bad_gate_fails_the_flow_before_any_stage(prefect_harness, tmp_path):
    from flows.pipeline import pipeline_flow

    work = tmp_path / "w"
    with pytest.raises(Exception, match="min_win_rat"):  # Prefect validates the typed parameters first
        pipeline_flow(config={"workdir": str(work), "gate": {"min_win_rat": 0.6}})
    assert not (work / "stages").exists() and not (work / "mlflow.db").exists()


def test_reuse_follows_content_a_changed_reward_module_rescores_without_resampling(
    prefect_harness, tmp_path, prompts_file, tiny_model_dir, monkeypatch
):
    import importlib
    import sys

    from flows.pipeline import pipeline_flow

    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "round_reward.py"

    def write_reward(factor: int) -> None:
        module.write_text(
            f"def score(messages, response):\n    return float(sum(map(ord, response)) * {factor} % 97)\n"
        )
        sys.modules.pop("round_reward", None)
        importlib.invalidate_caches()

    write_reward(1)
    cfg = tiny_config(tmp_path / "w", prompts_file, tiny_model_dir).model_copy(
        update={"reward": "round_reward:score", "registered_model": "reuse-policy"}
    )
    first = pipeline_flow(cfg)
    assert first["reused"] == []
    again = pipeline_flow(
        cfg
    )  # nothing changed: every stage is reused, and the model is not registered twice
    assert again["reused"] == ["ingest", "sample", "score", "build", "train"]
    assert again["promotion"]["version"] == first["promotion"]["version"]

    write_reward(3)  # the reward's module changed: rescore and retrain, but do not sample again
    changed = pipeline_flow(cfg)
    assert changed["reused"] == ["ingest", "sample"]
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "w" / "stages").iterdir())
    assert stages.count("sample") == 1 and stages.count("score") == 2


def test_compare_trains_each_loss_on_the_same_data_and_judges_each(
    prefect_harness, tmp_path, prompts_file, tiny_model_dir
):
    from flows.pipeline import compare_flow

    cfg = tiny_config(tmp_path / "w", prompts_file, tiny_model_dir).model_copy(
        update={"evaluate": tiny_config(tmp_path, prompts_file, tiny_model_dir).evaluate.model_copy(
            update={"judge": "reward_fns:count_a"})}
    )  # fmt: skip
    rows = compare_flow(cfg, ["rrhf", "ranking", "dpo"])
    assert [r["loss"] for r in rows] == ["rrhf", "ranking", "dpo"]
    assert all("gain_lc" in r and "length_ratio" in r for r in rows)
    assert all(r["judge"] == "reward_fns:count_a" and len(r["gain_ci"]) == 2 for r in rows)
    assert rows[0]["base"] == rows[1]["base"] == rows[2]["base"]  # the same base policy, prompts and judge
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "w" / "stages").iterdir())
    assert stages.count("sample") == 1 and stages.count("train") == 3  # one data set, one training per loss
    # "ranking" is RRHF without its SFT term (the paper's Table 7 ablation)
    finals = [
        json.loads(p.read_text())["final"]
        for p in (tmp_path / "w" / "stages").glob("train-*/train_summary.json")
    ]
    ranking_alone = [f for f in finals if f["loss"] == pytest.approx(f["rank_loss"])]  # ranking and dpo
    with_sft = [f for f in finals if f["loss"] == pytest.approx(f["rank_loss"] + f["sft_loss"])]  # rrhf
    assert len(ranking_alone) == 2 and len(with_sft) == 1, finals
    runs = runs_by_stage(tmp_path / "w")
    assert json.loads((tmp_path / "w" / "last_comparison.json").read_text()) == json.loads(json.dumps(rows))
    assert "rrhf-compare" in runs


def test_a_round_trains_its_reward_and_a_separate_judge_and_registers_both(
    prefect_harness, tmp_path, tiny_model_dir
):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline_flow

    hh = tmp_path / "hh.jsonl"
    hh.write_text(
        "".join(
            json.dumps(
                {
                    "chosen": f"\n\nHuman: question {i}?\n\nAssistant: glad to help with {i}",
                    "rejected": f"\n\nHuman: question {i}?\n\nAssistant: no {i}",
                }
            )
            + "\n"
            for i in range(16)
        )
    )
    rm = {
        "backbone": str(tiny_model_dir),
        "batch_size": 4,
        "max_length": 48,
        "dtype": "fp32",
        "learning_rate": 1e-3,
    }
    cfg = tiny_config(tmp_path / "w", hh, tiny_model_dir).model_copy(
        update={
            "reward_models": PipelineConfig(
                reward_models={
                    "reward": rm,
                    "judge": {**rm, "seed": 1, "learning_rate": 2e-3},
                    "judge2": {**rm, "seed": 2, "learning_rate": 2e-3},
                }
            ).reward_models,
            "reward": "trained:reward",
            "registered_model": "rm-policy",
        }
    )
    cfg.evaluate.judge = ["trained:judge", "trained:judge2"]  # an ensemble of two judges
    summary = pipeline_flow(cfg)
    rms = summary["reward_models"]
    assert set(rms) == {"reward", "judge", "judge2"}
    assert len({rm["model_dir"] for rm in rms.values()}) == 3
    ev = summary["evaluation"]
    assert [j["spec"] for j in ev["judges"]] == [rms["judge"]["model_dir"], rms["judge2"]["model_dir"]]
    assert ev["judge"].startswith("mean of 2 standardised judges") and not ev["judge_is_training_reward"]
    assert ev["preference_pairs"] >= 1 and ev["candidate"]["preference_accuracy"] is not None
    runs = runs_by_stage(tmp_path / "w")
    assert len(runs["train-rm"]) == 3 and "eval.accuracy" in runs["train-rm"][0].data.metrics
    evaluation = runs["evaluate"][0].data
    assert evaluation.tags["judge_1"] == rms["judge2"]["model_dir"]
    assert {"judge_0.reward_gain", "judge_1.reward_gain_ci_lo", "reward_gain_ci_lo"} <= set(
        evaluation.metrics
    )
    client = MlflowClient()
    reward_v = client.get_model_version_by_alias("rrhf-reward", "reward")
    judge_v = client.get_model_version_by_alias("rrhf-reward", "judge")
    assert reward_v.version != judge_v.version
    # the score stage used the trained reward: its reward id names the reward model's folder
    score_run = runs["score"][0]
    assert rms["reward"]["model_dir"] in score_run.data.tags["reward_model"]
    # planned again: the reward models and the stages behind the trained reward are all reused
    from rrhf_core.plan import plan_round

    plan = plan_round(cfg, str(tiny_model_dir), tmp_path / "w" / "stages")
    assert {p.stage: p.action for p in plan} == {
        **{f"train-rm:{n}": "reuse" for n in ("reward", "judge", "judge2")},
        **dict.fromkeys(("ingest", "sample", "score", "build", "train"), "reuse"),
        "evaluate": "run",
        "register": "run",
    }


def test_a_trained_reward_that_is_not_defined_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"evaluate\.judge is 'trained:judge' but reward_models has no 'judge'"
    ):
        PipelineConfig(reward_models={"rm": {}}, reward="trained:rm", evaluate={"judge": "trained:judge"})
    with pytest.raises(
        ValueError, match=r"evaluate\.judge\[1\] is 'trained:j2' but reward_models has no 'j2'"
    ):
        PipelineConfig(
            reward_models={"rm": {}}, reward="trained:rm", evaluate={"judge": ["trained:rm", "trained:j2"]}
        )


def test_a_judge_list_naming_one_model_twice_is_refused():
    with pytest.raises(ValueError, match="names trained:j1 and trained:j2, whose settings are identical"):
        PipelineConfig(
            reward_models={"r": {}, "j1": {"seed": 3}, "j2": {"seed": 3}},
            reward="trained:r",
            evaluate={"judge": ["trained:j1", "trained:j2"]},
        )
    with pytest.raises(ValueError, match="has an empty spec"):
        PipelineConfig(evaluate={"judge": ["embedded:relevance", ""]})
    assert PipelineConfig(evaluate={"judge": ""}).evaluate.judge is None  # `--set evaluate.judge=`: unset


def test_a_judge_list_resolves_to_the_reward_models_folders():
    from rrhf_core.pipeline import with_trained_rewards

    cfg = PipelineConfig(
        reward_models={"a": {}, "b": {}},
        reward="trained:a",
        evaluate={"judge": ["trained:b", "embedded:relevance"]},
    )
    resolved = with_trained_rewards(cfg, {"a": "/rm/a", "b": "/rm/b"})
    assert resolved.reward == "/rm/a" and resolved.evaluate.judge == ["/rm/b", "embedded:relevance"]


def test_rounds_train_on_what_arrived_and_skip_when_nothing_did(prefect_harness, tmp_path, tiny_model_dir):
    from flows.pipeline import pipeline_flow
    from rrhf_core.data.arrivals import Watermark

    box, held = tmp_path / "drop", tmp_path / "held.jsonl"
    box.mkdir()
    held.write_text("".join(json.dumps({"prompt": f"held-out letters {i}"}) + "\n" for i in range(3)))
    (box / "week1.jsonl").write_text(
        "".join(json.dumps({"prompt": f"write letters, week 1 case {i}"}) + "\n" for i in range(6))
        + json.dumps({"prompt": "held-out letters 0"})  # a held-out prompt is never trained on
        + "\n"
    )
    (box / "broken.parquet").write_bytes(b"not parquet")
    cfg = tiny_config(tmp_path / "w", held, tiny_model_dir)
    arrivals = {"folder": str(box), "held_out": [str(held)], "min_new_prompts": 3}
    cfg = type(cfg).model_validate({**cfg.model_dump(), "arrivals": arrivals})
    first = pipeline_flow(cfg)
    assert "6 new prompt(s)" in first["arrivals"] and "broken.parquet" in first["arrivals"]
    assert "1 left out (they are held-out prompts)" in first["arrivals"]
    assert first["evaluation"]["prompts"] == 3  # judged on the held-out prompts only
    mark = Watermark.load(tmp_path / "w" / "arrivals.json")
    assert set(mark.files) == {"week1.jsonl"} and len(mark.prompt_ids) == 6
    # nothing new: the round samples and trains nothing and says so
    trained = sorted((tmp_path / "w" / "stages").glob("train-*"))
    second = pipeline_flow(cfg)
    assert second["skipped"].startswith("0 new prompt(s) arrived") and "evaluation" not in second
    assert sorted((tmp_path / "w" / "stages").glob("train-*")) == trained
    # a new drop: only its prompts (one of them was trained on already)
    (box / "week2.jsonl").write_text(
        "".join(json.dumps({"prompt": f"write letters, week 2 case {i}"}) + "\n" for i in range(4))
        + json.dumps({"prompt": "write letters, week 1 case 0"})
        + "\n"
    )
    third = pipeline_flow(cfg)
    assert (
        "4 new prompt(s), 1 already trained on" in third["arrivals"] and third["evaluation"]["prompts"] == 3
    )
    assert len(Watermark.load(tmp_path / "w" / "arrivals.json").rounds) == 2


def _paused_run(timeout: float = 600.0):
    """The flow run that is paused (waiting for its review form), once there is one."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                return runs[0]
            time.sleep(1.0)
    raise AssertionError("no flow run paused for review")


def _round_paused_for_review(tmp_path: Path, prompts: Path, model: Path, timeout_s: int):
    """A tiny round with gate.human: required (and a gate the tiny model passes) started in a thread; returns the
    thread, the dict its summary lands in, and the paused flow run."""
    import threading

    from flows.pipeline import pipeline_flow

    cfg = tiny_config(tmp_path / "w", prompts, model)
    gate = {"human": "required", "human_pairs": 2, "human_timeout_s": timeout_s, "min_reward_gain": -1.0,
            "min_win_rate": 0.0, "max_length_ratio": 100.0, "max_empty_increase": 1.0}  # fmt: skip
    cfg = type(cfg).model_validate({**cfg.model_dump(), "gate": gate})
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(summary=pipeline_flow(cfg)))
    worker.start()
    return worker, out, _paused_run()


def test_a_round_pauses_for_human_review_and_a_submitted_form_decides(
    prefect_harness, tmp_path, prompts_file, tiny_model_dir
):
    """gate.human: required. The round pauses after its evaluation; the form is answered through Prefect's API
    (resume_flow_run with a run input); the answer is in the decision, the preference pairs are kept for reward-model
    training, and a second submission is refused."""

    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    from rrhf_core.reward_model.pairs import load_pairs

    worker, out, run = _round_paused_for_review(tmp_path, prompts_file, tiny_model_dir, 900)
    sheet = json.loads(next((tmp_path / "w" / "reviews").glob("*.sheet.json")).read_text())
    assert len(sheet) == 2
    # the reviewer prefers the challenger on pair 1 and the champion on pair 2, and approves
    first = sheet[0]["candidate_is"]
    second = "B" if sheet[1]["candidate_is"] == "A" else "A"
    resume_flow_run(run.id, run_input={"pair_1": first, "pair_2": second, "approve": True})
    worker.join(timeout=600)
    summary = out["summary"]
    review = summary["promotion"]["review"]
    assert review["status"] == "answered" and review["approve"]
    assert (review["wins"], review["ties"], review["losses"]) == (1, 0, 1)
    assert any(
        r.startswith("reviewer approved: human win rate 0.500")
        for r in summary["promotion"]["decision"]["reasons"]
    )
    assert summary["promotion"]["promoted"]
    with pytest.raises(NotPausedError):  # a form submitted twice: the round is no longer paused
        resume_flow_run(run.id, run_input={"pair_1": "A", "approve": False})
    # the two non-tied choices are preference pairs in the pair-file format reward_models.*.pairs reads
    differ = sum(p["a"].strip() != p["b"].strip() for p in sheet[:2])  # identical answers make no pair
    assert review["preference_pairs"] == differ
    if differ:
        pairs = load_pairs([str(tmp_path / "w" / "reviews" / "pairs.jsonl")], eval_share=0.0)
        assert len(pairs.train) == differ


def test_nobody_reviews_in_time_the_configured_default_applies(
    prefect_harness, tmp_path, prompts_file, tiny_model_dir
):
    """gate.human: required with a short timeout: the round records the timeout and does not promote; a form sent
    afterwards is refused."""

    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    worker, out, run = _round_paused_for_review(tmp_path, prompts_file, tiny_model_dir, 5)
    worker.join(timeout=600)
    summary = out["summary"]
    assert summary["promotion"]["review"]["status"] == "timeout" and not summary["promotion"]["promoted"]
    assert (
        "human review required but nobody answered within 5 s" in summary["promotion"]["decision"]["reasons"]
    )
    with pytest.raises(NotPausedError):
        resume_flow_run(run.id, run_input={"pair_1": "A", "approve": True})
