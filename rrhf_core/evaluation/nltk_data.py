"""NLTK's English ``punkt_tab`` sentence tokenizer, installed once at set-up, never downloaded at run time.

lm-eval's ``ifeval`` checkers count sentences (``length_constraints:number_sentences``) and capital words with NLTK's
``punkt_tab`` data; when the data is missing, lm-eval calls ``nltk.download`` as it is imported (network, at run time,
into the user's home). No Debian package ships it; the ``llama-index-core`` wheel on PyPI carries NLTK's ``punkt_tab``
unpacked (MIT licence; the data is NLTK's, Apache 2.0). :func:`install` fetches that wheel from the configured package
index (``pip download``, so mirrors and ``--find-links`` work offline), checks every file against the digests below,
and unpacks the English model into ``<sys.prefix>/nltk_data`` (one of NLTK's default search paths: a virtual
environment carries its own copy). :func:`require` is what the evaluation calls before it imports lm-eval's checkers:
a clear error naming the fix, rather than a download attempt.

``python -m rrhf_core.evaluation.nltk_data [--target DIR] [--wheel FILE]`` installs it (``make setup`` does).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rrhf_core.errors import ConfigError

WHEEL_SPEC = "llama-index-core==0.14.25"
WHEEL_PREFIX = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/"
# sha256 of every file taken from the wheel (relative to punkt_tab/)
FILES = {
    "README": "d3251cae66a9359bd68c039e3a46172a05ca9df0b27dcdfa23ae594d68d27ec4",
    "english/abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "english/collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "english/ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "english/sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}
INSTALL_HINT = (
    "install it once with `python -m rrhf_core.evaluation.nltk_data` (`make setup` does; it takes the data from the "
    f"{WHEEL_SPEC} wheel on the package index), or point NLTK_DATA at a folder that holds "
    "tokenizers/punkt_tab/english"
)


def default_target() -> Path:
    return Path(sys.prefix) / "nltk_data"


def installed(target: Path) -> bool:
    """True when ``target`` holds every file with its expected digest."""
    base = target / "tokenizers" / "punkt_tab"
    return all((base / rel).is_file() and _sha256((base / rel).read_bytes()) == h for rel, h in FILES.items())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract(wheel: Path, target: Path) -> None:
    """Unpack the checked files of ``wheel`` into ``target/tokenizers/punkt_tab`` (each written atomically)."""
    base = target / "tokenizers" / "punkt_tab"
    with zipfile.ZipFile(wheel) as zf:
        blobs = {}
        for rel, digest in FILES.items():
            try:
                data = zf.read(WHEEL_PREFIX + rel)
            except KeyError:
                raise ConfigError(
                    f"{wheel} has no {WHEEL_PREFIX + rel}: not the {WHEEL_SPEC} wheel"
                ) from None
            if _sha256(data) != digest:
                raise ConfigError(
                    f"{wheel}: {rel} has sha256 {_sha256(data)}, expected {digest}; not installed"
                )
            blobs[rel] = data
    for rel, data in blobs.items():
        dest = base / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)


def install(target: Path | None = None, wheel: Path | None = None) -> Path:
    """Install ``punkt_tab`` (English) into ``target`` (default: ``<sys.prefix>/nltk_data``); returns ``target``."""
    target = target or default_target()
    if installed(target):
        return target
    if wheel is not None:
        extract(wheel, target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL_SPEC]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("llama_index_core-*.whl"))
        if done.returncode != 0 or not wheels:
            raise ConfigError(
                f"could not download {WHEEL_SPEC} (for NLTK's punkt_tab): {done.stderr.strip()[-500:]}; with a "
                "local copy of the wheel pass --wheel FILE"
            )
        extract(wheels[0], target)
    return target


def require() -> None:
    """:class:`ConfigError` unless NLTK finds ``punkt_tab``'s English model (called before lm-eval's ifeval checkers
    are imported: they would otherwise try to download it)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise ConfigError(
            f"NLTK's punkt_tab sentence tokenizer is not installed (searched {', '.join(nltk.data.path)}): "
            + INSTALL_HINT
        ) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--target", type=Path, default=None, help="nltk_data folder (default: <sys.prefix>/nltk_data)"
    )
    ap.add_argument("--wheel", type=Path, default=None, help=f"a local {WHEEL_SPEC} wheel")
    args = ap.parse_args(argv)
    try:
        where = install(args.target, args.wheel)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"punkt_tab (English) is in {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
