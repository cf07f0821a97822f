"""The served champion's traffic as the next round's prompts (rrhf_core.data.traffic, arrivals.traces): each traced
chat a prompt, feedback on it a human preference that outranks the reward model; the watermark's trace time."""

from __future__ import annotations

import json

import pytest

from rrhf_core.data.arrivals import ArrivalsSettings, Watermark, commit, prepare_round
from rrhf_core.data.build import human_ranked
from rrhf_core.data.contracts import read_prompts
from rrhf_core.data.ingest import ingest
from rrhf_core.data.traffic import ServedChat, from_traces, record, thumbs

ASK = [{"role": "user", "content": "Name a primary colour."}]


def chat(i: int, t: int, feedback=(), messages=None, answer="Green.") -> ServedChat:
    return ServedChat(f"tr-{i}", t, ASK if messages is None else messages, answer, list(feedback), "sha")


def fb(name, value, t=0):
    return {"name": name, "value": value, "time_ms": t}


def test_feedback_becomes_chosen_or_rejected_and_the_latest_verdict_counts() -> None:
    assert "chosen" not in record(chat(1, 1)) and "rejected" not in record(chat(1, 1))
    assert record(chat(1, 1, [fb("thumbs", True)]))["chosen"] == "Green."
    assert record(chat(1, 1, [fb("thumbs", "down")]))["rejected"] == "Green."
    # a better answer given: it is chosen, the served one rejected
    better = record(chat(1, 1, [fb("preferred_answer", " Red. ")]))
    assert (better["chosen"], better["rejected"]) == ("Red.", "Green.")
    # changed their mind: the later thumbs wins
    assert record(chat(1, 1, [fb("thumbs", True, 5), fb("thumbs", False, 9)]))["rejected"] == "Green."
    assert record(chat(1, 1))["meta"] == {"trace_id": "tr-1", "served_model_sha256": "sha"}
    assert [thumbs(v) for v in (True, 1, "Up", "👎", 0, "meh", None)] == [
        True,
        True,
        True,
        False,
        False,
        None,
        None,
    ]


def test_the_prompt_is_the_chat_up_to_its_last_user_turn_and_without_one_there_is_none() -> None:
    turns = [*ASK, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another?"},
             {"role": "assistant", "content": "Blue."}]  # fmt: skip
    assert record(chat(1, 1, messages=turns))["messages"] == turns[:3]
    assert record(chat(1, 1, messages=[{"role": "system", "content": "Be brief."}])) is None
    assert record(chat(1, 1, messages="not a chat")) is None


def test_traces_after_the_watermark_only_and_at_its_time_only_the_unread_ones() -> None:
    traces = [chat(1, 100), chat(2, 200), chat(3, 200), chat(4, 300, messages=[]), chat(5, 50)]
    first = from_traces(traces[:3], set(), 0)
    assert first.trace_ids == ["tr-1", "tr-2", "tr-3"] and (first.until_ms, first.ids_at_until) == (
        200,
        ["tr-2", "tr-3"],
    )
    later = from_traces(traces, {"tr-2", "tr-3"}, 200)
    assert later.trace_ids == ["tr-4"] and later.records == []  # tr-5 is older than the watermark
    assert later.left_out == {"without a user message": 1}
    assert (
        "1 new trace(s): 0 prompt(s), 0 with feedback; left out: 1 without a user message" in later.summary()
    )


def test_a_preference_chat_ingests_its_human_answers(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"messages": ASK, "chosen": "Red.", "rejected": "Green."},
        {"messages": [{"role": "user", "content": "Say no."}], "rejected": "No."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest([str(path)], tmp_path / "out", eval_share=0.0)
    got = {r["messages"][0]["content"]: r for r in read_prompts(tmp_path / "out" / "prompts.parquet")}
    assert [(x["text"], x["source"]) for x in got["Name a primary colour."]["references"]] == [
        ("Red.", "human:chosen"),
        ("Green.", "human:rejected"),
    ]
    assert json.loads(got["Name a primary colour."]["meta"])["preference"] == [
        "human:chosen",
        "human:rejected",
    ]
    assert [x["source"] for x in got["Say no."]["references"]] == ["human:rejected"]


def test_a_persons_choice_outranks_every_scored_answer_and_a_rejection_falls_below() -> None:
    cands = [
        {"text": "a", "source": "policy:m", "reward": 0.2},
        {"text": "b", "source": "human:chosen", "reward": 0.1},
        {"text": "c", "source": "policy:m", "reward": 0.9},
        {"text": "d", "source": "human:rejected", "reward": 0.8},
    ]
    # lo 0.1, hi 0.9: gap = 0.8 + 1 = 1.8; chosen 0.1 + 1.8 = 1.9 > 0.9, rejected 0.8 - 1.8 = -1.0 < 0.1
    got = [c["reward"] for c in human_ranked(cands)]
    assert got == pytest.approx([0.2, 1.9, 0.9, -1.0])
    plain = [{"text": "a", "source": "policy:m", "reward": 0.5}]
    assert human_ranked(plain) is plain


def test_a_round_takes_the_served_chats_and_the_watermark_remembers_them(tmp_path) -> None:
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "Held out?"}) + "\n")
    settings = ArrivalsSettings(traces="rrhf-served", held_out=[str(held)], min_new_prompts=2)
    work = tmp_path / "w"
    served = [chat(1, 100, [fb("thumbs", False)]), chat(2, 100, messages=[{"role": "user", "content": "Hi?"}]),
              chat(3, 90, messages=[{"role": "user", "content": "Held out?"}])]  # fmt: skip
    take = prepare_round(settings, work, "r1", served=served)
    assert (
        take.input_file is not None and take.arrivals.new_prompts == 2 and take.arrivals.held_out_dropped == 1
    )
    rows = [json.loads(line) for line in take.input_file.read_text().splitlines()]
    assert [r.get("rejected") for r in rows if r["split"] == "train"] == ["Green.", None]
    mark = commit(work / "arrivals.json", Watermark.load(work / "arrivals.json"), take.arrivals, "r1")
    assert mark.traces == {"until_ms": 100, "ids": ["tr-1", "tr-2"]}
    again = prepare_round(settings, work, "r2", served=served)
    assert again.input_file is None and "in the traces of rrhf-served" in again.skip_reason
    # the watermark with traces is checked like any other: an edit is refused
    body = json.loads((work / "arrivals.json").read_text())
    body["traces"]["until_ms"] = 0
    (work / "arrivals.json").write_text(json.dumps(body))
    with pytest.raises(Exception, match="changed by hand"):
        Watermark.load(work / "arrivals.json")


def test_arrivals_need_a_folder_or_traces() -> None:
    with pytest.raises(ValueError, match="needs a source: folder"):
        ArrivalsSettings()
