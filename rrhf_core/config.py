"""Settings from files and the command line: YAML presets, ``key=value`` overrides, validation with readable errors.

The stages' own configuration models live beside each stage (``rrhf_core.<stage>.config``); the pipeline's, which
composes them, in :mod:`rrhf_core.pipeline`; pieces that several stages share (:class:`LoraConfig`) here.
"""

from __future__ import annotations

import difflib
import re
import textwrap
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from rrhf_core.errors import ConfigError


def _known_keys(cls: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """The setting names of the section that holds ``loc`` (a validation error's location), or ``None``."""
    model: Any = cls
    parts = list(loc[:-1])
    while parts and model is not None:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        annotation = field.annotation
        # a mapping of names to sections (reward_models): the next part is a name, not a setting
        if typing.get_origin(annotation) is dict:
            if not parts:
                return None
            parts.pop(0)
            annotation = typing.get_args(annotation)[-1]
        kinds = typing.get_args(annotation) or (annotation,)
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    return list(model.model_fields) if model is not None else None


def format_validation_error(err: ValidationError, where: str, cls: type[BaseModel] | None = None) -> str:
    """One line per invalid setting; an unknown key gets the closest known names and, once per section, the list of
    the section's settings (``cls``: the model validated)."""
    lines = [f"invalid {where}:"]
    sections: dict[str, list[str]] = {}
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        known = _known_keys(cls, e["loc"]) if e["type"] == "extra_forbidden" else None
        if known is None:
            lines.append(f"  {loc}: {e['msg']}")
            continue
        close = difflib.get_close_matches(str(e["loc"][-1]), known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        lines.append(f"  {loc}: unknown setting{hint}")
        sections[".".join(str(p) for p in e["loc"][:-1])] = known
    for section, known in sections.items():
        title = f"settings of {section!r}" if section else "settings"
        lines.extend(
            textwrap.wrap(f"{title}: {', '.join(known)}", 116, initial_indent="  ", subsequent_indent="    ")
        )
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (e.g. lora.r=8)")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        if raw.lstrip()[:1] in ("[", "{", '"', "'"):  # meant as a list, a mapping or a quoted text
            problem = str(e).splitlines()[0]
            raise ConfigError(
                f"override {assignment!r}: the value of {key.strip()!r} is not valid YAML ({problem}); "
                "a list is written [a, b], a text with special characters in quotes"
            ) from None
        value = raw  # plain text that YAML cannot read (e.g. "a: b: c") is taken as written
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {p!r} is not a section")
    node[parts[-1]] = value


def build_config(cls: type[BaseModel], base: dict[str, Any], overrides: list[str], where: str) -> Any:
    data = dict(base)
    for o in overrides:
        apply_override(data, o)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where, cls)) from None


# What a stage setting is to reuse (rrhf_core.reuse), marked on the field itself (``json_schema_extra``) and read
# with reuse_kind(): a field without a mark changes what the stage produces ("output"); the others are
# - "input": names an input, which counts by its content fingerprint, not by its name;
# - "location": where the output or a cache rests;
# - "bookkeeping": how the stage reports, rests or where it runs, not what it produces.
# The training checkpoints' fingerprint leaves out the last two and what a mark says may change across a resume.
ReuseKind = Literal["output", "input", "location", "bookkeeping"]
REUSE_KINDS: tuple[str, ...] = typing.get_args(ReuseKind)


def reuse(kind: ReuseKind, **more: Any) -> dict[str, Any]:
    """The ``json_schema_extra`` of a field that does not change the output: ``Field(..., json_schema_extra=
    reuse("bookkeeping"))``. ``more``: other marks (``resume_may_change=True``, ``same_on_every_machine=False``)."""
    if kind not in REUSE_KINDS:
        raise ValueError(f"unknown reuse kind {kind!r}; known: {REUSE_KINDS}")
    return {"reuse": kind, **more}


def field_marks(model: type[BaseModel], name: str) -> dict[str, Any]:
    extra = model.model_fields[name].json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def reuse_kind(model: type[BaseModel], name: str) -> str:
    """What field ``name`` of ``model`` is to reuse: "output" unless its field is marked otherwise."""
    return str(field_marks(model, name).get("reuse", "output"))


def fields_marked(model: type[BaseModel], mark: str, values: tuple[Any, ...]) -> set[str]:
    """The fields of ``model`` whose mark ``mark`` has one of ``values`` (an unmarked field: reuse "output")."""
    default = "output" if mark == "reuse" else None
    return {n for n in model.model_fields if field_marks(model, n).get(mark, default) in values}


def _a_folder(v: str) -> str:
    if not v.strip():
        raise ValueError("is empty: give a folder (an empty path would mean the current folder)")
    return v


Folder = Annotated[str, AfterValidator(_a_folder)]
"""A folder a stage or round writes: a non-blank path."""


def one_or_many(v: Any) -> Any:
    """A single path given on the command line is a list of one."""
    return [v] if isinstance(v, str) else v


def refuse_bf16_switch(data: Any) -> Any:
    """A ``bf16: auto|on|off`` setting (the spelling before every stage took ``dtype: auto|bf16|fp32``) is refused
    with the new spelling, instead of as an unknown key."""
    if isinstance(data, dict) and "bf16" in data:
        old = data["bf16"]
        new = {True: "bf16", "on": "bf16", False: "fp32", "off": "fp32"}.get(old, "auto")
        raise ValueError(
            f"bf16 is spelled dtype now, as in every stage (auto, bf16 or fp32): bf16: {old} is dtype: {new}"
        )
    return data


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*)(?P<password>:[^/@\s]*)?@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&](?:password|passwd|pwd|token|secret|api_key|apikey|access_key)=)[^&\s]*"
)


def redact_credentials(text: str) -> str:
    """``text`` (a URI, a log line, a JSON dump) with credentials replaced by ``***``: the password of
    ``scheme://user:password@host`` (the user name stays, so the URI still says whose it is), a lone
    ``scheme://token@host`` and secret query parameters."""
    text = _USERINFO.sub(
        lambda m: f"{m['scheme']}{m['user']}:***@" if m["password"] else f"{m['scheme']}***@", text
    )
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)


def redacted(data: Any) -> Any:
    """A JSON-like structure with :func:`redact_credentials` applied to every string in it."""
    if isinstance(data, str):
        return redact_credentials(data)
    if isinstance(data, dict):
        return {k: redacted(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redacted(v) for v in data]
    return data


class LoraConfig(BaseModel):
    """Low-rank adapters (peft). When enabled only the adapters train; the saved model is merged."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters."
    )
    merge_on_save: bool = Field(
        True, description="Save the merged full model (True) or only the adapter (False)."
    )
