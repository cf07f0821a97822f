"""Prompts that arrived since the last round: a drop folder read against a watermark kept in the workdir.

A scheduled round should learn from what is new, not re-read the same prompts. Users (or a collector) drop JSONL or
Parquet files of prompt records (any ingest format) into a folder, and the served champion's traced chats arrive in
an MLflow experiment (:mod:`rrhf_core.data.traffic`: each a prompt, feedback on it a human preference); each round
takes only:

- files it has not consumed before (a file is consumed once; a consumed file whose bytes changed is refused, named,
  since its records were already trained on and silently re-reading it would mix old and new);
- records whose prompt was never taken by an earlier round (deduped by the ingest prompt id), plus a configurable
  replay share of earlier prompts (so a round does not forget what it learnt);
- nothing at all when fewer than ``min_new_prompts`` new prompts arrived: the caller skips the round's compute.

A file that cannot be read is named and counted and the round goes on with the rest; it is not marked consumed, so
a fixed file is taken next round. The watermark (``arrivals.json`` in the workdir) lists the consumed files (name,
sha256, size) and the ids of every prompt taken, with a checksum of its own content: a watermark edited by hand is
refused with how to reset it. It is written only when a round commits (:func:`commit`): a round that fails or is
restarted reads the same watermark and takes the same files again.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rrhf_core.data.contracts import atomic_write_text
from rrhf_core.data.traffic import ServedChat, Traffic, from_traces
from rrhf_core.digest import file_digest
from rrhf_core.errors import DataError

WATERMARK = "arrivals.json"
SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".parquet.gz", ".json")


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Watermark:
    """What earlier rounds consumed: files (name -> {sha256, size, round}) and the prompt ids they took."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_ids: list[str] = field(default_factory=list)
    rounds: list[str] = field(default_factory=list)
    traces: dict[str, Any] = field(default_factory=dict)  # {"until_ms", "ids" read at until_ms}
    unlearned: list[str] = field(default_factory=list)  # rounds since the last promotion, not promoted

    def read_trace(self, trace_id: str, time_ms: int) -> bool:
        """Whether a committed round already read this trace (older than the last one read, or read at its time)."""
        return time_ms < self.traces.get("until_ms", -1) or trace_id in self.traces.get("ids", [])

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"files": self.files, "prompt_ids": self.prompt_ids, "rounds": self.rounds}
        # keys written only when set: a watermark written before they existed reads (and checks) as it was written
        if self.traces:
            body["traces"] = self.traces
        if self.unlearned:
            body["unlearned"] = self.unlearned
        return body

    @classmethod
    def load(cls, path: str | Path) -> Watermark:
        p = Path(path)
        if not p.exists():
            return cls()
        reset = (
            f"to start over delete {p} (every file in the drop folder is then new again), or restore it from the "
            "last round's MLflow run (artifact arrivals.json)"
        )
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            body = {k: d[k] for k in ("files", "prompt_ids", "rounds")}
            body.update({k: d[k] for k in ("traces", "unlearned") if k in d})
            stored = d["checksum"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"the watermark {p} cannot be read ({e}); {reset}") from None
        if stored != _checksum(body):
            raise DataError(
                f"the watermark {p} was changed by hand (its checksum does not match its content): which prompts "
                f"were trained on is no longer known; {reset}"
            )
        return cls(
            dict(body["files"]),
            list(body["prompt_ids"]),
            list(body["rounds"]),
            dict(body.get("traces", {})),
            list(body.get("unlearned", [])),
        )

    def save(self, path: str | Path) -> None:
        body = self.body()
        atomic_write_text(Path(path), json.dumps({**body, "checksum": _checksum(body)}, indent=1))


@dataclass
class Arrivals:
    """One round's take from the drop folder (nothing is written until :func:`commit`)."""

    folder: str
    new_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {sha256, size}
    records: list[dict[str, Any]] = field(default_factory=list)  # new prompts' records, in file order
    replay: list[dict[str, Any]] = field(default_factory=list)  # earlier prompts replayed
    carried: list[dict[str, Any]] = field(default_factory=list)  # unpromoted rounds' prompts, taken again
    new_ids: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)  # file name -> why it was not read
    rejected: Counter = field(default_factory=Counter)  # reason -> records
    already_seen: int = 0  # records whose prompt an earlier round took
    held_out_dropped: int = 0  # new records whose prompt is a held-out prompt (never trained on)
    traffic: Traffic | None = None  # the served champion's traces read this round

    @property
    def new_prompts(self) -> int:
        return len(self.new_ids)

    def take(self, pid: str, rec: dict[str, Any], seen: set[str]) -> None:
        """``rec`` joins the new prompts unless its prompt was taken before (``seen``: every id taken so far)."""
        if pid in seen:
            self.already_seen += 1
            return
        seen.add(pid)
        self.new_ids.append(pid)
        self.records.append(rec)

    def draw_replay(self, replay_from: list[dict[str, Any]], replay_share: float, seed: int) -> None:
        """``replay_share`` x the new prompts' count of ``replay_from``, drawn with ``seed``."""
        if replay_share > 0 and replay_from and self.records:
            n = min(len(replay_from), round(replay_share * len(self.records)))
            self.replay = random.Random(seed).sample(replay_from, n)

    def summary(self) -> str:
        where = [f"{len(self.new_files)} new file(s) in {self.folder}"] if self.folder else []
        if self.traffic is not None:
            where.append(self.traffic.summary())
        text = (
            f"{'; '.join(where)}: {self.new_prompts} new prompt(s), "
            f"{self.already_seen} already trained on, {len(self.replay)} replayed"
        )
        if self.carried:
            text += f", {len(self.carried)} carried over from rounds whose model was not promoted"
        if self.held_out_dropped:
            text += f"; {self.held_out_dropped} left out (they are held-out prompts)"
        if self.invalid:
            text += f"; {len(self.invalid)} file(s) not read: " + "; ".join(
                f"{n} ({why})" for n, why in sorted(self.invalid.items())
            )
        if self.rejected:
            text += "; records rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        return text


def _drop_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(
            f"the drop folder {folder} does not exist or is not a folder; create it and drop JSONL or Parquet "
            "files of prompt records into it"
        )
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))


def collect(
    folder: str | Path,
    watermark: Watermark,
    replay_share: float = 0.0,
    replay_from: list[dict[str, Any]] | None = None,
    seed: int = 0,
    fmt: str = "auto",
    prompt_field: str = "prompt",
) -> Arrivals:
    """The records new since ``watermark`` in ``folder``; ``replay_share`` x the new prompts' count of earlier
    records (drawn with ``seed`` from ``replay_from``) join them. Raises DataError for a consumed file that changed."""
    from rrhf_core.data.ingest import Reject, iter_records, parse_record

    root = Path(folder)
    out = Arrivals(str(root))
    files = _drop_files(root)
    changed = [
        p.name
        for p in files
        if p.name in watermark.files and file_digest(p) != watermark.files[p.name]["sha256"]
    ]
    if changed:
        raise DataError(
            f"{', '.join(changed)} in {root} changed after an earlier round consumed it: its records were already "
            "trained on. Put new records in a new file (and restore the old one), or reset the watermark"
        )
    seen = set(watermark.prompt_ids)
    stats: Counter = Counter()
    for p in files:
        if p.name in watermark.files:
            continue
        records: list[tuple[str, dict[str, Any]]] = []
        try:
            for _, rec in iter_records(str(p)):
                try:
                    if isinstance(rec, Reject):
                        raise rec
                    pr = parse_record(rec, fmt, prompt_field, stats)  # type: ignore[arg-type]
                except Reject as r:
                    out.rejected[str(r).split(":")[0][:60]] += 1
                    continue
                records.append((pr.prompt_id, rec))
        except DataError as e:
            out.invalid[p.name] = str(e)
            continue
        if not records:
            out.invalid[p.name] = "no valid prompt record in it"
            continue
        out.new_files[p.name] = {"sha256": file_digest(p), "size": p.stat().st_size}
        for pid, rec in records:
            out.take(pid, rec, seen)
    out.draw_replay(replay_from or [], replay_share, seed)
    return out


def _prompt_id(rec: dict[str, Any], fmt: str = "auto") -> str | None:
    """The ingest prompt id of a record, or None when ingest would reject it."""
    from rrhf_core.data.ingest import Reject, parse_record

    try:
        return parse_record(rec, fmt, "prompt", Counter()).prompt_id  # type: ignore[arg-type]
    except Reject:
        return None


def add_traffic(
    got: Arrivals,
    traffic: Traffic,
    watermark: Watermark,
    replay_from: list[dict[str, Any]],
    replay_share: float,
    seed: int,
) -> None:
    """The traces' records join ``got`` like a dropped file's (deduped against every prompt taken so far); the
    replay is drawn again over all the new prompts."""
    from rrhf_core.data.ingest import Reject, parse_record

    got.traffic = traffic
    seen = {*watermark.prompt_ids, *got.new_ids}
    for rec in traffic.records:
        try:
            pid = parse_record(rec, "messages", "prompt", Counter()).prompt_id
        except Reject as r:
            got.rejected[str(r).split(":")[0][:60]] += 1
            continue
        got.take(pid, rec, seen)
    got.draw_replay(replay_from, replay_share, seed)


def carried_over(records: list[dict[str, Any]], taken: set[str | None]) -> list[dict[str, Any]]:
    """The unpromoted rounds' records, each prompt once, less those this round takes anyway."""
    out, seen = [], set(taken)
    for rec in records:
        pid = _prompt_id(rec)
        if pid is not None and pid not in seen:
            seen.add(pid)
            out.append({**rec, "split": "train"})
    return out


def write_round_input(arrivals: Arrivals, path: str | Path) -> Path:
    """The round's new and replayed records as one JSONL file, the round's ingest input."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(
        json.dumps(r, ensure_ascii=False, default=str) + "\n"
        for r in [*arrivals.records, *arrivals.replay, *arrivals.carried]
    )
    atomic_write_text(p, text)
    return p


def commit(
    path: str | Path, watermark: Watermark, arrivals: Arrivals, round_id: str, promoted: bool | None = None
) -> Watermark:
    """Mark ``arrivals``' files consumed, its traces read and their prompts taken by ``round_id``; write the
    watermark. ``promoted``: whether the round's model became champion (False: its prompts are carried over to the
    next round, which trains the unchanged champion; None: not known, nothing changes)."""
    files = {**watermark.files, **{n: {**m, "round": round_id} for n, m in arrivals.new_files.items()}}
    traces = watermark.traces
    t = arrivals.traffic
    if t is not None and t.trace_ids:
        same = watermark.traces.get("ids", []) if t.until_ms == watermark.traces.get("until_ms") else []
        traces = {"until_ms": t.until_ms, "ids": sorted({*same, *t.ids_at_until})}
    unlearned = {True: [], False: [*watermark.unlearned, round_id], None: watermark.unlearned}[promoted]
    done = Watermark(
        files, [*watermark.prompt_ids, *arrivals.new_ids], [*watermark.rounds, round_id], traces, unlearned
    )
    done.save(path)
    return done


class ArrivalsSettings(BaseModel):
    """A round that trains on what arrived: the drop folder, its held-out prompts and when to skip."""

    model_config = ConfigDict(extra="forbid")

    folder: str | None = Field(
        None, description="The drop folder: JSONL/Parquet files of prompt records, each consumed once."
    )
    traces: str | None = Field(
        None,
        description="The MLflow experiment the served champion traces its chats into (`rrhf serve`'s "
        "rrhf-served): each new trace a prompt, feedback on it a human preference.",
    )
    traces_tracking_uri: str | None = Field(
        None, description="Where those traces are (default: the round's own tracking URI)."
    )
    held_out: list[str] = Field(
        ["embedded:instructions"],
        description="Inputs of the held-out prompts every round is judged on (records marked split train skipped).",
    )
    min_new_prompts: int = Field(
        8, ge=1, description="Fewer new prompts than this: the round samples and trains nothing, and says so."
    )
    replay_share: float = Field(
        0.0, ge=0.0, le=10.0, description="Earlier rounds' prompts replayed, as a share of the new ones."
    )
    carry_unpromoted: bool = Field(
        True,
        description="Train again on the prompts of the rounds since the last promotion whose model was not "
        "promoted (the champion never learned them).",
    )

    @model_validator(mode="after")
    def _a_source(self) -> ArrivalsSettings:
        if not self.folder and not self.traces:
            raise ValueError(
                "arrivals needs a source: folder (a drop folder of prompt files) and/or traces (the MLflow "
                "experiment of the served champion's chats, e.g. rrhf-served)"
            )
        return self


@dataclass
class RoundTake:
    """What a round takes: the arrivals, and its ingest input (None: too few new prompts, skip the round)."""

    arrivals: Arrivals
    input_file: Path | None
    skip_reason: str | None = None


def prepare_round(
    settings: ArrivalsSettings,
    workdir: str | Path,
    round_id: str,
    seed: int = 0,
    served: list[ServedChat] | None = None,
) -> RoundTake:
    """Collect the drop folder and the ``served`` chats (the traces the caller read) against
    ``<workdir>/arrivals.json``; write ``<workdir>/arrivals/<round_id>.jsonl``: the new records (split train), the
    replayed ones (from earlier rounds' files) and the held-out prompts (split eval)."""
    from rrhf_core.data.ingest import iter_records, resolve_input

    work = Path(workdir)
    rounds = work / "arrivals"
    mark = Watermark.load(work / WATERMARK)
    earlier: list[dict[str, Any]] = []  # the committed rounds' trained records, for replay
    unlearned: list[dict[str, Any]] = []  # those of the rounds whose model was not promoted, to carry over
    for f in sorted(rounds.glob("*.jsonl")) if rounds.is_dir() else []:
        if f.stem in mark.rounds:
            trained = [
                r for _, r in iter_records(str(f)) if isinstance(r, dict) and r.get("split") == "train"
            ]
            carry = settings.carry_unpromoted and f.stem in mark.unlearned
            (unlearned if carry else earlier).extend(trained)
    got = (
        collect(settings.folder, mark, settings.replay_share, earlier, seed)
        if settings.folder
        else Arrivals("")
    )
    if settings.traces:
        add_traffic(got, from_traces(served or [], set(mark.traces.get("ids", [])), mark.traces.get("until_ms", 0)),
                    mark, earlier, settings.replay_share, seed)  # fmt: skip
    held: list[dict[str, Any]] = []
    for source in settings.held_out:
        for _, rec in iter_records(resolve_input(source)):
            if isinstance(rec, dict) and rec.get("split") != "train":
                held.append({**rec, "split": "eval"})
    if not held:
        raise DataError(
            f"arrivals.held_out ({', '.join(settings.held_out)}) holds no held-out prompt to judge on"
        )
    # a prompt that is also held out is never trained on
    held_ids = {_prompt_id(r) for r in held}
    keep = [i for i, p in enumerate(got.new_ids) if p not in held_ids]
    got.held_out_dropped = len(got.new_ids) - len(keep)
    got.records = [{**got.records[i], "split": "train"} for i in keep]
    got.new_ids = [got.new_ids[i] for i in keep]
    if got.new_prompts < settings.min_new_prompts:
        where = " and ".join(
            ([f"in {settings.folder}"] if settings.folder else [])
            + ([f"in the traces of {settings.traces}"] if settings.traces else [])
        )
        reason = (
            f"{got.new_prompts} new prompt(s) arrived {where} since the last round, fewer than "
            f"min_new_prompts {settings.min_new_prompts}: nothing sampled or trained"
        )
        return RoundTake(got, None, reason)
    got.replay = [{**r, "split": "train"} for r in got.replay]
    got.carried = carried_over(unlearned, {*got.new_ids, *(_prompt_id(r) for r in got.replay)})
    path = write_round_input(got, rounds / f"{round_id}.jsonl")
    with path.open("a", encoding="utf-8") as out:
        out.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in held))
    return RoundTake(got, path)
