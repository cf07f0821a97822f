"""The listwise contract: every kind of bad row is named (row, prompt_id, column) or skipped and counted."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rrhf_core.data.contracts import ListwiseExample, load_listwise, write_listwise
from rrhf_core.errors import DataError

GOOD = {
    "prompt_id": "p0",
    "messages": [{"role": "user", "content": "hi"}],
    "responses": ["a", "b"],
    "rewards": [1.0, 0.0],
    "sources": ["policy", "dataset:chosen"],
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bad(**changes):
    row = {**GOOD, "prompt_id": "bad", **changes}
    return {k: v for k, v in row.items() if v is not ...}


BAD_ROWS = [
    (bad(responses=["a", ""]), "responses", "response 1 is empty"),
    (bad(responses=["a", 3]), "responses", "response 1 is int"),
    (bad(responses=["a"], rewards=[1.0]), "responses", "at least 2"),
    (bad(rewards=[1.0]), "rewards", "1 values for 2 responses"),
    (bad(rewards=[1.0, math.nan]), "rewards", "must be finite"),
    (bad(rewards=[1.0, math.inf]), "rewards", "must be finite"),
    (bad(rewards=[1.0, "x"]), "rewards", "not a number"),
    (bad(messages=[]), "messages", "non-empty"),
    (bad(messages=[{"role": "assistant", "content": "x"}]), "messages", "last message must be a user turn"),
    (bad(sources=["a"]), "sources", "one per response"),
    (bad(prompt_id=""), "prompt_id", "non-empty"),
]


@pytest.mark.parametrize(("row", "column", "reason"), BAD_ROWS)
def test_bad_row_is_named(tmp_path, row, column, reason):
    if isinstance(row["rewards"], list) and any(
        isinstance(r, float) and not math.isfinite(r) for r in row["rewards"]
    ):
        # JSON has no NaN/inf in the standard; Parquet does: test those through Parquet.
        path = tmp_path / "set.parquet"
        pq.write_table(pa.Table.from_pylist([GOOD, row]), path)
    else:
        path = write_jsonl(tmp_path / "set.jsonl", [GOOD, row])
    with pytest.raises(DataError) as err:
        load_listwise(path)
    msg = str(err.value)
    assert "row 1" in msg and f"column {column!r}" in msg and reason in msg, msg
    examples, report = load_listwise(path, on_bad_row="skip")
    assert [e.prompt_id for e in examples] == ["p0"]
    assert report.rows == 2 and report.kept == 1 and len(report.skipped) == 1
    assert "1 skipped" in report.summary()


def test_missing_column_is_an_error_that_lists_what_is_needed(tmp_path):
    rows = [{k: v for k, v in GOOD.items() if k != "rewards"}]
    with pytest.raises(DataError, match=r"lacks column\(s\) \['rewards'\]"):
        load_listwise(write_jsonl(tmp_path / "x.jsonl", rows))


def test_duplicate_prompt_id_and_empty_set(tmp_path):
    with pytest.raises(DataError, match="duplicate prompt_id"):
        load_listwise(write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD]))
    with pytest.raises(DataError, match="no valid rows"):
        load_listwise(write_jsonl(tmp_path / "e.jsonl", [bad(rewards=[1.0])]), on_bad_row="skip")


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_listwise(tmp_path / "nope.parquet")
    (tmp_path / "broken.jsonl").write_text('{"prompt_id": "x"\n')
    with pytest.raises(DataError, match="line 1: not valid JSON"):
        load_listwise(tmp_path / "broken.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_listwise(tmp_path / "x.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read"):
        load_listwise(tmp_path / "junk.parquet")


def test_parquet_round_trip_and_missing_sources(tmp_path):
    e = ListwiseExample(
        "p9", [{"role": "user", "content": "q"}], ["x", "y", "z"], [0.5, 0.1, 0.2], ["s1", "s2", "s3"]
    )
    path = write_listwise([e], tmp_path / "train.parquet")
    (back,), report = load_listwise(path)
    assert back == e and not report.filled_sources
    (loaded,), report = load_listwise(
        write_jsonl(tmp_path / "n.jsonl", [{k: v for k, v in GOOD.items() if k != "sources"}])
    )
    assert loaded.sources == ["unknown", "unknown"] and report.filled_sources
    with pytest.raises(DataError, match="refusing to write"):
        write_listwise(
            [ListwiseExample("p", [{"role": "user", "content": "q"}], ["x"], [1.0], ["s"])],
            tmp_path / "b.parquet",
        )


def test_stage_tables_are_checked_on_read_naming_file_column_and_writer(tmp_path):
    from rrhf_core.data.contracts import read_prompts, read_samples, read_scores

    pq.write_table(pa.table({"prompt_id": ["p"], "text": ["t"]}), tmp_path / "samples.parquet")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['response_id'.*written by `rrhf sample`"):
        read_samples([tmp_path / "samples.parquet"])
    pq.write_table(
        pa.table({"response_id": ["r"], "prompt_id": ["p"], "reward": ["high"]}), tmp_path / "scores.parquet"
    )
    with pytest.raises(DataError, match=r"column 'reward' has type string, a scores file needs double"):
        read_scores([tmp_path / "scores.parquet"])
    with pytest.raises(DataError, match=r"prompts file .*missing.parquet does not exist; run `rrhf ingest`"):
        read_prompts(tmp_path / "missing.parquet")
