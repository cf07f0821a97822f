"""The production stack for real: `rrhf stack up` (PostgreSQL, Prefect server and MLflow server on it, a process
worker), the deployment sequence of docs/pipeline.md against it, one pipeline round run by the worker, and the UIs checked in
headless Chromium (what a user must see after a round). Screenshots are kept under runs/test-artifacts/ui/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import free_port, tiny_round
from rrhf_cli import stack

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("RRHF_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts")) / "ui"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def round_on_stack(tmp_path_factory, tiny_model_dir):
    try:
        stack._pg_bindir()
    except Exception as e:
        pytest.skip(f"no PostgreSQL server on this machine: {e}")
    # PostgreSQL runs as the 'postgres' user when the tests run as root: its folder must be reachable by it
    where = Path(tempfile.mkdtemp(prefix="rrhf-stack-"))
    where.chmod(0o755)
    ports = stack.Ports(postgres=free_port(), prefect=free_port(), mlflow=free_port(), worker=free_port())
    lines: list[str] = []
    # the worker (started by `stack up`, with this environment) imports the tests' reward function
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    try:
        st = stack.up(where / "stack", ports, say=lines.append)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    tmp = tmp_path_factory.mktemp("stack-round")
    try:
        assert (
            subprocess.run(
                [sys.executable, "-m", "rrhf_cli", "stack", "status", "--dir", str(st.dir)]
            ).returncode
            == 0
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
            **st.client_env(),
            "PWD": str(ROOT),
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        }
        prefect = str(Path(sys.executable).parent / "prefect")

        def run(*args: str, timeout: int = 180) -> str:
            out = subprocess.run(
                [prefect, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
            )
            assert out.returncode == 0, out.stdout + out.stderr + stack._tail(st.logs / "worker.log", 40)
            return out.stdout

        # docs/pipeline.md's sequence, against the stack (the pool exists already: `stack up` made it)
        run("--no-prompt", "deploy", "--all")
        prompts = tmp / "prompts.jsonl"
        prompts.write_text(
            "".join(json.dumps({"prompt": f"say something, case {i}"}) + "\n" for i in range(12))
        )
        work = tmp / "w"
        config = tiny_round(work, prompts, tiny_model_dir, "stack-policy")
        config["evaluate"]["dtype"] = "fp32"
        config |= {
            # a gate that lets this tiny round through, so the registry shows a champion to the browser
            "gate": {
                "min_reward_gain": -1.0e9,
                "min_win_rate": 0.0,
                "max_length_ratio": 1.0e9,
                "max_empty_increase": 1.0,
                "decide_on": "mean",
            },
        }
        out = run(
            "deployment", "run", "rrhf-pipeline/pipeline", "--params", json.dumps({"config": config}), "--watch",
            timeout=600,
        )  # fmt: skip
        assert "Completed" in out, out + stack._tail(st.logs / "worker.log", 60)
        flow_run_id = next(
            line.split()[-1] for line in out.splitlines() if "UUID" in line or "flow run id" in line.lower()
        )
        summary = json.loads((work / "last_summary.json").read_text())
        yield st, summary, flow_run_id.strip()
    finally:
        stack.down(st.dir, say=lines.append)
        shutil.rmtree(where, ignore_errors=True)


def test_the_pipeline_deployment_runs_on_the_postgres_backed_stack(round_on_stack):
    import psycopg2
    from mlflow.tracking import MlflowClient

    st, summary, flow_run_id = round_on_stack
    assert summary["promotion"]["version"] == "1" and summary["promotion"]["promoted"]
    # the round was tracked by the MLflow server, and its runs and the registry live in PostgreSQL
    client = MlflowClient(st.mlflow_uri, registry_uri=st.mlflow_uri)  # not a registry an earlier test set
    assert client.get_model_version_by_alias("stack-policy", "champion").version == "1"
    conn = psycopg2.connect(st.db_url("mlflow"))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] >= 7  # the round and its stage runs
        cur.execute("SELECT count(*) FROM registered_model_aliases WHERE alias = 'champion'")
        assert cur.fetchone()[0] == 1
    conn.close()
    conn = psycopg2.connect(st.db_url("prefect"))
    with conn.cursor() as cur:
        cur.execute("SELECT state_type FROM flow_run WHERE id = %s", (flow_run_id,))
        assert cur.fetchone()[0] == "COMPLETED"
    conn.close()


def test_the_uis_show_the_round_in_a_real_browser(round_on_stack):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    st, summary, flow_run_id = round_on_stack
    client = MlflowClient(st.mlflow_uri, registry_uri=st.mlflow_uri)  # not a registry an earlier test set
    parent = client.get_run(summary["mlflow_run_id"])
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = {r.info.run_name: r for r in children}
    assert {"ingest", "sample", "score", "build", "train", "evaluate"} <= set(stages), sorted(stages)
    evaluation = stages["evaluate"]
    gain_metric = next(k for k in sorted(evaluation.data.metrics) if "gain" in k)
    version = client.get_model_version("stack-policy", "1")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # the UIs render slowly on a busy 2-core machine
        mlflow_run = f"{st.mlflow_uri}/#/experiments/{exp}/runs"

        # the round's run and each stage's run, by name
        page.goto(f"{mlflow_run}/{parent.info.run_id}")
        expect(page.get_by_text(parent.info.run_name).first).to_be_visible()
        page.screenshot(path=str(SHOTS / "mlflow-round-run.png"), full_page=True)
        for name, run in sorted(stages.items()):
            page.goto(f"{mlflow_run}/{run.info.run_id}")
            expect(page.get_by_text(name, exact=True).first).to_be_visible()

        # the evaluation's run: a gain metric on its overview, the table and the plot among its artifacts
        page.goto(f"{mlflow_run}/{evaluation.info.run_id}")
        expect(page.get_by_text(gain_metric).first).to_be_visible()
        page.screenshot(path=str(SHOTS / "mlflow-evaluate-run.png"), full_page=True)
        page.goto(f"{mlflow_run}/{evaluation.info.run_id}/artifacts")
        for artifact in ("eval_samples.json", "eval_rewards.png", "eval_report.json"):
            expect(page.get_by_text(artifact).first).to_be_visible()
        page.screenshot(path=str(SHOTS / "mlflow-evaluate-artifacts.png"), full_page=True)

        # the registered model: the champion and challenger aliases; its version: the promotion decision
        page.goto(f"{st.mlflow_uri}/#/models/stack-policy")
        expect(page.get_by_text("champion").first).to_be_visible()
        expect(page.get_by_text("challenger").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "mlflow-registered-model.png"), full_page=True)
        page.goto(f"{st.mlflow_uri}/#/models/stack-policy/versions/1")
        expect(page.get_by_text("PROMOTE to champion").first).to_be_visible()
        assert version.description.startswith("PROMOTE to champion")
        page.screenshot(path=str(SHOTS / "mlflow-model-version.png"), full_page=True)

        # the Prefect flow run: completed, with its stage task runs
        page.goto(f"http://127.0.0.1:{st.ports.prefect}/runs/flow-run/{flow_run_id}")
        expect(page.get_by_text("Completed").first).to_be_visible()
        expect(page.get_by_text("Task Runs").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "prefect-flow-run.png"), full_page=True)
        browser.close()
