"""The tables the stages hand to each other: their Arrow schemas, checked readers and an atomic writer.

Four contracts, one per stage output, each read back through :func:`read_checked`, which fails naming the file, the
missing or mistyped column, and the stage that writes such a file:

- **prompts** (``rrhf ingest`` -> prompts.parquet): ``prompt_id``, ``messages``, ``split``, ``source``,
  ``references`` (``{text, source, reward}``), ``meta`` (JSON text);
- **samples** (``rrhf sample`` -> samples.parquet): one row per candidate, ``prompt_id``, ``response_id``, ``text``,
  ``source``, ``num_tokens``, ``finish_reason``, ``sampler``;
- **scores** (``rrhf score`` -> scores.parquet): ``response_id``, ``prompt_id``, ``reward``, ``reward_model``;
- **listwise** (``rrhf build`` -> train.parquet, or any user file): described below.

The listwise training set has one row per prompt: ``prompt_id`` (string), ``messages`` (list of ``{role, content}``, ending with a
user turn), ``responses`` (list of non-empty strings), ``rewards`` (list of finite numbers, one per
response) and ``sources`` (list of strings, one per response; optional on read, filled with
``"unknown"``). ``k`` may differ per row but must be at least 2.

Bad rows: with ``on_bad_row="error"`` (default) reading fails with one message naming every bad row
(index, ``prompt_id``) and column; with ``"skip"`` they are left out, counted and listed in the
:class:`LoadReport`. A missing required column or an unreadable file is always an error.

The stage tables are written by the stages themselves, so a bad row in one (a null where a text belongs, a negative
token count, a reward that is not a finite number) means the file was damaged or edited: reading it fails naming
the file, the row (1-based), the column and the value, and says which command writes the file again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from rrhf_core.data.bounded import InputLimits, read_parquet
from rrhf_core.errors import DataError
from rrhf_core.workdir import pid_alive

# the stages' own files (prompts, samples, scores, training sets) may be large; only a bomb is refused
FILE_LIMITS = InputLimits(max_input_mb=1 << 20, max_expansion=200)

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
REFERENCE_TYPE = pa.struct([("text", pa.string()), ("source", pa.string()), ("reward", pa.float64())])

PROMPTS_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES_TYPE),
        ("split", pa.string()),
        ("source", pa.string()),
        ("references", pa.list_(REFERENCE_TYPE)),
        ("meta", pa.string()),
    ]
)
SAMPLES_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("response_id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("num_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("sampler", pa.string()),
    ]
)
SCORES_SCHEMA = pa.schema(
    [
        ("response_id", pa.string()),
        ("prompt_id", pa.string()),
        ("reward", pa.float64()),
        ("reward_model", pa.string()),
    ]
)

REQUIRED_COLUMNS = ("prompt_id", "messages", "responses", "rewards")
OPTIONAL_COLUMNS = ("sources",)
ROLES = ("system", "user", "assistant")

LISTWISE_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES_TYPE),
        ("responses", pa.list_(pa.string())),
        ("rewards", pa.list_(pa.float64())),
        ("sources", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class Contract:
    """A table one stage writes and the next reads: what it is called, who writes it, its schema."""

    name: str
    writer: str
    schema: pa.Schema
    required: tuple[str, ...]


PROMPTS = Contract("prompts", "rrhf ingest", PROMPTS_SCHEMA, ("prompt_id", "messages"))
SAMPLES = Contract("samples", "rrhf sample", SAMPLES_SCHEMA, tuple(SAMPLES_SCHEMA.names))
SCORES = Contract("scores", "rrhf score", SCORES_SCHEMA, ("response_id", "prompt_id", "reward"))


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    if pa.types.is_integer(expected) or pa.types.is_floating(expected):
        return pa.types.is_integer(actual) or pa.types.is_floating(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return pa.types.is_list(actual) or pa.types.is_large_list(actual)
    return False


def read_checked(path: str | os.PathLike[str], contract: Contract) -> pa.Table:
    """Read a Parquet file and check it against ``contract``: required columns present and of the right type.

    Raises DataError naming the file, the problem and the stage that writes such a file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{contract.name} file {path} does not exist; run `{contract.writer}` first")
    try:
        table = read_parquet(path, FILE_LIMITS, f"{contract.name} file")
    except (OSError, pa.ArrowException) as e:
        reason = " ".join(str(e).split())
        fix = (
            "make it readable"
            if isinstance(e, PermissionError)
            else f"it is damaged or not Parquet: write it again with `{contract.writer}`"
        )
        raise DataError(f"cannot read {contract.name} file {path} ({reason}); {fix}") from None
    missing = [c for c in contract.required if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path} is not a {contract.name} file: it lacks column(s) {missing} "
            f"(found {table.column_names}); such files are written by `{contract.writer}`"
        )
    for name in contract.required:
        actual, expected = table.schema.field(name).type, contract.schema.field(name).type
        if not _compatible(actual, expected):
            raise DataError(
                f"{path}: column {name!r} has type {actual}, a {contract.name} file needs {expected} "
                f"(such files are written by `{contract.writer}`)"
            )
    return table


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _prompt_row_problem(row: dict[str, Any]) -> tuple[str, str] | None:
    if not _is_text(row.get("prompt_id")):
        return "prompt_id", f"is {row.get('prompt_id')!r}; every prompt needs a non-empty id"
    problem = _check_messages(row.get("messages"))
    if problem:
        return "messages", problem
    for i, ref in enumerate(row.get("references") or []):
        if not isinstance(ref, dict) or not isinstance(ref.get("text"), str):
            return "references", f"reference {i} has no text"
    return None


def _sample_row_problem(row: dict[str, Any]) -> tuple[str, str] | None:
    for name in ("prompt_id", "response_id"):
        if not _is_text(row.get(name)):
            return name, f"is {row.get(name)!r}; it must be a non-empty string"
    for name in ("text", "source"):
        if not isinstance(row.get(name), str):
            return name, f"is {row.get(name)!r}; it must be a string"
    n = row.get("num_tokens")
    if isinstance(n, bool) or not (isinstance(n, int) or (isinstance(n, float) and n.is_integer())):
        return "num_tokens", f"is {n!r}; it must be a whole number"
    if n < 0:
        return "num_tokens", f"is {n}, which is negative; a response has 0 tokens or more"
    return None


def _score_row_problem(row: dict[str, Any]) -> tuple[str, str] | None:
    if not _is_text(row.get("response_id")):
        return "response_id", f"is {row.get('response_id')!r}; it must be a non-empty string"
    reward = row.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward):
        return "reward", f"is {reward!r}; a reward must be a finite number"
    return None


def _checked_rows(
    path: str | os.PathLike[str],
    contract: Contract,
    problem_of: Callable[[dict[str, Any]], tuple[str, str] | None],
    key: str,
    columns: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of a contract's file, every one valid by ``problem_of`` (a DataError naming the bad ones else)."""
    table = read_checked(path, contract)
    rows = (table.select(columns) if columns else table).to_pylist()
    bad = []
    for i, row in enumerate(rows, 1):
        problem = problem_of(row)
        if problem:
            ident = f" ({key}={row.get(key)!r})" if _is_text(row.get(key)) else ""
            bad.append(f"row {i}{ident}, column {problem[0]!r}: {problem[1]}")
    if bad:
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"{path} has {len(bad)} invalid row(s) for a {contract.name} file:\n  "
            + "\n  ".join(bad[:5])
            + f"{more}\nFix or remove them, or write the file again with `{contract.writer}`."
        )
    return rows


def read_prompts(path: str | os.PathLike[str], split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a prompts file (optionally one split), checked against the prompts contract, row by row."""
    rows = _checked_rows(path, PROMPTS, _prompt_row_problem, "prompt_id")
    first: dict[str, int] = {}
    twice = []
    for i, r in enumerate(rows, 1):
        if r["prompt_id"] in first:
            twice.append(f"row {i} repeats prompt_id {r['prompt_id']!r} of row {first[r['prompt_id']]}")
        first.setdefault(r["prompt_id"], i)
    if twice:
        more = f"\n  ... and {len(twice) - 5} more" if len(twice) > 5 else ""
        raise DataError(
            f"{path} has {len(twice)} duplicated prompt_id(s) (each prompt must appear once: the stages join samples "
            "and scores to prompts by it):\n  "
            + "\n  ".join(twice[:5])
            + f"{more}\nGive each prompt its own id, "
            f"or write the file again with `{PROMPTS.writer}` (it makes the ids from the content)."
        )
    return [r for r in rows if split is None or r.get("split") == split]


def read_samples(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Rows of one or more samples files, checked against the samples contract, row by row."""
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(_checked_rows(p, SAMPLES, _sample_row_problem, "response_id"))
    return rows


def read_scores(paths: Sequence[str | os.PathLike[str]]) -> dict[str, float]:
    """``response_id -> reward`` from one or more scores files, checked against the scores contract, row by row
    (a reward that is not a finite number is an error naming its row). One response with two different rewards
    (two scores files that disagree, or a hand-edited one) is an error naming both."""
    rewards: dict[str, float] = {}
    where: dict[str, str] = {}
    for p in paths:
        for i, r in enumerate(
            _checked_rows(p, SCORES, _score_row_problem, "response_id", ["response_id", "reward"])
        ):
            rid, value = r["response_id"], float(r["reward"])
            if rid in rewards and rewards[rid] != value:
                raise DataError(
                    f"response {rid} has two rewards: {rewards[rid]} ({where[rid]}) and {value} ({p}, row {i + 1}); "
                    "score each response once, or give only the scores file of the reward you mean"
                )
            rewards[rid], where[rid] = value, f"{p}, row {i + 1}"
    return rewards


@dataclass(frozen=True)
class ListwiseExample:
    prompt_id: str
    messages: list[dict[str, str]]
    responses: list[str]
    rewards: list[float]
    sources: list[str]


@dataclass
class BadRow:
    row: int
    prompt_id: str | None
    column: str
    reason: str

    def __str__(self) -> str:
        pid = f" (prompt_id={self.prompt_id!r})" if self.prompt_id is not None else ""
        return f"row {self.row}{pid}, column {self.column!r}: {self.reason}"


@dataclass
class LoadReport:
    path: str
    rows: int = 0
    kept: int = 0
    skipped: list[BadRow] = field(default_factory=list)
    filled_sources: bool = False

    def summary(self) -> str:
        text = f"{self.path}: {self.kept} of {self.rows} rows kept"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (first: {self.skipped[0]})"
        if self.filled_sources:
            text += "; no 'sources' column, sources set to 'unknown'"
        return text


def _check_messages(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not value:
        return "must be a non-empty list of {role, content} messages"
    for i, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            return f"message {i} must be a mapping with string 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {i} has role {m['role']!r}; expected one of {ROLES}"
    if value[-1]["role"] != "user":
        return "the last message must be a user turn (the prompt the responses answer)"
    return None


def validate_row(row: dict[str, Any]) -> tuple[str, str] | None:
    """Return ``(column, reason)`` for the first problem in a row, or None when the row is valid."""
    if not isinstance(row.get("prompt_id"), str) or not row["prompt_id"]:
        return "prompt_id", "must be a non-empty string"
    problem = _check_messages(row.get("messages"))
    if problem:
        return "messages", problem
    responses = row.get("responses")
    if not isinstance(responses, list | tuple):
        return "responses", f"must be a list of strings, got {type(responses).__name__}"
    if len(responses) < 2:
        return "responses", f"has {len(responses)} response(s); ranking needs at least 2"
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            return "responses", f"response {i} is {type(r).__name__}, not a string"
        if not r.strip():
            return "responses", f"response {i} is empty"
    rewards = row.get("rewards")
    if not isinstance(rewards, list | tuple):
        return "rewards", f"must be a list of numbers, got {type(rewards).__name__}"
    if len(rewards) != len(responses):
        return "rewards", f"has {len(rewards)} values for {len(responses)} responses"
    for i, r in enumerate(rewards):
        if isinstance(r, bool) or not isinstance(r, int | float):
            return "rewards", f"reward {i} is {type(r).__name__}, not a number"
        if not math.isfinite(r):
            return "rewards", f"reward {i} is {r} (rewards must be finite)"
    sources = row.get("sources")
    if sources is not None:
        if not isinstance(sources, list | tuple) or len(sources) != len(responses):
            return "sources", "must be a list of strings, one per response"
        if not all(isinstance(s, str) for s in sources):
            return "sources", "every source must be a string"
    return None


def read_rows(path: Path, what: str = "training set") -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and column names of a Parquet or JSON-lines file (``what`` names it in errors)."""
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = read_parquet(path, FILE_LIMITS, what)
            return table.to_pylist(), table.column_names
        if suffix in (".jsonl", ".json"):
            rows: list[dict[str, Any]] = []
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
                    if not isinstance(obj, dict):
                        raise DataError(f"{path}, line {lineno}: expected a JSON object per line")
                    rows.append(obj)
            columns = sorted({k for r in rows for k in r})
            return rows, columns
    except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None
    raise DataError(f"{what} {path}: unsupported file type {suffix!r}; use .parquet or .jsonl")


def load_listwise(
    path: str | os.PathLike[str], on_bad_row: Literal["error", "skip"] = "error"
) -> tuple[list[ListwiseExample], LoadReport]:
    """Read and validate a listwise training set (Parquet or JSON lines)."""
    path = Path(path)
    rows, columns = read_rows(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"training set {path} lacks column(s) {missing}; a listwise set needs {list(REQUIRED_COLUMNS)} "
            f"(+ optional 'sources'); found {columns}"
        )
    report = LoadReport(path=str(path), rows=len(rows), filled_sources="sources" not in columns)
    examples: list[ListwiseExample] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        problem = validate_row(row)
        pid = row.get("prompt_id") if isinstance(row.get("prompt_id"), str) else None
        if problem is None and pid in seen:
            problem = ("prompt_id", "duplicate prompt_id (each prompt must appear once)")
        if problem is not None:
            report.skipped.append(BadRow(i, pid, *problem))
            continue
        seen.add(row["prompt_id"])
        k = len(row["responses"])
        examples.append(
            ListwiseExample(
                prompt_id=row["prompt_id"],
                messages=[{"role": m["role"], "content": m["content"]} for m in row["messages"]],
                responses=list(row["responses"]),
                rewards=[float(r) for r in row["rewards"]],
                sources=list(row["sources"]) if row.get("sources") is not None else ["unknown"] * k,
            )
        )
    report.kept = len(examples)
    if report.skipped and on_bad_row == "error":
        shown = "\n  ".join(str(b) for b in report.skipped[:20])
        more = f"\n  ... and {len(report.skipped) - 20} more" if len(report.skipped) > 20 else ""
        raise DataError(
            f"training set {path} has {len(report.skipped)} invalid row(s):\n  {shown}{more}\n"
            "Fix them, or pass on_bad_row=skip to leave them out (they are counted and reported)."
        )
    if not examples:
        raise DataError(f"training set {path} has no valid rows ({report.rows} read)")
    return examples, report


def write_listwise(examples: Iterable[ListwiseExample], path: str | os.PathLike[str]) -> Path:
    """Write a listwise set as Parquet, atomically (temporary file + rename)."""
    path = Path(path)
    rows = [
        {
            "prompt_id": e.prompt_id,
            "messages": e.messages,
            "responses": e.responses,
            "rewards": [float(r) for r in e.rewards],
            "sources": e.sources,
        }
        for e in examples
    ]
    for i, row in enumerate(rows):
        problem = validate_row(row)
        if problem:
            raise DataError(
                f"refusing to write invalid row {i} (prompt_id={row['prompt_id']!r}), {problem[0]}: {problem[1]}"
            )
    table = pa.Table.from_pylist(rows, schema=LISTWISE_SCHEMA)
    atomic_write_parquet(table, path)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def not_writable(path: Path, err: OSError, what: str = "output folder") -> DataError:
    """The error for a file or folder that cannot be written: it names the path and says what to do."""
    reason = err.strerror or str(err)
    return DataError(
        f"cannot write to {what} {path} ({reason}); make it writable and check its free space, or choose "
        "another folder"
    )


def prepare_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create a stage's output folder and make sure files can be written in it, before the stage does any work:
    a read-only folder fails at once, naming itself, rather than after the work."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise not_writable(folder, e, what) from None
    return folder


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """``write(tmp)`` into a new temporary file beside ``path``, then rename it over ``path``: a reader never sees
    half a file, a link planted at ``path`` is replaced (never written through), and the file gets the mode any
    other file written here gets (0666 less the umask), not mkstemp's private 0600. A file that cannot be written is
    a DataError naming its folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise not_writable(path.parent, e) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise not_writable(path.parent, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def published(out: Path, last: str) -> Iterator[Path]:
    """A stage's outputs published as one set: the body writes them into a new staging folder inside ``out``; once
    it returns, each moves into ``out`` by a rename, ``last`` (the stage's report) after the rest, so a reader never
    finds a new file beside an old one from another run for longer than those renames. An error (or a kill) leaves
    ``out`` as it was; a killed run's staging folder is removed by the next run in ``out``."""
    for old in out.glob(".staging-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=out))
    except OSError as e:
        raise not_writable(out, e) from None
    try:
        yield staging
        names = sorted((p.name for p in staging.iterdir()), key=lambda name: name == last)
        for name in names:
            try:
                os.replace(staging / name, out / name)
            except OSError as e:
                raise not_writable(out, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def failed_write(err: BaseException) -> OSError | None:
    """The OS error behind a failed write, where ``err`` is one: an :class:`OSError`, or the errors safetensors
    (``SafetensorError: ... I/O error: ...``) and ``torch.save`` (``RuntimeError: ... file write failed``) raise for a
    full or read-only disk, which carry only text."""
    if isinstance(err, OSError):
        return err
    text = str(err)
    if type(err).__name__ == "SafetensorError" and "I/O error" in text:
        return OSError(text.split("I/O error: ", 1)[-1])
    if isinstance(err, RuntimeError) and "file write failed" in text:
        return OSError("file write failed (the disk may be full)")
    return None


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A folder written as one unit (a saved model, say): the body writes into a temporary folder beside
    ``target``, which replaces ``target`` by a rename when the body returns. An error leaves ``target`` as it was;
    a disk that is full or read-only is a :class:`DataError` naming the folder."""
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except Exception as e:
        os_error = failed_write(e)
        if os_error is None:
            raise
        raise not_writable(target.parent, os_error) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def examples_from_records(records: Sequence[dict[str, Any]]) -> list[ListwiseExample]:
    """Build examples from already-valid dict records (raises DataError naming the first bad one)."""
    out = []
    for i, r in enumerate(records):
        problem = validate_row(r)
        if problem:
            raise DataError(f"record {i}, column {problem[0]!r}: {problem[1]}")
        k = len(r["responses"])
        out.append(
            ListwiseExample(
                r["prompt_id"],
                r["messages"],
                list(r["responses"]),
                [float(x) for x in r["rewards"]],
                list(r.get("sources") or ["unknown"] * k),
            )
        )
    return out
