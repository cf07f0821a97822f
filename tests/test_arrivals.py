"""Rounds that consume what arrived: a drop folder read against the workdir's watermark (rrhf_core.data.arrivals).
A file is consumed once, a consumed file that changed is refused by name, a bad file is named and skipped, prompts
already trained on are not taken again, a replay share of earlier prompts joins, and a hand-edited watermark is
refused with how to reset it."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rrhf_core.data.arrivals import Watermark, collect, commit, write_round_input
from rrhf_core.data.ingest import ingest
from rrhf_core.errors import DataError


def drop(folder, name, prompts):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))


def test_a_second_round_sees_only_what_arrived_since_the_first(tmp_path):
    box, mark = tmp_path / "drop", tmp_path / "w" / "arrivals.json"
    drop(box, "week1.jsonl", ["How do I boil an egg?", "How do I make tea?"])
    first = collect(box, Watermark.load(mark))
    assert first.new_prompts == 2 and list(first.new_files) == ["week1.jsonl"]
    # nothing is marked consumed until the round commits: a restarted round takes the same files
    assert collect(box, Watermark.load(mark)).new_ids == first.new_ids
    commit(mark, Watermark.load(mark), first, "round-1")
    assert collect(box, Watermark.load(mark)).new_prompts == 0
    # a new file: only its prompts, and a prompt trained on before is not taken again
    drop(box, "week2.jsonl", ["How do I make tea?", "How do I fold a shirt?"])
    second = collect(box, Watermark.load(mark))
    assert second.new_prompts == 1 and second.already_seen == 1 and list(second.new_files) == ["week2.jsonl"]
    assert second.records == [{"prompt": "How do I fold a shirt?"}]
    done = commit(mark, Watermark.load(mark), second, "round-2")
    assert done.rounds == ["round-1", "round-2"] and done.files["week2.jsonl"]["round"] == "round-2"
    assert len(Watermark.load(mark).prompt_ids) == 3


def test_the_round_input_holds_the_new_records_and_a_replay_share_and_ingests(tmp_path):
    box = tmp_path / "drop"
    drop(box, "a.jsonl", [f"Question number {i}?" for i in range(10)])
    earlier = [{"prompt": f"Earlier question {i}?"} for i in range(20)]
    got = collect(box, Watermark(), replay_share=0.5, replay_from=earlier, seed=3)
    assert len(got.records) == 10 and len(got.replay) == 5 and all(r in earlier for r in got.replay)
    assert collect(box, Watermark(), replay_share=0.5, replay_from=earlier, seed=3).replay == got.replay
    path = write_round_input(got, tmp_path / "round" / "input.jsonl")
    report = ingest([str(path)], tmp_path / "ingest")
    assert report.prompts == 15


def test_a_consumed_file_that_changed_is_refused_by_name(tmp_path):
    box, mark = tmp_path / "drop", tmp_path / "arrivals.json"
    drop(box, "week1.jsonl", ["How do I boil an egg?"])
    commit(mark, Watermark(), collect(box, Watermark()), "round-1")
    drop(box, "week1.jsonl", ["How do I boil an egg?", "A record added later?"])
    with pytest.raises(DataError, match=r"week1.jsonl in .* changed after an earlier round consumed it"):
        collect(box, Watermark.load(mark))


def test_a_bad_file_is_named_and_counted_and_the_round_goes_on(tmp_path):
    box = tmp_path / "drop"
    drop(box, "good.jsonl", ["How do I boil an egg?"])
    (box / "broken.parquet").write_bytes(b"not a parquet file")
    (box / "empty.jsonl").write_text("{not json\n[1, 2]\n")
    (box / "notes.txt").write_text("ignored: not a prompt file")
    pq.write_table(pa.Table.from_pylist([{"prompt": "How do I make tea?"}]), box / "more.parquet")
    got = collect(box, Watermark())
    assert got.new_prompts == 2 and set(got.new_files) == {"good.jsonl", "more.parquet"}
    assert set(got.invalid) == {"broken.parquet", "empty.jsonl"}
    assert "2 file(s) not read: broken.parquet (" in got.summary()
    # a file not read is not consumed: fixed, it is taken next round
    commit(tmp_path / "m.json", Watermark(), got, "r1")
    drop(box, "empty.jsonl", ["How do I fold a shirt?"])
    assert collect(box, Watermark.load(tmp_path / "m.json")).new_ids != []


def test_a_hand_edited_watermark_is_refused_with_how_to_reset_it(tmp_path):
    box, mark = tmp_path / "drop", tmp_path / "arrivals.json"
    drop(box, "week1.jsonl", ["How do I boil an egg?"])
    commit(mark, Watermark(), collect(box, Watermark()), "round-1")
    d = json.loads(mark.read_text())
    d["prompt_ids"] = []
    mark.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"was changed by hand .* to start over delete .*arrivals.json"):
        Watermark.load(mark)
    mark.write_text("{")
    with pytest.raises(DataError, match="cannot be read"):
        Watermark.load(mark)


def test_a_missing_drop_folder_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder; create it"):
        collect(tmp_path / "nowhere", Watermark())


def test_prompts_of_a_round_whose_model_was_not_promoted_are_carried_to_the_next(tmp_path):
    """The champion never learned a rejected round's prompts: the next round trains on them again (once each),
    until a round is promoted; with carry_unpromoted off they are only replay candidates."""
    from rrhf_core.data.arrivals import ArrivalsSettings, prepare_round

    box, work, held = tmp_path / "drop", tmp_path / "w", tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "held out"}) + "\n")
    settings = ArrivalsSettings(folder=str(box), held_out=[str(held)], min_new_prompts=1)
    mark = work / "arrivals.json"

    def round_(name, prompts, promoted, s=settings):
        drop(box, f"{name}.jsonl", prompts)
        take = prepare_round(s, work, name)
        commit(mark, Watermark.load(mark), take.arrivals, name, promoted)
        return take.arrivals

    round_("r1", ["a?", "b?"], promoted=False)
    second = round_("r2", ["c?"], promoted=False)
    assert [r["prompt"] for r in second.carried] == ["a?", "b?"] and "2 carried over" in second.summary()
    third = round_("r3", ["d?"], promoted=True)
    assert sorted(r["prompt"] for r in third.carried) == [
        "a?",
        "b?",
        "c?",
    ]  # r2's file also held r1's: once each
    assert Watermark.load(mark).unlearned == []
    assert (
        round_("r4", ["e?"], promoted=False).carried == []
    )  # r3 was promoted: its champion learned them all
    off = settings.model_copy(update={"carry_unpromoted": False})
    assert round_("r5", ["f?"], promoted=False, s=off).carried == []
