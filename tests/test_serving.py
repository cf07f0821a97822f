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
