"""Faults a real user meets: two runs in one workdir, a run killed with ``kill -9`` (its MLflow runs left RUNNING,
its temporary Prefect server left behind). Each is provoked for real, with real processes, stores and servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import held_rrhf, wait_for_marker
from rrhf_core.workdir import WorkdirBusyError, held_here, workdir_lock

ROOT = Path(__file__).resolve().parents[1]


def spawn(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A Python child running ``code`` from the project root (``env`` over this process's environment); it prints
    READY <info> when it is set up."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise AssertionError(f"child failed: {line}{proc.stderr.read() if proc.stderr else ''}")
    return line.split(maxsplit=1)[1].strip() if " " in line.strip() else ""


def test_a_second_run_in_a_held_workdir_is_refused_naming_the_holder(tmp_path):
    holder = spawn(
        """
        import sys, time
        from rrhf_core.workdir import workdir_lock
        with workdir_lock(sys.argv[1], "rrhf-pipeline"):
            print("READY", flush=True)
            time.sleep(120)
        """,
        str(tmp_path),
    )
    try:
        ready(holder)
        with (
            pytest.raises(WorkdirBusyError, match=rf"in use by pid {holder.pid} .*rrhf-pipeline"),
            workdir_lock(tmp_path),
        ):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the lock with the killed holder: the workdir is free again, the stale file is no obstacle
    with workdir_lock(tmp_path, "test") as work:
        assert held_here(work)
        with workdir_lock(tmp_path):  # re-entrant within one process (a flow calling a flow)
            pass
        assert held_here(work)
    assert not held_here(tmp_path)


@pytest.mark.integration
def test_runs_a_killed_run_left_running_are_marked_failed_on_the_next_start(tmp_path):
    import mlflow

    from tasks.tracking import tracked_workdir

    killed = spawn(
        """
        import sys, time
        from tasks.tracking import start_run, stage_run, tracked_workdir
        with tracked_workdir(sys.argv[1], "rrhf"):
            with start_run("rrhf-round") as parent:
                with stage_run("train", parent.info.run_id):
                    print("READY", parent.info.run_id, flush=True)
                    time.sleep(120)
        """,
        str(tmp_path),
    )
    parent_id = ready(killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    assert {r.info.status for r in mlflow.search_runs(experiment_names=["rrhf"], output_format="list")} == {
        "RUNNING"
    }
    # a run of another workdir sharing the store is not touched
    other = mlflow.MlflowClient(uri).create_run(
        mlflow.get_experiment_by_name("rrhf").experiment_id, tags={"rrhf.workdir": "elsewhere:/x"}
    )
    with tracked_workdir(tmp_path, "rrhf"):
        runs = mlflow.search_runs(experiment_names=["rrhf"], output_format="list")
    status = {r.info.run_id: r.info.status for r in runs}
    assert status.pop(other.info.run_id) == "RUNNING"
    assert set(status.values()) == {"FAILED"} and parent_id in status and len(status) == 2
    assert all("rrhf.reaped" in r.data.tags for r in runs if r.info.run_id in status)


@pytest.mark.integration
def test_the_temporary_prefect_server_does_not_outlive_a_killed_command(tmp_path):
    from rrhf_cli.reaper import _alive, _is_prefect_server

    env_home = {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # a loaded 2-core machine starts it slowly
    }
    command = spawn(
        """
        import time
        from rrhf_cli.reaper import guard_temporary_server
        print("READY", guard_temporary_server(), flush=True)
        time.sleep(300)
        """,
        env=env_home,
    )
    server = int(ready(command))
    assert _alive(server) and _is_prefect_server(server)
    command.send_signal(signal.SIGKILL)  # no atexit, no cleanup in the command
    command.wait()
    deadline = time.monotonic() + 60  # ends as soon as it is gone; a loaded machine stops a server slowly
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server), "the temporary Prefect server outlived the killed command"


@pytest.mark.integration
@pytest.mark.slow
def test_a_pipeline_killed_in_training_reruns_reusing_its_data_stages_and_resuming_training(
    tmp_path, tiny_model_dir
):
    """`rrhf pipeline` killed with -9 while it trains: the rerun (same command) reuses ingest, sample, score and
    build, resumes training from the last checkpoint, marks the killed MLflow runs FAILED and finishes."""
    import json

    import mlflow

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"write some letters, case {i}"}) + "\n" for i in range(12))
    )
    work = tmp_path / "w"
    command = [sys.executable, "-m", "rrhf_cli", "pipeline", "--workdir", str(work), "--prompts", str(prompts),
               "--policy", str(tiny_model_dir), "--reward", "reward_fns:checksum", "--registered-model", "killed",
               "--set", "ingest.eval_share=0.25", "--set", "sample.backend=hf", "--set", "sample.k=3",
               "--set", "sample.max_new_tokens=8", "--set", "sample.dtype=fp32", "--set", "train.dtype=fp32",
               "--set", "train.max_steps=150", "--set", "train.checkpoint_every=10", "--set", "train.max_length=96",
               "--set", "train.max_response_tokens=16", "--set", "train.micro_batch_size=2",
               "--set", "train.grad_accum=1", "--set", "evaluate.max_new_tokens=8",
               "--set", "evaluate.dtype=fp32", "--set", "evaluate.preference_accuracy=false"]  # fmt: skip
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PREFECT_API_URL": "",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "PREFECT_HOME": str(tmp_path / "prefect-home")}  # fmt: skip
    log = (tmp_path / "killed.log").open("w")
    marker = tmp_path / "held"
    # held once training wrote its first checkpoint (step 10 of 150), then killed there
    first = held_rrhf("rrhf_core.training.trainer:save_checkpoint", 1, marker, command[3:],
                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    wait_for_marker(marker, first, log=tmp_path / "killed.log")
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in work.glob("stages/*/_DONE")}
    assert {n.split("-")[0] for n in done} == {"ingest", "sample", "score", "build"}  # training was not done

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    summary = json.loads((work / "last_summary.json").read_text())
    assert sorted(summary["reused"]) == ["build", "ingest", "sample", "score"]
    after = {p.parent.name: p.stat().st_mtime_ns for p in work.glob("stages/*/_DONE")}
    assert all(after[name] == stamp for name, stamp in done.items())  # nothing sampled or scored again
    train = json.loads((Path(summary["model_dir"]).parent / "train_summary.json").read_text())
    assert train["resumed_from"] >= 10 and train["resumed_from"] % 10 == 0 and train["steps"] == 150
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["rrhf"], output_format="list")
    killed = [r for r in runs if r.data.tags.get("rrhf.reaped")]
    assert {r.data.tags.get("rrhf.stage", r.info.run_name) for r in killed} >= {"rrhf-round", "train"}
    assert all(r.info.status == "FAILED" for r in killed)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    print(f"killed at step {train['resumed_from']}+; reused {summary['reused']}")
