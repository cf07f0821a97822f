"""Prompt ingestion: files (JSONL, JSON, Parquet, CSV; ``.gz`` too) or HF datasets -> prompts.parquet.

Record formats (``format: auto`` picks by the keys present):

- ``prompt``: ``{"prompt": str, "system"?: str}`` (the field name is configurable);
- ``messages``: ``{"messages": [{role, content}, ...]}``; a final assistant message becomes a reference response;
- ``hh``: ``{"chosen": str, "rejected": str}``, Anthropic HH dialogues -> the shared prompt as messages plus both
  final responses as references (``dataset:chosen`` preferred over ``dataset:rejected``);
- ``rrhf``: the RRHF reference's ``{"query": str, "responses": [str], "scores": [float]}`` -> prompt plus every
  response as a reference carrying its score, so existing RRHF data is reused as is.

HH rule for ``Human:`` inside a turn (no blank line before it): turns are delimited only by ``"\\n\\nHuman:"`` and
``"\\n\\nAssistant:"``. A ``Human:`` label at the very start of an assistant turn is an artefact and is removed.
An inline ``Human:`` later in a *final* response starts a hallucinated user turn: the response is cut there (counted
as ``hh_cut_inline_human``); inside earlier turns it stays, as context. A dialogue with two assistant turns in a row
(an inline ``Human:`` that was followed by a new ``Assistant:`` turn), or whose chosen and rejected prompts differ, is
rejected with that reason. In the 1,600 HH records under ``shared/``, this is 5 records: 2 final responses cut, 2
kept as context, 1 rejected.

Output: prompts normalised to messages with a stable ``prompt_id`` (hash of the normalised messages), duplicates
merged (their references united), a deterministic train/eval split from the id, a rejects file naming each bad
record's input, line (1-based; row for tables) and reason, and a report with the counts. The run continues past bad
records; an input where nothing is valid fails with a clear message.

Bad records are rejected, never fatal: a line that is not JSON or is nested too deeply to parse, a CSV row with
more cells than its header (an unquoted comma), a field of the wrong type. A blank reference answer (a final
assistant turn holding only whitespace, say) is dropped and counted, and its prompt kept. A UTF-8 byte order mark
at the start of a file is not part of its first field.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from rrhf_core.data import bounded
from rrhf_core.data.bounded import InputLimits
from rrhf_core.data.config import IngestConfig
from rrhf_core.data.contracts import (
    PROMPTS_SCHEMA,
    atomic_write_parquet,
    atomic_write_text,
    prepare_output_dir,
    published,
)
from rrhf_core.data.formats import split_hh
from rrhf_core.digest import file_digest
from rrhf_core.errors import DataError, MissingPackageError

Format = Literal["auto", "prompt", "messages", "hh", "rrhf"]

EMBEDDED_PROMPTS = "embedded:demo-prompts"
# the project's own prompt sets, shipped in the package: name -> file beside this module
EMBEDDED_SETS = {
    EMBEDDED_PROMPTS: "demo_prompts.jsonl",
    "embedded:instructions": "instructions.jsonl",  # verifiable instructions (rrhf_core.instructions.suite)
    "embedded:writing": "writing.jsonl",  # letters, stories, essays, lists of 100-300 words (same module)
}


def resolve_input(source: str) -> str:
    """An ``embedded:`` prompt set's file in the package; other inputs as given."""
    if source in EMBEDDED_SETS:
        return str(Path(__file__).with_name(EMBEDDED_SETS[source]))
    if source.startswith("embedded:"):
        known = ", ".join(repr(s) for s in EMBEDDED_SETS)
        raise DataError(f"unknown embedded prompt set {source!r}; available: {known}")
    return source


class Reject(Exception):
    """A record that cannot be used; the message is the reason written to the rejects file."""


@dataclass
class PromptRecord:
    prompt_id: str
    messages: list[dict[str, str]]
    source: str
    references: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # the record's own split; None: decided by the id hash


@dataclass
class IngestReport:
    inputs: list[str]
    records: int = 0
    valid: int = 0
    duplicates_merged: int = 0
    prompts: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    hh_cut_inline_human: int = 0
    blank_references_dropped: int = 0

    def summary(self) -> str:
        rej = sum(self.rejected.values())
        text = (
            f"{self.records} records: {self.valid} valid, {rej} rejected, {self.duplicates_merged} duplicates merged "
            f"-> {self.prompts} prompts {self.splits}"
        )
        if rej:
            text += "; rejects by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        if self.blank_references_dropped:
            text += (
                f"; {self.blank_references_dropped} blank reference answer(s) dropped (their prompts kept)"
            )
        return text


def normalise_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages]


def make_prompt_id(messages: list[dict[str, str]]) -> str:
    """Stable id: a hash of the normalised (role, content) pairs."""
    canon = json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def split_for(prompt_id: str, eval_share: float) -> str:
    """Deterministic split from the id: ``eval`` for the lowest ``eval_share`` of the hash space. An id that is not
    a hash (a listwise set's own ``p000``, say) is hashed first."""
    try:
        point = int(prompt_id[:8], 16)
    except ValueError:
        point = int(hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()[:8], 16)
    return "eval" if point / 0x100000000 < eval_share else "train"


# --- reading inputs -------------------------------------------------------------------------------------------


DEFAULT_LIMITS = InputLimits(setting="ingest")


def _open_bytes(path: Path, limits: InputLimits) -> bytes:
    """The file's bytes (decompressed for ``.gz``, within ``limits``), without a leading UTF-8 byte order mark."""
    return bounded.read_bytes(path, limits).removeprefix(codecs.BOM_UTF8)


def _json(text: str) -> Any:
    """``json.loads``; JSON nested too deeply for the parser is a ValueError, like any other unreadable JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(
            f"JSON nested too deeply to read (deeper than about {sys.getrecursionlimit()} levels)"
        ) from None


def _not_utf8(path: Path, e: UnicodeDecodeError) -> DataError:
    return DataError(
        f"cannot read input {path}: it is not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r}); "
        "save it as UTF-8"
    )


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return suffixes[-1].lstrip(".") if suffixes else ""


def iter_records(source: str, limits: InputLimits = DEFAULT_LIMITS) -> Iterator[tuple[int, Any]]:
    """Yield ``(line or row number, record or Reject)`` from one input; unreadable inputs, and inputs that expand
    past ``limits``, raise DataError."""
    if source.startswith("hf:"):
        yield from _iter_hf(source[3:])
        return
    path = Path(source)
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    kind = _kind(path)
    try:
        if kind == "jsonl":
            data = _open_bytes(path, limits)
            for lineno, line in enumerate(data.split(b"\n"), 1):
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield lineno, Reject(f"invalid UTF-8 at byte {e.start}")
                    continue
                try:
                    yield lineno, _json(text)
                except json.JSONDecodeError as e:
                    yield lineno, Reject(f"broken JSON line ({e.msg} at column {e.colno})")
                except ValueError as e:  # nested too deeply
                    yield lineno, Reject(str(e))
        elif kind == "json":
            try:
                obj = _json(_open_bytes(path, limits).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise DataError(
                    f"input {path} is not valid JSON ({e}); JSON lines belong in a .jsonl file"
                ) from None
            rows = obj.get("data", obj.get("records")) if isinstance(obj, dict) else obj
            if not isinstance(rows, list):
                raise DataError(f"input {path}: expected a JSON list of records (or {{'data': [...]}})")
            yield from enumerate(rows, 1)
        elif kind == "parquet":
            yield from enumerate(bounded.read_parquet(path, limits).to_pylist(), 1)
        elif kind == "csv":
            yield from _csv_rows(_open_bytes(path, limits).decode("utf-8", errors="strict"))
        else:
            raise DataError(
                f"input {path}: unsupported file type {kind!r}; use .jsonl, .json, .parquet or .csv (optionally .gz)"
            )
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    except (OSError, pa.ArrowException, csv.Error, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read input {path}: {e}") from None


def _csv_rows(text: str) -> Iterator[tuple[int, Any]]:
    """``(row number, record or Reject)``; the header is row 1. A row with more cells than the header (most often
    a comma in an unquoted cell) is rejected: its cells cannot be matched to columns."""
    reader = csv.DictReader(io.StringIO(text))
    limit = csv.field_size_limit(
        max(csv.field_size_limit(), len(text) + 1)
    )  # a long cell is the row's problem
    try:
        yield from _csv_records(reader)
    finally:
        csv.field_size_limit(limit)


def _csv_records(reader: csv.DictReader) -> Iterator[tuple[int, Any]]:
    for rowno, row in enumerate(reader, 2):
        extra = row.pop(None, None)
        if extra is not None:
            width = len(reader.fieldnames or [])
            yield (
                rowno,
                Reject(
                    f"row has {width + len(extra)} cells but the header has {width} (quote cells that hold commas)"
                ),
            )
        else:
            yield rowno, row


def _iter_hf(spec: str) -> Iterator[tuple[int, Any]]:
    name, _, split = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise MissingPackageError(
            "reading HF datasets needs the 'datasets' package: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # network, missing dataset, bad split: all user-facing
        raise _hf_error(name, split, e) from None
    yield from enumerate(ds, 1)


def _hf_error(name: str, split: str, e: Exception) -> DataError:
    reason = " ".join(str(e).split()) or type(e).__name__
    return DataError(
        f"cannot load HF dataset {name!r} (split {split or 'train'!r}): {reason}; check the name and split, run "
        "once with the network on (HF_HUB_OFFLINE unset) so it is cached, or export it to a .jsonl file and give that"
    )


def check_input(source: str) -> None:
    """Fail now, naming the input, when an input cannot be read: a missing file or folder, an unsupported file
    type, an unknown embedded set, an HF dataset that cannot be found (offline and not cached, say). Run before any
    stage, so that a long run does not start on inputs it cannot read. Records are not checked here."""
    resolved = resolve_input(source)
    if resolved.startswith("hf:"):
        name, _, split = resolved[3:].partition(":")
        try:
            import datasets
        except ImportError:
            raise MissingPackageError(
                "reading HF datasets needs the 'datasets' package: pip install datasets"
            ) from None
        try:
            datasets.load_dataset_builder(name)
        except Exception as e:  # network, missing dataset: all user-facing
            raise _hf_error(name, split, e) from None
        return
    path = Path(resolved)
    if not path.is_file():
        raise DataError(f"input {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    if _kind(path) not in ("jsonl", "json", "parquet", "csv"):
        raise DataError(
            f"input {path}: unsupported file type {_kind(path)!r}; use .jsonl, .json, .parquet or .csv "
            "(optionally .gz)"
        )


def input_fingerprint(source: str) -> str:
    """A content digest of a file input (embedded sets included); an ``hf:`` dataset is named by its spec."""
    resolved = resolve_input(source)
    return resolved if resolved.startswith("hf:") else f"sha256:{file_digest(resolved)}"


# --- record formats -------------------------------------------------------------------------------------------


def detect_format(rec: dict[str, Any], prompt_field: str) -> str:
    if "messages" in rec:  # a chat, optionally with the answers a person chose and rejected
        return "messages"
    if "chosen" in rec and "rejected" in rec:
        return "hh"
    if "query" in rec and "responses" in rec:
        return "rrhf"
    if prompt_field in rec:
        return "prompt"
    raise Reject(
        f"unknown record format: keys {sorted(map(str, rec))[:8]}; expected {prompt_field!r}, 'messages', "
        "'chosen'+'rejected' or 'query'+'responses'"
    )


def _text(rec: dict[str, Any], key: str) -> str:
    if key not in rec or rec[key] is None:
        raise Reject(f"missing field {key!r}")
    value = rec[key]
    if not isinstance(value, str):
        raise Reject(f"field {key!r} is {type(value).__name__}, not a string")
    if blank(value):
        raise Reject(f"field {key!r} is empty")
    return value


def blank(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace and invisible format characters (zero-width spaces and
    joiners, the byte-order mark, bidirectional marks: Unicode category Cf)."""
    return not "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip()


def _messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):  # CSV cells and some exports hold messages as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Reject("field 'messages' is a string that is not JSON") from None
    if not isinstance(value, list) or not value:
        raise Reject("field 'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise Reject(f"message {i} is {type(m).__name__}, not a mapping")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise Reject(f"message {i} has role {role!r}; expected system, user or assistant")
        if not isinstance(content, str):
            raise Reject(f"message {i} content is {type(content).__name__}, not a string")
        out.append({"role": role, "content": content})
    return out


_INLINE_HUMAN = re.compile(r"(?<!\n\n)Human:")


def clean_hh_response(text: str) -> tuple[str, bool]:
    """Apply the inline ``Human:`` rule to a final HH response; ``(text, was_cut)``."""
    text = text.strip()
    if text.startswith("Human:"):
        text = text[len("Human:") :].strip()
    m = _INLINE_HUMAN.search(text)
    if m:
        return text[: m.start()].strip(), True
    return text, False


_Parsed = tuple[list[dict[str, str]], list[dict[str, Any]], dict[str, Any]]  # messages, references, meta


def _parse_prompt(rec: dict[str, Any], prompt_field: str, stats: Counter) -> _Parsed:
    messages = [{"role": "user", "content": _text(rec, prompt_field)}]
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        messages.insert(0, {"role": "system", "content": rec["system"]})
    return messages, _prompt_references(rec), {}


def _parse_messages(rec: dict[str, Any], prompt_field: str, stats: Counter) -> _Parsed:
    messages = _messages(rec.get("messages"))
    references: list[dict[str, Any]] = []
    if messages[-1]["role"] == "assistant":
        answer = messages[-1]["content"].strip()
        if answer:
            references.append({"text": answer, "source": "dataset:reference", "reward": None})
        else:  # a blank answer (an export's empty slot for the reply): the prompt stays, the answer goes
            stats["blank_references_dropped"] += 1
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise Reject("messages must end with a user turn (optionally followed by one assistant reference)")
    human = _human_answers(rec)
    meta = {"preference": ["human:chosen", "human:rejected"]} if len(human) == 2 else {}
    return messages, references + human, meta


def _human_answers(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat's ``chosen`` and/or ``rejected`` answers (a person's judgement, e.g. feedback on a served answer) as
    answers with sources ``human:chosen`` / ``human:rejected``."""
    out = []
    for key in ("chosen", "rejected"):
        value = rec.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Reject(f"field {key!r} of a messages record is {type(value).__name__}, not a string")
        if value.strip():
            out.append({"text": value.strip(), "source": f"human:{key}", "reward": None})
    return out


def _parse_hh(rec: dict[str, Any], prompt_field: str, stats: Counter) -> _Parsed:
    try:
        chosen_msgs, chosen = split_hh(_text(rec, "chosen"))
        rejected_msgs, rejected = split_hh(_text(rec, "rejected"))
    except ValueError as e:
        raise Reject(f"not an HH dialogue: {e}") from None
    if normalise_messages(chosen_msgs) != normalise_messages(rejected_msgs):
        raise Reject("chosen and rejected continue different dialogues (their prompts differ)")
    messages = [
        {**m, "content": m["content"].removeprefix("Human:").strip()} if m["role"] == "assistant" else m
        for m in chosen_msgs
    ]
    references: list[dict[str, Any]] = []
    for text, src in ((chosen, "dataset:chosen"), (rejected, "dataset:rejected")):
        cleaned, cut = clean_hh_response(text)
        stats["hh_cut_inline_human"] += int(cut)
        if cleaned:
            references.append({"text": cleaned, "source": src, "reward": None})
        else:
            stats["blank_references_dropped"] += 1
    return messages, references, {"preference": ["dataset:chosen", "dataset:rejected"]}


def _parse_rrhf(rec: dict[str, Any], prompt_field: str, stats: Counter) -> _Parsed:
    query = _text(rec, "query")
    try:
        messages, _ = split_hh(query + ("" if query.rstrip().endswith("Assistant:") else "\n\nAssistant:"))
    except ValueError:
        messages = [{"role": "user", "content": query.strip()}]
    responses, scores = rec.get("responses"), rec.get("scores")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise Reject("field 'responses' must be a list of strings")
    if scores is not None:
        if not isinstance(scores, list) or len(scores) != len(responses):
            raise Reject("field 'scores' must be a list with one number per response")
        if not all(
            isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) for s in scores
        ):
            raise Reject("field 'scores' holds a value that is not a finite number")
    references: list[dict[str, Any]] = []
    for i, r in enumerate(responses):
        cleaned, _ = clean_hh_response(r)
        if cleaned:
            reward = float(scores[i]) if scores is not None else None
            references.append({"text": cleaned, "source": f"dataset:rrhf[{i}]", "reward": reward})
        else:
            stats["blank_references_dropped"] += 1
    return messages, references, {}


_PARSERS = {"prompt": _parse_prompt, "messages": _parse_messages, "hh": _parse_hh, "rrhf": _parse_rrhf}


def parse_record(rec: Any, fmt: Format, prompt_field: str, stats: Counter) -> PromptRecord:
    """One input record as a prompt (its messages, references and meta); a :class:`Reject` says why it cannot be."""
    if not isinstance(rec, dict):
        raise Reject(f"record is {type(rec).__name__}, not an object")
    kind = detect_format(rec, prompt_field) if fmt == "auto" else fmt
    stats[f"format:{kind}"] += 1
    if kind not in _PARSERS:
        raise Reject(f"unknown format {kind!r}")
    messages, references, meta = _PARSERS[kind](rec, prompt_field, stats)
    messages = normalise_messages(messages)
    if any(blank(m["content"]) for m in messages if m["role"] == "user"):
        raise Reject("a user turn is empty")
    if isinstance(rec.get("meta"), dict):
        meta = {**rec["meta"], **meta}
        try:
            json.dumps(meta, default=str)
        except (RecursionError, ValueError):
            raise Reject("field 'meta' is nested too deeply to store") from None
    split = rec.get("split")
    if split is not None and split not in ("train", "eval"):
        raise Reject(f"field 'split' is {split!r}; use 'train' or 'eval' (or leave it out to split by id)")
    try:
        json.dumps([messages, references, meta], ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end].encode("unicode_escape").decode("ascii")
        raise Reject(
            f"text holds an unpaired surrogate ({bad}): not valid Unicode, cannot be stored"
        ) from None
    return PromptRecord(make_prompt_id(messages), messages, "", references, meta, split)


def _prompt_references(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """A plain prompt's reference answers: ``reference`` (a string) and/or ``references`` (a list of strings); a
    blank one is no reference (an empty cell of a table's reference column, say)."""
    given = rec.get("references", [])
    if not isinstance(given, list) or not all(isinstance(r, str) for r in given):
        raise Reject("field 'references' must be a list of strings")
    ref = rec.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise Reject(f"field 'reference' is {type(ref).__name__}, not a string")
    texts = [t.strip() for t in ([ref] if ref else []) + given if t and t.strip()]
    return [{"text": t, "source": "dataset:reference", "reward": None} for t in dict.fromkeys(texts)]


def _reason_key(reason: str) -> str:
    return re.sub(r"\d+", "N", reason.split(" (")[0])[:60]


def ingest(inputs: list[str], output_dir: str | os.PathLike[str], **settings: Any) -> IngestReport:
    """:func:`run_ingest` on ``inputs`` into ``output_dir``; ``settings``: any ingest setting
    (:class:`~rrhf_core.data.config.IngestSettings`: format, prompt_field, eval_share, max_prompt_chars)."""
    return run_ingest(IngestConfig(inputs=list(inputs), output_dir=str(output_dir), **settings))


def run_ingest(cfg: IngestConfig) -> IngestReport:
    """Read every input, normalise, dedupe, split; write prompts.parquet, rejects.jsonl and ingest_report.json."""
    inputs, fmt, prompt_field = cfg.inputs, cfg.format, cfg.prompt_field
    eval_share, max_prompt_chars = cfg.eval_share, cfg.max_prompt_chars
    if not inputs:
        raise DataError("no inputs given")
    out = prepare_output_dir(cfg.output_dir)
    report = IngestReport(inputs=list(inputs))
    stats: Counter = Counter()
    by_id: dict[str, PromptRecord] = {}
    rejects: list[dict[str, Any]] = []
    for source in inputs:
        limits = InputLimits(cfg.max_input_mb, cfg.max_expansion, setting="ingest")
        for lineno, rec in iter_records(resolve_input(source), limits):
            report.records += 1
            try:
                if isinstance(rec, Reject):
                    raise rec
                pr = parse_record(rec, fmt, prompt_field, stats)
                size = sum(len(m["content"]) for m in pr.messages)
                if size > max_prompt_chars:
                    raise Reject(f"prompt too long: {size} characters > max_prompt_chars {max_prompt_chars}")
            except Reject as r:
                rejects.append({"input": source, "line": lineno, "reason": str(r)})
                key = _reason_key(str(r))
                report.rejected[key] = report.rejected.get(key, 0) + 1
                continue
            report.valid += 1
            pr.source = f"{source}:{lineno}"
            if pr.prompt_id in by_id:
                report.duplicates_merged += 1
                kept = by_id[pr.prompt_id]
                have = {r["text"] for r in kept.references}
                kept.references.extend(r for r in pr.references if r["text"] not in have)
            else:
                by_id[pr.prompt_id] = pr
    report.formats = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("format:")}
    report.hh_cut_inline_human = stats["hh_cut_inline_human"]
    report.blank_references_dropped = stats["blank_references_dropped"]
    if not by_id:
        _write_lines(out / "rejects.jsonl", rejects)  # the reasons are the answer to this error
        first = rejects[0]["reason"] if rejects else "the inputs hold no records"
        raise DataError(
            f"no valid prompt in {', '.join(inputs)} ({report.records} records; first reject: {first}); "
            f"see {out / 'rejects.jsonl'}"
        )
    rows = []
    for pr in by_id.values():
        split = pr.split or split_for(pr.prompt_id, eval_share)
        report.splits[split] = report.splits.get(split, 0) + 1
        rows.append(
            {
                "prompt_id": pr.prompt_id,
                "messages": pr.messages,
                "split": split,
                "source": pr.source,
                "references": pr.references,
                "meta": json.dumps(pr.meta, default=str),
            }
        )
    report.prompts = len(rows)
    with published(out, last="ingest_report.json") as staging:
        _write_lines(staging / "rejects.jsonl", rejects)
        atomic_write_parquet(pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA), staging / "prompts.parquet")
        atomic_write_text(staging / "ingest_report.json", json.dumps(report.__dict__, indent=2))
    return report


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
