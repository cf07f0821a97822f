"""Attacks that must fail, outside the stack (tests/test_stack.py holds those on the stack's servers): no code from
model folders, locks that are not links, pid files that cannot make `rrhf stack down` signal a stranger, and no
credentials of a tracking URI in anything a command prints or logs."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, stop_group, wait_until_answers
from rrhf_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CODE = """
from pathlib import Path
Path({marker!r}).write_text("the model folder's code ran")
from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilLM
"""


def folder_with_custom_code(
    tiny_model_dir: Path, where: Path, file: str = "config.json"
) -> tuple[Path, Path]:
    """A copy of the tiny model whose ``file`` names classes in a module of the folder that leaves a marker when
    imported; returns (folder, marker)."""
    folder, marker = where / "custom-code-model", where / "ran"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "evil.py").write_text(CODE.format(marker=str(marker)))
    data = json.loads((folder / file).read_text())
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilLM"}
    if file == "tokenizer_config.json":
        data["auto_map"] = {"AutoTokenizer": ["evil.EvilLM", None]}
    (folder / file).write_text(json.dumps(data))
    return folder, marker


@pytest.mark.integration
def test_a_model_folder_with_custom_code_is_refused_even_with_yes_on_stdin(tiny_model_dir, tmp_path):
    folder, marker = folder_with_custom_code(tiny_model_dir, tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say a."}) + "\n")
    ingest = [
        sys.executable,
        "-m",
        "rrhf_cli",
        "ingest",
        "--inputs",
        str(prompts),
        "--output-dir",
        str(tmp_path),
    ]
    assert subprocess.run(ingest, capture_output=True).returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "rrhf_cli", "sample", "--prompts", str(tmp_path / "prompts.parquet"),
         "--model", str(folder), "--backend", "hf", "--k", "1", "--output-dir", str(tmp_path / "s")],
        input="y\n" * 20, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "needs custom code" in out.stderr and "auto_map" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("what", ["policy", "tokenizer", "reward model", "reward-model backbone"])
def test_every_loader_refuses_custom_code(what, file, tiny_model_dir, tmp_path):
    from rrhf_core.models import load_causal_lm, load_tokenizer
    from rrhf_core.reward_model.config import RMTrainConfig
    from rrhf_core.reward_model.trainer import _load_backbone
    from rrhf_core.scoring.reward import HFClassifierReward

    folder, marker = folder_with_custom_code(tiny_model_dir, tmp_path, file)
    load = {
        "policy": lambda: load_causal_lm(str(folder)),
        "tokenizer": lambda: load_tokenizer(str(folder)),
        "reward model": lambda: HFClassifierReward(str(folder)),
        "reward-model backbone": lambda: _load_backbone(
            RMTrainConfig(backbone=str(folder), pairs=["x"], output_dir=str(tmp_path / "rm"))
        ),
    }[what]
    with pytest.raises(ConfigError, match="needs custom code"):
        load()
    assert not marker.exists()


def test_the_served_policy_refuses_custom_code(tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from rrhf_core.serving import ARTIFACT
    from tasks.chat_model import ChatModel

    folder, marker = folder_with_custom_code(tiny_model_dir, tmp_path)
    with pytest.raises(ConfigError, match="needs custom code"):
        ChatModel().load_context(SimpleNamespace(artifacts={ARTIFACT: str(folder)}, model_config={}))
    assert not marker.exists()


def test_nothing_loads_a_pretrained_model_but_the_one_loader():
    """Every ``from_pretrained`` call of the product goes through rrhf_core.pretrained (trust_remote_code=False)."""
    calls = []
    for package in ("rrhf_core", "tasks", "flows", "rrhf_cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "pretrained.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls == []


# --- locks and pid files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "folder", "dangling-symlink"])
def test_a_lock_that_is_not_a_plain_file_is_refused_and_its_target_untouched(kind, tmp_path):
    from rrhf_core.workdir import LOCK_NAME, workdir_lock

    work, victim = tmp_path / "wd", tmp_path / "victim"
    work.mkdir()
    victim.write_text("precious\n")
    lock = work / LOCK_NAME
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling-symlink":
        lock.symlink_to(tmp_path / "created-by-the-lock")
    else:
        lock.mkdir()
    with (
        pytest.raises(ConfigError, match="plain file") as e,
        workdir_lock(work),
    ):
        pass
    assert str(lock) in str(e.value) and "Remove it" in str(e.value)
    assert victim.read_text() == "precious\n" and not (tmp_path / "created-by-the-lock").exists()


@pytest.mark.integration
def test_the_cli_refuses_a_symlinked_workdir_lock(tmp_path):
    work, victim = tmp_path / "wd", tmp_path / "victim"
    work.mkdir()
    victim.write_text("precious\n")
    (work / ".rrhf.lock").symlink_to(victim)
    out = subprocess.run(
        [sys.executable, "-m", "rrhf_cli", "pipeline", "--config", str(ROOT / "configs" / "demo.yaml"),
         "--workdir", str(work)],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("rrhf pipeline: error: ")]
    assert error and "the lock file" in error[0] and "symbolic link" in error[0], out.stderr
    assert victim.read_text() == "precious\n"


def test_stack_down_signals_only_the_process_the_stack_started(tmp_path):
    from rrhf_cli import stack

    st = stack.Stack(tmp_path, stack.Ports())
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # a pid file naming a process the stack did not start (another start time): left alone
        st.pidfile("worker").write_text(f"{stranger.pid} 1\n")
        assert stack._stop_pid(st, "worker") is False
        assert stranger.poll() is None
        # a bare pid (an older pid file, or one written by hand) is not enough either
        st.pidfile("worker").write_text(f"{stranger.pid}\n")
        assert stack._stop_pid(st, "worker") is False and stranger.poll() is None
        # the process the stack started, as `_spawn` records it: stopped
        st.pidfile("worker").write_text(f"{stranger.pid} {stack._start_time(stranger.pid)}\n")
        assert stack._stop_pid(st, "worker") is True
        assert stranger.wait(timeout=30) is not None
    finally:
        if stranger.poll() is None:
            stranger.kill()


# --- credentials in a tracking URI ---------------------------------------------------------------------------------

SECRET = "s3cr3t-pw-9f2"

LEAKY = """
import logging, sys
from rrhf_core import redaction
redaction.install()
import mlflow
uri = "http://alice:SECRET@127.0.0.1:PORT"
mlflow.set_tracking_uri(uri)
logging.basicConfig(level=logging.INFO)
log = logging.getLogger("mlflow.probe")
log.info("tracking to %s", uri)
try:
    raise RuntimeError(f"cannot reach {uri}/api/2.0/mlflow/runs/create")
except RuntimeError:
    log.exception("failed")
with mlflow.start_run(run_name="probe"):
    pass
print("done", uri)
print(f"http://127.0.0.1:PORT/x?a=1&token=SECRET", file=sys.stderr)
"""


@pytest.mark.integration
def test_mlflows_run_url_lines_logs_and_tracebacks_carry_no_password(tmp_path):
    """A real MLflow server; MLflow prints "View run ... at: <URI>" itself, straight to stdout."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
         "--artifacts-destination", str(tmp_path / "art")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/health", server, timeout_s=180)
        out = subprocess.run(
            [sys.executable, "-c", LEAKY.replace("SECRET", SECRET).replace("PORT", str(port))], capture_output=True, text=True, timeout=300,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    finally:
        stop_group(server)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "View run probe at: http://alice:***@127.0.0.1" in text, text
    assert (
        "tracking to http://alice:***@" in text and "Traceback" in text and "done http://alice:***@" in text
    )
    assert SECRET not in text, text


@pytest.mark.integration
def test_a_dead_tracking_server_is_one_clean_error_at_once_without_its_password(tmp_path):
    port = free_port()  # nothing listens there
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "rrhf_cli", "pipeline", "--config", str(ROOT / "configs" / "demo.yaml"),
         "--workdir", str(tmp_path / "w"), "--set", f"tracking_uri=http://alice:{SECRET}@127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))},
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "does not answer" in out.stderr and "http://alice:***@127.0.0.1" in out.stderr, text
    assert SECRET not in text, text
    assert time.time() - t0 < 240  # not MLflow's minutes of retries (a temporary Prefect server starts first)


# --- standalone stages: one at a time per folder, outputs published as one set ------------------------------------


def _prompts_file(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts) + '{"prompt": 7}\n')
    return path


def test_a_second_command_on_a_stage_folder_in_use_is_refused(tmp_path, capsys):
    from rrhf_cli import main

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom rrhf_core.workdir import workdir_lock\n"
         f"with workdir_lock({str(out)!r}, 'rrhf build'):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        src = _prompts_file(tmp_path / "p.jsonl", ["Say a."])
        code = main(["ingest", "--inputs", str(src), "--output-dir", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by pid {holder.pid}" in err and "rrhf build" in err, err
        assert not (out / "prompts.parquet").exists()
    finally:
        stop_group(holder)
    # once it is free, the command runs
    assert main(["ingest", "--inputs", str(src), "--output-dir", str(out)]) == 0


@pytest.mark.integration
def test_an_ingest_killed_while_writing_leaves_the_previous_set_whole(tmp_path):
    from conftest import held_rrhf, wait_for_marker
    from rrhf_core.data.contracts import read_prompts

    out = tmp_path / "out"
    old = _prompts_file(tmp_path / "old.jsonl", ["Old one.", "Old two."])
    rrhf = [sys.executable, "-m", "rrhf_cli", "ingest", "--output-dir", str(out)]
    assert subprocess.run([*rrhf, "--inputs", str(old)], capture_output=True).returncode == 0
    before = {
        name: (out / name).read_bytes() for name in ("prompts.parquet", "rejects.jsonl", "ingest_report.json")
    }
    new = _prompts_file(tmp_path / "new.jsonl", ["New one.", "New two.", "New three."])
    marker = tmp_path / "held"
    # held after the new prompts are written (the rejects already are): killed there
    proc = held_rrhf(
        "rrhf_core.data.ingest:atomic_write_parquet", 1, marker,
        ["ingest", "--inputs", str(new), "--output-dir", str(out)], start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_marker(marker, proc)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing of the new set published
    assert len(read_prompts(out / "prompts.parquet")) == 2
    assert list(out.glob(".staging-*"))  # what the killed run left, out of every reader's way
    # the next run publishes its set whole and clears the dead run's staging folder
    assert subprocess.run([*rrhf, "--inputs", str(new)], capture_output=True).returncode == 0
    assert len(read_prompts(out / "prompts.parquet")) == 3 and not list(out.glob(".staging-*"))
    assert json.loads((out / "ingest_report.json").read_text())["prompts"] == 3
