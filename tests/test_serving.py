"""The registered policy served: a pyfunc chat model (chats in, answers out, params) and `mlflow models serve` over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, wait_until_answers
from rrhf_core.serving import answer, chats, render

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


# ---- pure parts ------------------------------------------------------------------------------------------------


def test_chats_come_from_a_frame_a_list_or_one_row() -> None:
    import pandas as pd

    one = {"messages": QUESTION}
    assert chats(one) == [QUESTION]
    assert chats([one, one]) == [QUESTION, QUESTION]
    assert chats(pd.DataFrame([one])) == [QUESTION]


@pytest.mark.parametrize(
    "row, says",
    [
        ({"prompt": "hi"}, "expected 'messages'"),
        ({"messages": []}, "non-empty"),
        ({"messages": [{"x": 1}]}, "role"),
    ],
)
def test_a_row_without_a_chat_is_refused_by_row(row: dict, says: str) -> None:
    with pytest.raises(ValueError, match="row 1") as e:
        chats([{"messages": QUESTION}, row])
    assert says in str(e.value)


def test_render_is_the_training_prompt(tiny_tokenizer) -> None:
    from rrhf_core.encoding import Encoder

    for fmt in ("chat", "hh"):
        encoder = Encoder(tiny_tokenizer, prompt_format=fmt)
        assert render(tiny_tokenizer, QUESTION, fmt) == encoder.prompt_text(QUESTION)
    assert render(tiny_tokenizer, QUESTION, "hh").endswith("\n\nAssistant:")


def test_an_hh_answer_stops_at_the_next_human_turn() -> None:
    assert answer(" Paris.\n\nHuman: and Spain?\n\nAssistant: Madrid", "hh") == "Paris."
    assert answer(" Paris.\n\nHuman: x", "chat") == "Paris.\n\nHuman: x"


# ---- the registered model, loaded and served --------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The embedded policy registered as the product registers a trained policy (logged in its 'training' run),
    made champion; yields (tracking uri, name, training run id)."""
    import mlflow

    from tasks import registry

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("serving")
    with mlflow.start_run(run_name="train") as train_run:
        pass
    with mlflow.start_run(run_name="register"):
        version = registry.register(smollm2_dir, "rrhf-policy", source_run_id=train_run.info.run_id)
    mlflow.MlflowClient().set_registered_model_alias("rrhf-policy", "champion", version)
    yield uri, "rrhf-policy", train_run.info.run_id
    mlflow.set_tracking_uri(before[0])  # what the session had, for the tests after this module
    mlflow.set_registry_uri(before[1])


@pytest.mark.integration
def test_the_version_comes_from_the_training_run_and_takes_chats_and_params(registered) -> None:
    import mlflow

    uri, name, train_run_id = registered
    client = mlflow.MlflowClient(uri)
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.run_id == train_run_id
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["messages"]
    assert {p.name: p.default for p in sig.params} == {
        "max_new_tokens": 128,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    short, longer = (model.predict({"messages": QUESTION}, params={"max_new_tokens": n})[0] for n in (2, 24))
    assert "Paris" in longer and "capital of France?" not in longer  # an answer, not the prompt echoed
    assert len(short.split()) <= 3 < len(longer.split())  # max_new_tokens is honoured


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_models_serve_answers_a_chat_over_http(registered, tmp_path: Path) -> None:
    uri, name, _ = registered
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)],
        # as in an activated environment: the server starts `uvicorn` from PATH
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/ping", server, 600, tmp_path / "serve.log")
        body = {"dataframe_records": [{"messages": QUESTION}], "params": {"max_new_tokens": 24}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            predictions = json.load(r)["predictions"]
        assert len(predictions) == 1 and "Paris" in predictions[0], predictions
    finally:
        server.terminate()
        server.wait(timeout=30)


def _post(port: int, chats: list[list[dict]], max_new_tokens: int = 12) -> list[str]:
    body = {
        "dataframe_records": [{"messages": c} for c in chats],
        "params": {"max_new_tokens": max_new_tokens},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.load(r)["predictions"]


@pytest.mark.integration
@pytest.mark.slow
def test_served_chats_and_their_feedback_become_the_next_rounds_prompts(
    registered, prefect_harness, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`rrhf serve` traces every chat into the store; `rrhf feedback` marks two answers; a round with
    `arrivals.traces` trains on those chats (the rejected and the preferred answers among its candidates, ranked
    by the person's verdict), and the next round, with nothing new served, trains nothing."""
    import time

    import pyarrow.parquet as pq
    from test_pipeline import tiny_config

    from flows.pipeline import pipeline_flow
    from rrhf_core.data.arrivals import Watermark
    from tasks.traces import read_served

    uri, name, _ = registered
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    rrhf = [sys.executable, "-m", "rrhf_cli"]
    server = subprocess.Popen(
        [*rrhf, "serve", "--tracking-uri", uri, "--model", name, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    asks = ["Name a fruit.", "Name a colour.", "Name a city."]
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/ping", server, 600, tmp_path / "serve.log")
        answers = _post(port, [[{"role": "user", "content": a}] for a in asks])
        deadline = time.monotonic() + 120  # the server exports its traces in the background
        while len(served := read_served("rrhf-served", uri, 0)) < 3 and time.monotonic() < deadline:
            time.sleep(1.0)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sorted(s.messages[0]["content"] for s in served) == sorted(asks)
    assert sorted(s.answer for s in served) == sorted(answers) and all(
        len(s.model_sha256) == 64 for s in served
    )
    by_ask = {s.messages[0]["content"]: s for s in served}
    for trace, verdict in (
        (by_ask["Name a fruit."], ["--down"]),
        (by_ask["Name a city."], ["--preferred", "Paris."]),
    ):
        done = subprocess.run([*rrhf, "feedback", trace.trace_id, *verdict, "--tracking-uri", uri, "--user", "ana"],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [*rrhf, "feedback", "tr-nope", "--up", "--tracking-uri", uri], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no trace tr-nope" in bad.stderr

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"held-out question {i}"}) + "\n" for i in range(2)))
    cfg = tiny_config(tmp_path / "w", held, tiny_model_dir)
    arrivals = {
        "traces": "rrhf-served",
        "traces_tracking_uri": uri,
        "held_out": [str(held)],
        "min_new_prompts": 2,
    }
    cfg = type(cfg).model_validate({**cfg.model_dump(), "arrivals": arrivals})
    first = pipeline_flow(cfg)
    assert "3 new trace(s): 3 prompt(s), 2 with feedback" in first["arrivals"], first["arrivals"]
    rows = pq.read_table(tmp_path / "w" / "train.parquet").to_pylist()
    sources = {
        r["messages"][-1]["content"]: dict(zip(r["responses"], r["sources"], strict=True)) for r in rows
    }
    assert sources["Name a fruit."][by_ask["Name a fruit."].answer] == "human:rejected"
    assert sources["Name a city."]["Paris."] == "human:chosen"
    city = next(r for r in rows if r["messages"][-1]["content"] == "Name a city.")
    assert (
        max(zip(city["rewards"], city["responses"], strict=True))[1] == "Paris."
    )  # the person's choice ranks first
    assert Watermark.load(tmp_path / "w" / "arrivals.json").traces["until_ms"] == max(
        s.time_ms for s in served
    )
    late = subprocess.run([*rrhf, "feedback", by_ask["Name a colour."].trace_id, "--up", "--tracking-uri", uri,
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True)  # fmt: skip
    assert late.returncode == 0 and "already read this trace" in late.stdout, late.stdout + late.stderr
    second = pipeline_flow(cfg)
    assert second["skipped"].startswith("0 new prompt(s) arrived in the traces of rrhf-served")
