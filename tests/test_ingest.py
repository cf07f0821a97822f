"""Ingestion: every format, the HH rules, rejects with line and reason, and property-based robustness."""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HH_FILE
from rrhf_core.data.contracts import read_prompts
from rrhf_core.data.ingest import ingest, make_prompt_id
from rrhf_core.errors import DataError


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_plain_prompts_messages_hh_and_rrhf_formats(tmp_path):
    src = jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "What is 2+2?", "system": "Be brief."},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
            {"chosen": "\n\nHuman: Q1\n\nAssistant: good", "rejected": "\n\nHuman: Q1\n\nAssistant: bad"},
            {"query": "\n\nHuman: Q2\n\nAssistant:", "responses": [" r1", " r2"], "scores": [0.5, -1.0]},
        ],
    )
    report = ingest([src], tmp_path / "out", eval_share=0.0)
    assert report.valid == 4 and report.prompts == 4 and not report.rejected
    assert report.formats == {"prompt": 1, "messages": 1, "hh": 1, "rrhf": 1}
    rows = {r["messages"][-1]["content"]: r for r in read_prompts(tmp_path / "out" / "prompts.parquet")}
    assert rows["What is 2+2?"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert rows["Hi"]["references"] == [{"text": "Hello!", "source": "dataset:reference", "reward": None}]
    assert [(r["text"], r["source"]) for r in rows["Q1"]["references"]] == [
        ("good", "dataset:chosen"),
        ("bad", "dataset:rejected"),
    ]
    assert json.loads(rows["Q1"]["meta"])["preference"] == ["dataset:chosen", "dataset:rejected"]
    assert [(r["text"], r["reward"]) for r in rows["Q2"]["references"]] == [("r1", 0.5), ("r2", -1.0)]
    assert all(r["prompt_id"] == make_prompt_id(r["messages"]) for r in rows.values())


def test_json_parquet_csv_and_gzip_inputs(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"prompt": "one"}, {"prompt": "two"}]))
    pq.write_table(pa.Table.from_pylist([{"prompt": "three"}]), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("prompt,other\nfour,x\n,y\n")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": "five"}) + "\n")
    inputs = [str(tmp_path / n) for n in ("a.json", "b.parquet", "c.csv", "d.jsonl.gz")]
    report = ingest(inputs, tmp_path / "out")
    assert report.valid == 5 and report.rejected == {"field 'prompt' is empty": 1}
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"input": inputs[2], "line": 3, "reason": "field 'prompt' is empty"}]


def test_bad_records_are_rejected_with_line_and_reason_and_the_run_continues(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(
        b"\n".join(
            [
                json.dumps({"prompt": "fine"}).encode(),
                b'{"prompt": "broken',
                b'{"prompt": "bad utf8 \xff\xfe"}',
                json.dumps({"prompt": 42}).encode(),
                json.dumps({"prompt": ""}).encode(),
                json.dumps({"nothing": "here"}).encode(),
                json.dumps(["not", "an", "object"]).encode(),
                json.dumps({"prompt": "x" * 50}).encode(),
                json.dumps({"prompt": "fine"}).encode(),  # duplicate of line 1
            ]
        )
    )
    report = ingest([str(src)], tmp_path / "out", max_prompt_chars=40)
    assert report.valid == 2 and report.prompts == 1 and report.duplicates_merged == 1
    rejects = {
        r["line"]: r["reason"]
        for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    }
    assert rejects[2].startswith("broken JSON line")
    assert rejects[3].startswith("invalid UTF-8")
    assert rejects[4] == "field 'prompt' is int, not a string"
    assert rejects[5] == "field 'prompt' is empty"
    assert rejects[6].startswith("unknown record format")
    assert rejects[7] == "record is list, not an object"
    assert rejects[8].startswith("prompt too long: 50 characters")
    assert "7 rejected" in report.summary()


def test_nothing_valid_fails_with_a_clear_message(tmp_path):
    src = jsonl(tmp_path / "x.jsonl", ["{broken", {"prompt": ""}])
    with pytest.raises(DataError, match=r"no valid prompt .* first reject: broken JSON line"):
        ingest([src], tmp_path / "out")
    assert (tmp_path / "out" / "rejects.jsonl").exists()  # the reasons are still written
    with pytest.raises(DataError, match="does not exist"):
        ingest([str(tmp_path / "missing.jsonl")], tmp_path / "out")


def test_split_is_deterministic_by_id(tmp_path):
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(200)])
    ingest([src], tmp_path / "a", eval_share=0.2)
    ingest([src], tmp_path / "b", eval_share=0.2)
    a = {r["prompt_id"]: r["split"] for r in read_prompts(tmp_path / "a" / "prompts.parquet")}
    b = {r["prompt_id"]: r["split"] for r in read_prompts(tmp_path / "b" / "prompts.parquet")}
    assert a == b and 20 < sum(s == "eval" for s in a.values()) < 60


@pytest.mark.skipif(not HH_FILE.exists(), reason=f"HH data not found at {HH_FILE}")
def test_hh_data_from_shared(tmp_path):
    report = ingest([str(HH_FILE)], tmp_path / "out")
    assert report.records == 1600 and report.valid == 1599
    assert report.hh_cut_inline_human == 2 and report.duplicates_merged == 2 and report.prompts == 1597
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [1255]
    assert "two assistant turns in a row" in rejects[0]["reason"]
    rows = read_prompts(tmp_path / "out" / "prompts.parquet")
    assert all(
        {r["source"] for r in row["references"]} <= {"dataset:chosen", "dataset:rejected"} for row in rows
    )
    # the stated rule: no final response keeps an inline "Human:"; no assistant turn starts with one
    assert not any("Human:" in ref["text"] for row in rows for ref in row["references"])
    assert not any(
        m["content"].startswith("Human:") for row in rows for m in row["messages"] if m["role"] == "assistant"
    )
    by_line = {int(row["source"].rsplit(":", 1)[1]): row for row in rows}
    cut = {ref["text"] for ref in by_line[1173]["references"] if ref["source"] == "dataset:chosen"}
    assert cut == {
        "Well that doesn't seem like a good idea."
    }  # record 1172 (0-based), cut at its inline Human:


# --- property-based: arbitrary malformed input never raises unhandled and never loses a valid record ----------

text = st.text(alphabet=string.ascii_letters + string.digits + " ?!.\n\"'{}[]:,é", max_size=30)
valid_record = st.one_of(
    st.builds(lambda p: {"prompt": p}, text.filter(lambda s: s.strip())),
    st.builds(lambda u: {"messages": [{"role": "user", "content": u}]}, text.filter(lambda s: s.strip())),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
    max_leaves=6,
)
garbage_line = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["prompt", "messages", "chosen", "rejected", "query", "responses", "scores"]),
        json_value,
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    valid=st.lists(valid_record, min_size=1, max_size=5),
    garbage=st.lists(garbage_line, max_size=8),
    seed=st.randoms(use_true_random=False),
)
def test_malformed_input_never_crashes_and_keeps_every_valid_record(tmp_path_factory, valid, garbage, seed):
    lines = [json.dumps(v).encode() for v in valid] + garbage
    seed.shuffle(lines)
    d = tmp_path_factory.mktemp("prop")
    (d / "in.jsonl").write_bytes(b"\n".join(lines))
    report = ingest(
        [str(d / "in.jsonl")], d / "out"
    )  # only DataError may escape, and only when nothing is valid
    ids = {r["prompt_id"] for r in read_prompts(d / "out" / "prompts.parquet")}
    for v in valid:
        msgs = v.get("messages") or [{"role": "user", "content": v["prompt"]}]
        assert make_prompt_id([{**m, "content": m["content"].strip()} for m in msgs]) in ids
    assert report.records == report.valid + sum(report.rejected.values())


def test_hf_dataset_input_through_datasets(tmp_path):
    """`hf:NAME[:SPLIT]` goes through datasets.load_dataset; a local dataset folder stands in for a hub name offline."""
    pytest.importorskip("datasets")
    ds_dir = tmp_path / "my_dataset"
    ds_dir.mkdir()
    jsonl(ds_dir / "train.jsonl", [{"prompt": "from a dataset"}, {"prompt": "another"}])
    report = ingest([f"hf:{ds_dir}:train"], tmp_path / "out")
    assert report.valid == 2 and report.prompts == 2
    with pytest.raises(DataError, match="cannot load HF dataset"):
        ingest([f"hf:{tmp_path / 'nope'}"], tmp_path / "out2")
