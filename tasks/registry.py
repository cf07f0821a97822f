"""The MLflow model registry: register every trained model as `challenger`, move `champion` only through the gate."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

import rrhf_core
from rrhf_core.digest import file_digest
from rrhf_core.errors import ConfigError
from rrhf_core.evaluation.promotion import Decision
from rrhf_core.serving import ARTIFACT, DEFAULT_PARAMS

PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.19.0", "safetensors", "accelerate"]
CHAT_MODEL_CODE = Path(__file__).with_name("chat_model.py")


def chat_signature() -> ModelSignature:
    """Chats in (``messages``: a list of ``{"role", "content"}``), one answer out; generation settings as params."""
    turn = Object([Property("role", "string"), Property("content", "string")])
    return ModelSignature(
        inputs=Schema([ColSpec(Array(turn), "messages")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [ParamSpec(k, "long" if isinstance(v, int) else "double", v) for k, v in DEFAULT_PARAMS.items()]
        ),
    )


def _log_chat_model(model_dir: str | Path, name: str, prompt_format: str, digest: str) -> Any:
    """The policy as a pyfunc chat model (``tasks/chat_model.py`` as code, the HF folder as its artifact); the
    weights' digest goes in its config, so each traced answer names the weights that gave it."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(CHAT_MODEL_CODE),
        artifacts={ARTIFACT: str(model_dir)},
        code_paths=[str(Path(rrhf_core.__file__).parent)],
        model_config={"prompt_format": prompt_format, "registered_model": name, "model_sha256": digest},
        signature=chat_signature(),
        input_example=(
            {"messages": [{"role": "user", "content": "Say hello."}]},
            {"max_new_tokens": 16},
        ),
        registered_model_name=name,
        pip_requirements=PIP_REQUIREMENTS,
    )


def _trusted_folder(mv: Any, trusted_root: str | Path | None) -> str | None:
    """The version's local folder, only when it lies inside ``trusted_root`` (the round's workdir) and holds exactly
    the registered weights (its digest equals the version's ``rrhf.model_sha256``): a tag alone never picks the
    folder a run loads."""
    model_dir = mv.tags.get("rrhf.model_dir")
    if not model_dir or trusted_root is None:
        return None
    path, root = Path(model_dir).resolve(), Path(trusted_root).resolve()
    if not path.is_relative_to(root) or not (path / "config.json").exists():
        return None
    return str(path) if file_digest(path) == mv.tags.get("rrhf.model_sha256") else None


def champion(name: str, trusted_root: str | Path | None = None) -> dict[str, Any] | None:
    """The current champion: ``{"version", "model_dir"}``, or None when there is none.

    The weights come from the registry (``models:/NAME@champion``), except when the version's local folder is inside
    ``trusted_root`` and unchanged (then no download is needed).
    """
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    model_dir = _trusted_folder(mv, trusted_root)
    if model_dir is None:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion"))
        # a policy's HF folder is the pyfunc artifact `hf_model`; a transformers-flavour model's is its `model` folder
        found = sorted(local.rglob("config.json"), key=lambda p: ARTIFACT not in p.parts)
        if not found:
            raise ConfigError(
                f"the champion of registered model {name!r} (version {mv.version}) holds no model folder (no "
                f"config.json among its artifacts, downloaded to {local}): it was not registered by rrhf or its "
                f"files were removed. Point the alias at a version that holds a model (MlflowClient()."
                f"set_registered_model_alias({name!r}, 'champion', VERSION)), or remove it: "
                f"MlflowClient().delete_registered_model_alias({name!r}, 'champion')"
            )
        model_dir = str(found[0].parent)
    return {"version": mv.version, "model_dir": model_dir}


def _version_with_digest(client: MlflowClient, name: str, digest: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return next((str(v.version) for v in versions if v.tags.get("rrhf.model_sha256") == digest), None)


def _source_run(client: MlflowClient, run_id: str | None) -> str | None:
    """``run_id`` when it exists on this tracking server (a stage reused from another server's round does not)."""
    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        return None
    return run_id


def register(
    model_dir: str | Path,
    name: str,
    task: str = "text-generation",
    aliases: tuple[str, ...] = ("challenger",),
    source_run_id: str | None = None,
    prompt_format: str = "chat",
) -> str:
    """Log the model in the run that trained it (``source_run_id``, else the active run), register it and give it
    ``aliases`` (`challenger` for a policy; a reward model also gets its role in the round).

    A policy (``text-generation``) is logged as a pyfunc chat model (chats in, answers out, the chat template
    applied; ``tasks/chat_model.py``) that ``mlflow models serve`` serves; other tasks with the transformers flavour.
    A model whose content is already registered under ``name`` (a retried task, a reused training stage) is not
    registered again: its version becomes `challenger`.
    """
    client = MlflowClient()
    digest = file_digest(model_dir)
    existing = _version_with_digest(client, name, digest)
    if existing is not None:
        for alias in aliases:
            client.set_registered_model_alias(name, alias, existing)
        return existing
    source = _source_run(client, source_run_id)
    ended = client.get_run(source).info if source else None
    try:
        with mlflow.start_run(run_id=source, nested=True) if source else contextlib.nullcontext():
            if task == "text-generation":
                info = _log_chat_model(model_dir, name, prompt_format, digest)
            else:
                info = mlflow.transformers.log_model(
                    transformers_model=str(model_dir),
                    name="model",
                    task=task,
                    registered_model_name=name,
                    pip_requirements=PIP_REQUIREMENTS,
                )
    finally:
        if ended is not None and ended.end_time:
            # reopening the finished run to log the model ends it again (FAILED if logging failed): its status and
            # end time stay the training's, so a retried registration also finds it as the training left it
            client.set_terminated(ended.run_id, status=ended.status, end_time=ended.end_time)
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, "rrhf.model_dir", str(Path(model_dir).resolve()))
    client.set_model_version_tag(name, version, "rrhf.model_sha256", digest)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    return version


def record_decision(name: str, version: str, decision: Decision) -> bool:
    """Write the decision and its numbers on the model version; move `champion` when the gate passed."""
    client = MlflowClient()
    client.set_model_version_tag(
        name,
        version,
        "rrhf.promotion",
        {"promote": "promoted", "inconclusive": "inconclusive"}.get(decision.verdict, "rejected"),
    )
    client.set_model_version_tag(name, version, "rrhf.decision", json.dumps(decision.to_dict()))
    try:
        has_champion = client.get_model_version_by_alias(name, "champion") is not None
    except MlflowException:
        has_champion = False
    client.update_model_version(name, version, description=decision.summary(has_champion))
    if decision.promote:
        client.set_registered_model_alias(name, "champion", version)
    return decision.promote
