"""Stage outputs keyed by their inputs and settings, so an unchanged stage is reused instead of recomputed.

A stage's folder is ``<root>/<stage>-<digest>``, where the digest covers the stage's settings (paths excluded) and
the content digests of its input files. A folder counts as done only once ``_DONE`` is written, after the stage
returned, so a crash never leaves an output that looks complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def stage_dir(
    root: str | Path, stage: str, settings: dict[str, Any], inputs: Iterable[str | Path] = ()
) -> Path:
    payload = {"settings": settings, "inputs": [file_digest(i) for i in inputs]}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(root) / f"{stage}-{digest}"


def is_done(folder: Path) -> bool:
    return (folder / "_DONE").exists()


def mark_done(folder: Path, info: dict[str, Any] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_DONE").write_text(json.dumps(info or {}, default=str))
