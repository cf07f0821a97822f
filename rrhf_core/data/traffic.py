"""The served champion's traffic as prompt records: each traced chat a prompt, its feedback a human preference.

The served model (``tasks/chat_model.py``) records every request and answer as an MLflow trace; people leave feedback
on a trace (``mlflow.log_feedback``, or the MLflow UI's assessments). ``tasks/traces.py`` reads the traces new since
the round's watermark into :class:`ServedChat` objects; this module turns them into records of the ``messages``
ingest format, which a round takes like a dropped file's records (:mod:`rrhf_core.data.arrivals`):

- the chat up to its last user turn is the prompt (a chat without a user turn is no prompt: counted, left out);
- feedback ``thumbs`` (``True``/``"up"``/``1`` or ``False``/``"down"``/``0``) on the served answer makes that answer
  ``chosen`` or ``rejected``; ``preferred_answer`` (a text) is ``chosen`` and the served answer ``rejected``. The
  latest assessment of each name counts (a person who changed their mind);
- ingest keeps ``chosen`` and ``rejected`` as the prompt's answers with sources ``human:chosen`` and
  ``human:rejected``: sampling adds them to the policy's own candidates (``sample.include_human``) and the build stage
  ranks a person's choice above, and a rejection below, every answer the reward model scored (the paper's candidates
  from several sources, with the human judgement outranking the reward model).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

THUMBS = "thumbs"
PREFERRED = "preferred_answer"
# True also stands for 1 and False for 0 (equal in a set)
_UP = {True, "up", "yes", "good", "true", "1", "👍"}
_DOWN = {False, "down", "no", "bad", "false", "0", "👎"}


@dataclass
class ServedChat:
    """One traced request: its id and time (ms since the epoch), the chat it got, the answer it gave, and the
    feedback on it (``{"name", "value", "time_ms"}`` per assessment)."""

    trace_id: str
    time_ms: int
    messages: Any
    answer: str
    feedback: list[dict[str, Any]] = field(default_factory=list)
    model_sha256: str = ""


def _chat(messages: Any) -> list[dict[str, str]] | None:
    """The chat up to and including its last user turn; None when it has no user turn (or is not a chat)."""
    if not isinstance(messages, list):
        return None
    turns = [
        {"role": str(m["role"]), "content": str(m["content"])}
        for m in messages
        if isinstance(m, dict) and "role" in m and "content" in m
    ]
    last = max((i for i, m in enumerate(turns) if m["role"] == "user" and m["content"].strip()), default=None)
    return None if last is None else turns[: last + 1]


def _latest(feedback: list[dict[str, Any]], name: str) -> Any:
    named = [f for f in feedback if f.get("name") == name]
    return max(named, key=lambda f: f.get("time_ms") or 0)["value"] if named else None


def thumbs(value: Any) -> bool | None:
    """``True`` for a thumbs up, ``False`` for down, ``None`` for anything else."""
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, bool | int | str) and key in _UP:
        return True
    if isinstance(key, bool | int | str) and key in _DOWN:
        return False
    return None


def record(chat: ServedChat) -> dict[str, Any] | None:
    """The chat as a ``messages`` record (with ``chosen`` / ``rejected`` from its feedback), or None without a user
    turn."""
    messages = _chat(chat.messages)
    if messages is None:
        return None
    rec: dict[str, Any] = {
        "messages": messages,
        "meta": {"trace_id": chat.trace_id, "served_model_sha256": chat.model_sha256},
    }
    answer = chat.answer.strip()
    preferred, verdict = _latest(chat.feedback, PREFERRED), thumbs(_latest(chat.feedback, THUMBS))
    if isinstance(preferred, str) and preferred.strip() and preferred.strip() != answer:
        rec["chosen"] = preferred.strip()
        if answer:
            rec["rejected"] = answer
    elif verdict is not None and answer:
        rec["chosen" if verdict else "rejected"] = answer
    return rec


@dataclass
class Traffic:
    """The records of the traces new since the watermark, and what was left out."""

    records: list[dict[str, Any]] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)  # of every trace read (taken or left out)
    until_ms: int = 0  # the latest trace time read
    ids_at_until: list[str] = field(default_factory=list)  # the ids read at exactly until_ms
    left_out: Counter = field(default_factory=Counter)
    with_feedback: int = 0

    def summary(self) -> str:
        text = f"{len(self.trace_ids)} new trace(s): {len(self.records)} prompt(s), {self.with_feedback} with feedback"
        if self.left_out:
            text += "; left out: " + ", ".join(f"{n} {why}" for why, n in sorted(self.left_out.items()))
        return text


def from_traces(chats: list[ServedChat], seen_ids: set[str], since_ms: int) -> Traffic:
    """The traces after ``since_ms`` (and at it, when their id was not read yet) as records, oldest first."""
    out = Traffic(until_ms=since_ms)
    for chat in sorted(chats, key=lambda c: (c.time_ms, c.trace_id)):
        if chat.time_ms < since_ms or chat.trace_id in seen_ids:
            continue
        out.trace_ids.append(chat.trace_id)
        if chat.time_ms > out.until_ms:
            out.until_ms, out.ids_at_until = chat.time_ms, []
        out.ids_at_until.append(chat.trace_id)
        rec = record(chat)
        if rec is None:
            out.left_out["without a user message"] += 1
            continue
        out.with_feedback += int("chosen" in rec or "rejected" in rec)
        out.records.append(rec)
    return out
