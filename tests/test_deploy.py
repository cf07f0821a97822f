"""The deployment path for real: `prefect server start`, `prefect deploy`, a process worker, and
`prefect deployment run ... --watch` completing the pipeline on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import free_port, stop_group, tiny_round, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # own session: the whole process group can be stopped afterwards (a worker ignores SIGTERM otherwise)
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def test_deploy_worker_and_deployment_run(tmp_path, tiny_model_dir):
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PWD": str(ROOT),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PREFECT_API_AUTH_STRING"] = ""  # the test server asks for none
    env["MLFLOW_TRACKING_PASSWORD"] = "from-the-deploying-shell"
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = (
        "5"  # the scheduler looks every 5 s, not every 60 s
    )
    server = start(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "server.log",
    )
    worker = None
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/api/health", server, 300, tmp_path / "server.log")

        def prefect(*args: str, timeout: int = 120) -> str:
            out = subprocess.run(
                [str(bin_dir / "prefect"), *args],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            return out.stdout

        # docs/pipeline.md's sequence as written: one pool, then every deployment of prefect.yaml
        prefect("work-pool", "create", "rrhf-process", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        # the GPU deployment deploys to a docker pool (its runs need a docker engine with GPUs, not here)
        prefect("work-pool", "create", "rrhf-docker", "--type", "docker")
        prefect("--no-prompt", "deploy", "--prefect-file", "docker/prefect-gpu.yaml", "--all")
        (gpu,) = _api(port, "deployments/filter", {"deployments": {"name": {"any_": ["pipeline-gpu"]}}})
        jobs = gpu["job_variables"]
        assert jobs["image"] == "rrhf-pipeline:gpu" and jobs["container_create_kwargs"]["device_requests"]
        assert jobs["env"]["MLFLOW_TRACKING_PASSWORD"] == "from-the-deploying-shell"
        assert gpu["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/app"
        worker = start(
            [str(bin_dir / "prefect"), "worker", "start", "--pool", "rrhf-process"],
            env,
            tmp_path / "worker.log",
        )
        work = tmp_path / "w"
        config = tiny_round(work, _prompts(tmp_path), tiny_model_dir, "deployed-policy")
        out = prefect(
            "deployment",
            "run",
            "rrhf-pipeline/pipeline",
            "--params",
            json.dumps({"config": config}),
            "--watch",
            timeout=600,
        )
        assert "Completed" in out, out + (tmp_path / "worker.log").read_text()
        summary = json.loads((work / "last_summary.json").read_text())
        assert summary["promotion"]["version"] == "1"

        # schedules fire: the weekly retraining from prefect.yaml (deployed above) gets scheduled runs, and a
        # deployment scheduled every hour from an anchor 30 s ahead has that first run picked up and completed
        weekly = _flow_runs(
            port, "rrhf-retrain", "retrain-weekly", wait_for="SCHEDULED", log=tmp_path / "server.log"
        )
        assert weekly, "the cron schedule of retrain-weekly produced no scheduled run"
        train_params = {
            "config": {
                "model": str(tiny_model_dir),
                "data": str(_learnable(tmp_path)),
                "output_dir": str(tmp_path / "scheduled-train"),
                "max_steps": 2,
                "micro_batch_size": 2,
                "grad_accum": 1,
                "max_length": 64,
                "max_response_tokens": 16,
                "dtype": "fp32",
            },
            "workdir": str(tmp_path / "scheduled"),
        }
        prefect(
            "--no-prompt",
            "deploy",
            "--name",
            "train",
            "--interval",
            "3600",
            "--anchor-date",
            (datetime.now(UTC) + timedelta(seconds=30)).isoformat(),
            "--params",
            json.dumps(train_params),
        )
        done = _flow_runs(
            port, "rrhf-train", "train", wait_for="COMPLETED", log=tmp_path / "worker.log", timeout=300
        )
        assert done and (tmp_path / "scheduled-train" / "model" / "config.json").exists()
    finally:
        if worker is not None:
            stop_group(worker)
        stop_group(server)


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say something, case {i}"}) + "\n" for i in range(12)))
    return path


def _api(port: int, path: str, body: dict) -> list:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _flow_runs(port: int, flow: str, deployment: str, wait_for: str, log: Path, timeout: int = 90) -> list:
    """Flow runs of a deployment in state ``wait_for``, waiting up to ``timeout`` seconds for one to appear."""
    deployments = _api(port, "deployments/filter", {"deployments": {"name": {"any_": [deployment]}}})
    assert deployments, f"deployment {flow}/{deployment} not found"
    body = {
        "deployments": {"id": {"any_": [deployments[0]["id"]]}},
        "flow_runs": {"state": {"type": {"any_": [wait_for]}}},
    }
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            runs = _api(port, "flow_runs/filter", body)
        except OSError:  # a timeout, a refused or reset connection
            # the server shares two cores with a worker that is training: a slow reply is asked again, not a failure
            runs = []
        if runs:
            return runs
        time.sleep(3)
    raise AssertionError(
        f"no {wait_for} run of {flow}/{deployment} in {timeout} s:\n" + log.read_text()[-4000:]
    )


def _learnable(tmp_path: Path) -> Path:
    from conftest import learnable_records

    path = tmp_path / "learnable.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in learnable_records()))
    return path
