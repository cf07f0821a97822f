"""The MLflow model registry: register every trained model as `challenger`, move `champion` only through the gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rrhf_core.digest import file_digest
from rrhf_core.evaluation.promotion import Decision

PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.19.0", "safetensors", "accelerate"]


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
        model_dir = str(next(p.parent for p in local.rglob("config.json")))
    return {"version": mv.version, "model_dir": model_dir}


def _version_with_digest(client: MlflowClient, name: str, digest: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return next((str(v.version) for v in versions if v.tags.get("rrhf.model_sha256") == digest), None)


def register(
    model_dir: str | Path,
    name: str,
    task: str = "text-generation",
    aliases: tuple[str, ...] = ("challenger",),
) -> str:
    """Log the HF folder with the transformers flavour in the active run, register it, give it ``aliases``
    (`challenger` for a policy; a reward model also gets its role in the round).

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
    info = mlflow.transformers.log_model(
        transformers_model=str(model_dir),
        name="model",
        task=task,
        registered_model_name=name,
        pip_requirements=PIP_REQUIREMENTS,
    )
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
        name, version, "rrhf.promotion", "promoted" if decision.promote else "rejected"
    )
    client.set_model_version_tag(name, version, "rrhf.decision", json.dumps(decision.to_dict()))
    client.update_model_version(name, version, description=decision.summary())
    if decision.promote:
        client.set_registered_model_alias(name, "champion", version)
    return decision.promote
