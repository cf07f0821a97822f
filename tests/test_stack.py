"""The production stack for real: `rrhf stack up` (PostgreSQL, Prefect server and MLflow server on it, a process
worker), the deployment sequence of docs/pipeline.md against it, one pipeline round run by the worker, and the UIs checked in
headless Chromium (what a user must see after a round). Screenshots are kept under runs/test-artifacts/ui/."""

from __future__ import annotations

import base64
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
                "min_judge_accuracy": None,  # the tiny round's judge is a model with no human pairs to meet
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
        weekly = _retrain_weekly_on_a_drop(run, tmp, tiny_model_dir)
        yield st, summary, flow_run_id.strip(), weekly
    finally:
        stack.down(st.dir, say=lines.append)
        shutil.rmtree(where, ignore_errors=True)


def _retrain_weekly_on_a_drop(run, tmp: Path, model: Path) -> dict:
    """The `retrain-weekly` deployment of prefect.yaml, run by the stack's worker on a drop folder with three new
    prompts (the review waits 5 s for nobody); its round's summary."""
    box, held, work = tmp / "drop", tmp / "held.jsonl", tmp / "weekly"
    box.mkdir()
    (box / "week1.jsonl").write_text(
        "".join(json.dumps({"prompt": f"new this week, case {i}"}) + "\n" for i in range(3))
    )
    held.write_text("".join(json.dumps({"prompt": f"held out, case {i}"}) + "\n" for i in range(2)))
    config = tiny_round(work, held, model, "stack-policy") | {
        "arrivals": {
            "folder": str(box),
            "traces": "rrhf-served",
            "held_out": [str(held)],
            "min_new_prompts": 2,
        },
        "gate": {"human": "optional", "human_pairs": 2, "human_timeout_s": 5, "min_judge_accuracy": None},
    }
    config["evaluate"]["dtype"] = "fp32"
    out = run("deployment", "run", "rrhf-retrain/retrain-weekly", "--params", json.dumps({"config": config}),
              "--watch", timeout=600)  # fmt: skip
    assert "Completed" in out, out
    return json.loads((work / "last_summary.json").read_text())


def test_the_weekly_retraining_deployment_trains_on_what_arrived_on_the_stack(as_stack_client):
    """retrain-weekly on Postgres: it starts from the champion the pipeline round promoted, takes the drop (and
    the served traces: none yet), waits for a review nobody gives, and registers its model."""
    _, first, _, weekly = as_stack_client
    assert weekly["start_model"] != first["start_model"]  # the champion, not the base policy
    assert "3 new prompt(s)" in weekly["arrivals"] and "0 new trace(s)" in weekly["arrivals"]
    assert weekly["promotion"]["review"]["status"] == "timeout"
    assert weekly["promotion"]["version"] == "2"


@pytest.fixture
def as_stack_client(round_on_stack, monkeypatch):
    """This process uses the stack as `rrhf stack env` would have it: with its credentials."""
    st = round_on_stack[0]
    for k, v in st.client_env().items():
        monkeypatch.setenv(k, v)
    return round_on_stack


def test_the_pipeline_deployment_runs_on_the_postgres_backed_stack(as_stack_client):
    import psycopg2
    from mlflow.tracking import MlflowClient

    st, summary, flow_run_id, _ = as_stack_client
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


def test_the_uis_show_the_round_in_a_real_browser(as_stack_client):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    st, summary, flow_run_id, _ = as_stack_client
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
        # both UIs take the stack's user and password (basic auth), as a person types them at the prompt
        login = base64.b64encode(st.client_env()["PREFECT_API_AUTH_STRING"].encode()).decode()
        context = browser.new_context(
            viewport={"width": 1600, "height": 1000}, extra_http_headers={"Authorization": f"Basic {login}"}
        )
        page = context.new_page()
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


# --- attacks on the stack that must fail -----------------------------------------------------------------------------


def _call(
    method: str, url: str, body: object = None, auth: str | None = None, headers: dict | None = None
) -> tuple[int, str, dict]:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(errors="replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), dict(e.headers)


def _csrf(st: stack.Stack, auth: str) -> dict[str, str]:
    """The CSRF headers a client of the Prefect API must send with a state change."""
    code, text, _ = _call("GET", f"{st.prefect_api}/csrf-token?client=probe", auth=auth)
    assert code == 200, text
    return {"Prefect-Csrf-Token": json.loads(text)["token"], "Prefect-Csrf-Client": "probe"}


def test_the_prefect_api_answers_nobody_without_credentials_and_refuses_a_command_of_the_callers(
    round_on_stack, tmp_path
):
    st = round_on_stack[0]
    auth = st.client_env()["PREFECT_API_AUTH_STRING"]
    marker = tmp_path / "pwned"
    # without credentials: nothing, not even a read
    # (a state change is refused before the credentials are read when it lacks a CSRF token: 403)
    assert _call("GET", f"{st.prefect_api}/deployments/name/rrhf-pipeline/pipeline")[0] == 401
    assert _call("POST", f"{st.prefect_api}/flows/filter", {})[0] in (401, 403)
    assert _call("POST", f"{st.prefect_api}/deployments/filter", {}, auth="rrhf:wrong")[0] in (401, 403)
    csrf = _csrf(st, auth)
    assert _call("POST", f"{st.prefect_api}/flows/filter", {}, auth="rrhf:wrong", headers=csrf)[0] == 401
    # with credentials, a flow run that names its own command or environment is refused by the server
    code, text, _ = _call("GET", f"{st.prefect_api}/deployments/name/rrhf-pipeline/pipeline", auth=auth)
    assert code == 200, text
    deployment = json.loads(text)["id"]
    overrides = [
        {"command": f"touch {marker}"},
        {"env": {"PYTHONSTARTUP": str(marker), "LD_PRELOAD": str(marker)}},
    ]
    for job_variables in overrides:
        url = f"{st.prefect_api}/deployments/{deployment}/create_flow_run"
        body = {"job_variables": job_variables}
        assert _call("POST", url, body)[0] in (401, 403)
        code, text, _ = _call("POST", url, body, auth=auth, headers=_csrf(st, auth))
        assert code == 422, (code, text)
    # a state change without the CSRF token is refused too
    assert _call("POST", f"{st.prefect_api}/flows/", {"name": "intruder"}, auth=auth)[0] == 403
    # the browser may call the API from the stack's own UI only
    _, _, headers = _call(
        "OPTIONS",
        f"{st.prefect_api}/flows/filter",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "evil.example" not in {k.lower(): v for k, v in headers.items()}.get(
        "access-control-allow-origin", ""
    )
    assert not marker.exists()


def test_mlflow_refuses_unauthenticated_reads_and_writes_and_does_not_serve_its_user_database(round_on_stack):
    st = round_on_stack[0]
    env = st.client_env()
    auth = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"
    api = f"{st.mlflow_uri}/api/2.0/mlflow"
    writes = [
        ("experiments/create", {"name": "intruder"}),
        ("registered-models/alias", {"name": "stack-policy", "alias": "champion", "version": "1"}),
        ("registered-models/create", {"name": "intruder"}),
    ]
    for path, body in writes:
        assert _call("POST", f"{api}/{path}", body)[0] == 401, path
        assert _call("POST", f"{api}/{path}", body, auth="rrhf:wrong")[0] == 401, path
    assert _call("GET", f"{api}/registered-models/get?name=stack-policy")[0] == 401
    assert _call("GET", f"{api}/registered-models/get?name=stack-policy", auth=auth)[0] == 200
    # the auth database sits outside the served artifact folder: the artifact API cannot hand it out
    auth_db = st.dir / "mlflow-auth" / "basic_auth.db"
    assert auth_db.exists() and not list((st.dir / "mlartifacts").rglob("basic_auth.db"))
    for path in ("basic_auth.db", "../mlflow-auth/basic_auth.db", "..%2Fmlflow-auth%2Fbasic_auth.db"):
        code, text, _ = _call("GET", f"{st.mlflow_uri}/api/2.0/mlflow-artifacts/artifacts/{path}", auth=auth)
        assert code != 200 and "SQLite format" not in text, (path, code)


def test_no_secret_of_the_stack_is_on_a_command_line_or_printed(round_on_stack):
    st = round_on_stack[0]
    secrets = {st.secret(name) for name in stack.SECRETS}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(s in args for s in secrets), f"a secret on the command line of {cmdline.parent.name}"
    for name in ("credentials.env", "client.env", "mlflow-auth/auth.ini"):
        assert (st.dir / name).stat().st_mode & 0o077 == 0, name
    # `rrhf stack env` prints no secret, yet a shell that evaluates it has them
    out = subprocess.run(
        [sys.executable, "-m", "rrhf_cli", "stack", "env", "--dir", str(st.dir)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and not any(s in out.stdout for s in secrets), out.stdout
    shell = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -m rrhf_cli stack env --dir {st.dir})"; env'],
        capture_output=True,
        text=True,
    )
    got = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert {k: got.get(k) for k in st.client_env()} == st.client_env()
