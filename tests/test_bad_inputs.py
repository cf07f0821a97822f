"""Bad inputs, stage by stage: each ends in a clean error or a counted skip, never in a traceback.

A clean error is exit status 2 and a message that names the file (and the row or line and the column where there is
one) and says how to fix it. A counted skip keeps the valid records beside the bad ones and says how many it left
out. The text inputs are in ``tests/bad_inputs/``; Parquet files, corrupt files and deeply nested JSON are made here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rrhf_cli import main
from rrhf_core.data.contracts import PROMPTS_SCHEMA, SAMPLES_SCHEMA, SCORES_SCHEMA, read_prompts
from rrhf_core.errors import DataError
from rrhf_core.sampling.shard import response_id

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "bad_inputs"
DEPTH = 100_000  # far past any JSON parser's recursion limit


def rrhf(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str]:
    """Run the CLI in this process; ``(exit status, stdout + stderr)``. A non-user error propagates (a bug)."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    out = cap.out + cap.err
    assert "Traceback" not in out, out
    return code, out


def assert_clean_error(code: int, out: str, *needles: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out, out
    assert " error: " in out, out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"


def deep_json(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


# --- ingest: counted skips ---------------------------------------------------------------------------------------

GENERATED: dict[str, Callable[[Path], None]] = {
    "deep_nested.jsonl": lambda p: p.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "First good prompt."}),
                '{"prompt": "deep", "meta": ' + deep_json() + "}",
                json.dumps({"prompt": "Second good prompt."}),
                json.dumps({"prompt": "Third good prompt.", "meta": {"a": json.loads(deep_json(200))}}),
            ]
        )
        + "\n"
    ),
    "deep_nested.json": lambda p: p.write_text(deep_json()),
    "corrupt.parquet": lambda p: p.write_bytes(b"PAR1" + b"\x00garbage" * 20 + b"PAR1"),
    "truncated.jsonl.gz": lambda p: p.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03+"),
    "latin1.csv": lambda p: p.write_bytes("prompt\nCaf\u00e9 au lait?\n".encode("latin-1")),
    "empty.jsonl": lambda p: p.write_text("\n\n"),
    # JSON escapes that decode to text no file can hold (lone surrogates) or that shows nothing (zero-width only)
    "unicode_tricks.jsonl": lambda p: p.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "A good prompt."}),
                '{"prompt": "\\ud800 lone high surrogate"}',
                '{"prompt": "\\u200b\\u200b"}',
                '{"messages": [{"role": "user", "content": "\\ufeff\\u2060 \\u200d"}]}',
                json.dumps({"prompt": "Another good prompt."}),
                '{"prompt": "A question", "reference": "an answer \\udfff"}',
            ]
        )
        + "\n"
    ),
}


def input_file(name: str, tmp_path: Path) -> Path:
    """A corpus file from tests/bad_inputs/, or a generated one in ``tmp_path``."""
    if name in GENERATED:
        GENERATED[name](tmp_path / name)
        return tmp_path / name
    return BAD / name


# file -> (prompts kept, {line or row: a fragment of its reject reason})
INGEST_SKIPS: dict[str, tuple[int, dict[int, str]]] = {
    "broken_lines.jsonl": (
        3,
        {
            2: "broken JSON line",
            3: "record is list, not an object",
            4: "field 'prompt' is int, not a string",
            6: "unknown record format",
            7: "field 'prompt' is empty",
        },
    ),
    "deep_nested.jsonl": (3, {2: "nested too deeply"}),
    "bad_messages.jsonl": (
        3,
        {
            2: "field 'messages' must be a non-empty list",
            3: "field 'messages' is a string that is not JSON",
            4: "message 0 has role 'robot'",
            5: "message 0 content is NoneType",
            6: "messages must end with a user turn",
            8: "field 'split' is 'validation'",
        },
    ),
    "bad_rrhf_scores.jsonl": (
        2,
        {
            1: "not a finite number",
            2: "not a finite number",
            3: "not a finite number",
            4: "not a finite number",
            6: "field 'responses' must be a list of strings",
        },
    ),
    "ragged.csv": (3, {3: "row has 3 cells but the header has 2", 4: "field 'prompt' is empty"}),
    "bom.csv": (3, {}),
    "bom.jsonl": (3, {}),
    "blank_final_assistant.jsonl": (4, {}),
    "unicode_tricks.jsonl": (
        2,
        {
            2: "unpaired surrogate (\\ud800)",
            3: "field 'prompt' is empty",
            4: "a user turn is empty",
            6: "unpaired surrogate (\\udfff)",
        },
    ),
}


@pytest.mark.parametrize("name", list(INGEST_SKIPS))
def test_ingest_rejects_bad_records_and_keeps_the_rest(name, tmp_path, capsys):
    src = input_file(name, tmp_path)
    out_dir = tmp_path / "out"
    code, out = rrhf(capsys, "ingest", "--inputs", src, "--output-dir", out_dir)
    kept, rejected = INGEST_SKIPS[name]
    assert code == 0, out
    assert f"{kept + len(rejected)} records: {kept} valid, {len(rejected)} rejected" in out
    assert len(read_prompts(out_dir / "prompts.parquet")) == kept
    rejects = [json.loads(line) for line in (out_dir / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == list(rejected), rejects
    for r in rejects:
        assert r["input"] == str(src)
        assert rejected[r["line"]] in r["reason"], r


def test_a_utf8_bom_is_not_part_of_the_first_column(tmp_path, capsys):
    for name in ("bom.csv", "bom.jsonl"):
        code, out = rrhf(capsys, "ingest", "--inputs", BAD / name, "--output-dir", tmp_path / name)
        assert code == 0, out
        rows = read_prompts(tmp_path / name / "prompts.parquet")
        assert all("\ufeff" not in m["content"] for r in rows for m in r["messages"])
    rows = {r["messages"][-1]["content"]: r for r in read_prompts(tmp_path / "bom.csv" / "prompts.parquet")}
    assert [x["text"] for x in rows["Name two colours, please."]["references"]] == ["Red and blue."]


def test_a_blank_final_assistant_turn_is_dropped_and_counted_and_its_prompt_kept(tmp_path, capsys):
    code, out = rrhf(
        capsys, "ingest", "--inputs", BAD / "blank_final_assistant.jsonl", "--output-dir", tmp_path / "o"
    )
    assert code == 0, out
    assert "1 blank reference answer(s) dropped" in out
    rows = {r["messages"][-1]["content"]: r for r in read_prompts(tmp_path / "o" / "prompts.parquet")}
    assert rows["Write a haiku about rain."]["references"] == []
    assert [x["text"] for x in rows["Say hello."]["references"]] == ["Hello!"]
    report = json.loads((tmp_path / "o" / "ingest_report.json").read_text())
    assert report["blank_references_dropped"] == 1


# --- ingest: clean errors ------------------------------------------------------------------------------------------

# input (a corpus or generated file, or a spec) -> what the message must say besides the input's name
INGEST_ERRORS: dict[str, tuple[str, ...]] = {
    "missing.jsonl": ("does not exist",),
    "deep_nested.json": ("nested too deeply",),
    "corrupt.parquet": ("cannot read input",),
    "truncated.jsonl.gz": ("cannot read input",),
    "latin1.csv": ("cannot read input", "not UTF-8 text", "save it as UTF-8"),
    "empty.jsonl": ("no valid prompt", "the inputs hold no records"),
    "not_a_list.json": ("expected a JSON list of records",),
    "no_prompt_column.csv": ("no valid prompt", "unknown record format"),
    "hf:nonexistent-org/nonexistent-dataset": ("cannot load HF dataset", "export it to a .jsonl file"),
    "embedded:no-such-set": ("unknown embedded prompt set",),
}


@pytest.mark.parametrize("name", list(INGEST_ERRORS))
def test_ingest_fails_cleanly_on_an_unusable_input(name, tmp_path, capsys):
    src = name if ":" in name or name == "missing.jsonl" else input_file(name, tmp_path)
    code, out = rrhf(capsys, "ingest", "--inputs", src, "--output-dir", tmp_path / "out")
    shown = name.split(":", 1)[-1] if ":" in name else str(src)
    assert_clean_error(code, out, shown, *INGEST_ERRORS[name])


# --- ingest: inputs that expand past the memory bound ---------------------------------------------------------------


def gz_bomb(path: Path) -> Path:
    """About 850 KB of gzip that holds 400 MB of JSON lines (400,000 copies of one record)."""
    import gzip

    line = (json.dumps({"prompt": "x" * 1000}) + "\n").encode()
    path.write_bytes(gzip.compress(line * 400_000, 9))
    return path


def parquet_bomb(path: Path) -> Path:
    """Under 1 KB of Parquet whose 400 rows each hold the same 1 MB string (dictionary-encoded, compressed)."""
    pq.write_table(pa.table({"prompt": ["a" * (1 << 20)] * 400}), path, compression="zstd")
    return path


def test_a_gzip_bomb_is_refused_before_it_is_all_in_memory(tmp_path, capsys):
    import tracemalloc

    from rrhf_core.data.bounded import InputLimits, read_bytes

    bomb = gz_bomb(tmp_path / "bomb.jsonl.gz")
    code, out = rrhf(capsys, "ingest", "--inputs", bomb, "--output-dir", tmp_path / "out")
    assert_clean_error(code, out, str(bomb), "more than 100x", "decompression bomb", "max_expansion")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="decompression bomb"):
            read_bytes(bomb, InputLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 250 << 20, peak  # stopped near 100x the file (85 MB), not at its 400 MB


def test_a_parquet_bomb_is_refused(tmp_path, capsys):
    bomb = parquet_bomb(tmp_path / "bomb.parquet")
    assert bomb.stat().st_size < 1024
    code, out = rrhf(capsys, "ingest", "--inputs", bomb, "--output-dir", tmp_path / "out")
    assert_clean_error(code, out, str(bomb), "decompression bomb", "max_expansion")


def test_a_parquet_bomb_given_to_build_is_refused(chain, tmp_path, capsys):
    argv = stage_argv("build", chain, tmp_path)
    bomb = parquet_bomb(tmp_path / "samples.parquet")
    argv[argv.index("--samples") + 1] = bomb
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, str(bomb), "decompression bomb")


def test_an_input_past_max_input_mb_is_refused_and_the_bound_can_be_raised(tmp_path, capsys):
    big = tmp_path / "big.jsonl"
    big.write_text(
        "".join(json.dumps({"prompt": f"Prompt number {i}: " + "x" * 100}) + "\n" for i in range(12_000))
    )
    argv = ["ingest", "--inputs", big, "--output-dir", tmp_path / "out"]
    code, out = rrhf(capsys, *argv, "--set", "max_input_mb=1")
    assert_clean_error(code, out, str(big), "past 1 MB", "ingest setting max_input_mb")
    code, out = rrhf(capsys, *argv, "--set", "max_input_mb=2")
    assert code == 0 and "12000 valid" in out, out


def test_a_gzipped_parquet_input_is_read(tmp_path, capsys):
    import gzip

    plain = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["Say hi.", "Say bye."]}), plain)
    packed = tmp_path / "p.parquet.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    code, out = rrhf(capsys, "ingest", "--inputs", packed, "--output-dir", tmp_path / "out")
    assert code == 0, out
    assert sorted(
        r["messages"][0]["content"] for r in read_prompts(tmp_path / "out" / "prompts.parquet")
    ) == [
        "Say bye.",
        "Say hi.",
    ]


def test_a_csv_cell_past_the_csv_modules_limit_rejects_its_row_not_the_file(tmp_path, capsys):
    import csv

    path = tmp_path / "long.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["prompt"], ["Say hi."], ["y" * 200_000], ["Say bye."]])
    limit = csv.field_size_limit()
    code, out = rrhf(capsys, "ingest", "--inputs", path, "--output-dir", tmp_path / "out")
    assert code == 0 and "2 valid, 1 rejected" in out and "prompt too long" in out, out
    assert csv.field_size_limit() == limit  # the module's limit is as it was


# --- sample, score and build: the tables they read ---------------------------------------------------------------


def rows_of(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def write(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture
def chain(tmp_path: Path) -> dict[str, Path]:
    """A valid prompts -> samples -> scores chain (two prompts, three responses each) that builds."""
    good = tmp_path / "good"
    good.mkdir()
    prompts = [
        {
            "prompt_id": f"p{i}",
            "messages": [{"role": "user", "content": q}],
            "split": "train",
            "source": "test",
            "references": [],
            "meta": "{}",
        }
        for i, q in enumerate(["Say a.", "Say b."])
    ]
    samples, scores = [], []
    for p in prompts:
        for text in ("a", "aa", "b"):
            rid = response_id(p["prompt_id"], text)
            samples.append(
                {
                    "prompt_id": p["prompt_id"],
                    "response_id": rid,
                    "text": text,
                    "source": "policy:m",
                    "num_tokens": len(text),
                    "finish_reason": "stop",
                    "sampler": "s",
                }
            )
            scores.append(
                {
                    "response_id": rid,
                    "prompt_id": p["prompt_id"],
                    "reward": float(text.count("a")),
                    "reward_model": "m",
                }
            )
    return {
        "prompts": write(good / "prompts.parquet", prompts, PROMPTS_SCHEMA),
        "samples": write(good / "samples.parquet", samples, SAMPLES_SCHEMA),
        "scores": write(good / "scores.parquet", scores, SCORES_SCHEMA),
    }


def edit_row(column: str, value: Any, row: int = 1) -> Callable[[Path, Path], None]:
    """A copy of the file with one cell changed (``row`` 0-based; messages name it 1-based)."""

    def make(good: Path, bad: Path) -> None:
        table = pq.read_table(good)
        rows = table.to_pylist()
        rows[row][column] = value
        write(bad, rows, table.schema)

    return make


def retype(column: str, typ: pa.DataType, value: Any) -> Callable[[Path, Path], None]:
    """A copy of the file whose ``column`` has another type (every cell ``value``)."""

    def make(good: Path, bad: Path) -> None:
        table = pq.read_table(good)
        i = table.schema.get_field_index(column)
        write(
            bad, [{**r, column: value} for r in table.to_pylist()], table.schema.set(i, pa.field(column, typ))
        )

    return make


def drop(column: str) -> Callable[[Path, Path], None]:
    return lambda good, bad: pq.write_table(pq.read_table(good).drop_columns([column]), bad)


def corrupt(good: Path, bad: Path) -> None:
    data = good.read_bytes()
    bad.write_bytes(data[:8] + b"\xff" * 64 + data[72:])


def truncated(good: Path, bad: Path) -> None:
    bad.write_bytes(good.read_bytes()[:-40])


def empty(good: Path, bad: Path) -> None:
    bad.write_bytes(b"")


# (which file, case) -> (how to make the bad file from the good one, what the message must say besides its path)
TABLE_CASES: dict[tuple[str, str], tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    ("prompts", "corrupt"): (corrupt, ("cannot read prompts file", "rrhf ingest")),
    ("prompts", "empty file"): (empty, ("cannot read prompts file",)),
    ("prompts", "missing column"): (drop("messages"), ("lacks column(s) ['messages']", "rrhf ingest")),
    ("prompts", "null messages"): (edit_row("messages", None), ("row 2", "column 'messages'", "rrhf ingest")),
    ("prompts", "ends with assistant"): (
        edit_row("messages", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
        ("row 2", "column 'messages'", "the last message must be a user turn"),
    ),
    ("prompts", "null prompt_id"): (edit_row("prompt_id", None), ("row 2", "column 'prompt_id'")),
    ("prompts", "null reference text"): (
        edit_row("references", [{"text": None, "source": "dataset:reference", "reward": None}]),
        ("row 2", "column 'references'"),
    ),
    ("samples", "corrupt"): (corrupt, ("cannot read samples file", "rrhf sample")),
    ("samples", "truncated"): (truncated, ("cannot read samples file",)),
    ("samples", "missing column"): (drop("text"), ("lacks column(s) ['text']", "rrhf sample")),
    ("samples", "text is a number"): (retype("text", pa.int64(), 7), ("column 'text' has type int64",)),
    ("samples", "null text"): (edit_row("text", None), ("row 2", "column 'text'", "rrhf sample")),
    ("samples", "null response_id"): (edit_row("response_id", None), ("row 2", "column 'response_id'")),
    ("samples", "null source"): (edit_row("source", None), ("row 2", "column 'source'")),
    ("samples", "negative num_tokens"): (
        edit_row("num_tokens", -5),
        ("row 2", "column 'num_tokens'", "-5", "negative"),
    ),
    ("samples", "null num_tokens"): (edit_row("num_tokens", None), ("row 2", "column 'num_tokens'")),
    ("scores", "corrupt"): (corrupt, ("cannot read scores file", "rrhf score")),
    ("scores", "missing column"): (drop("reward"), ("lacks column(s) ['reward']", "rrhf score")),
    ("scores", "string rewards"): (
        retype("reward", pa.string(), "1.5"),
        ("column 'reward' has type string",),
    ),
    ("scores", "nan reward"): (edit_row("reward", float("nan")), ("row 2", "column 'reward'", "nan")),
    ("scores", "inf reward"): (edit_row("reward", float("inf")), ("row 2", "column 'reward'", "inf")),
    ("scores", "null reward"): (edit_row("reward", None), ("row 2", "column 'reward'", "None")),
    ("scores", "null response_id"): (edit_row("response_id", None), ("row 2", "column 'response_id'")),
}
READERS = {"prompts": ("sample", "score", "build"), "samples": ("score", "build"), "scores": ("build",)}


def stage_argv(stage: str, files: dict[str, Path], tmp_path: Path) -> list[Any]:
    out = tmp_path / f"{stage}-out"
    if stage == "sample":  # the model is never reached: the prompts are read first
        return [
            "sample",
            "--prompts",
            files["prompts"],
            "--model",
            tmp_path / "no-model",
            "--output-dir",
            out,
        ]
    if stage == "score":
        return [
            "score",
            "--samples",
            files["samples"],
            "--prompts",
            files["prompts"],
            "--reward",
            "reward_fns:count_a",
            "--cache-path",
            tmp_path / "cache.sqlite",
            "--output-dir",
            out,
            "--no-progress",
        ]
    return [
        "build",
        "--prompts",
        files["prompts"],
        "--samples",
        files["samples"],
        "--scores",
        files["scores"],
        "--output-dir",
        out,
    ]


@pytest.mark.parametrize(
    ("stage", "which", "case"),
    [(stage, which, case) for (which, case) in TABLE_CASES for stage in READERS[which]],
)
def test_a_bad_table_is_a_clean_error_naming_file_row_and_column(stage, which, case, chain, tmp_path, capsys):
    make, needles = TABLE_CASES[(which, case)]
    bad = tmp_path / f"bad-{which}.parquet"
    make(chain[which], bad)
    code, out = rrhf(capsys, *stage_argv(stage, {**chain, which: bad}, tmp_path))
    assert_clean_error(code, out, str(bad), *needles)


def test_the_good_chain_scores_and_builds(chain, tmp_path, capsys):
    code, out = rrhf(capsys, *stage_argv("score", chain, tmp_path))
    assert code == 0, out
    code, out = rrhf(capsys, *stage_argv("build", chain, tmp_path))
    assert code == 0, out
    assert "2 of 2 prompts kept" in out


def test_build_skips_and_counts_blank_responses(chain, tmp_path, capsys):
    """A blank candidate (a blank reference answer sampled before ingest dropped them) is left out and counted."""
    samples, scores = rows_of(chain["samples"]), rows_of(chain["scores"])
    rid = response_id("p0", " ")
    samples.append({**samples[0], "response_id": rid, "text": " ", "source": "dataset:reference"})
    scores.append({**scores[0], "response_id": rid, "reward": 5.0})
    files = {
        **chain,
        "samples": write(tmp_path / "samples.parquet", samples, SAMPLES_SCHEMA),
        "scores": write(tmp_path / "scores.parquet", scores, SCORES_SCHEMA),
    }
    code, out = rrhf(capsys, *stage_argv("build", files, tmp_path))
    assert code == 0, out
    assert "2 of 2 prompts kept" in out and "1 blank response(s) skipped" in out
    train = rows_of(tmp_path / "build-out" / "train.parquet")
    assert all(t.strip() for r in train for t in r["responses"])
    assert (
        json.loads((tmp_path / "build-out" / "build_stats.json").read_text())["blank_responses_skipped"] == 1
    )


@pytest.mark.parametrize("stage", ["sample", "score", "build"])
def test_a_duplicated_prompt_id_is_refused_by_every_reader(stage, chain, tmp_path, capsys):
    """Two prompts under one id would pair one prompt's answers with the other's text: refused, naming both rows."""
    prompts = rows_of(chain["prompts"])
    prompts[1]["prompt_id"] = prompts[0]["prompt_id"]
    files = {**chain, "prompts": write(tmp_path / "dup-prompts.parquet", prompts, PROMPTS_SCHEMA)}
    code, out = rrhf(capsys, *stage_argv(stage, files, tmp_path))
    assert_clean_error(
        code, out, str(files["prompts"]), "duplicated prompt_id", "row 2 repeats prompt_id 'p0' of row 1"
    )


@pytest.mark.parametrize(
    "rewards",
    [(1e308, 1e300, 0.0), (1e8 + 1, 1e8, 1e8 - 1), (-1e308, 1e308, 0.0)],
    ids=["near-float64-max", "beyond-float32-precision", "both-extremes"],
)
def test_extreme_rewards_build_and_keep_their_order_in_training(rewards, chain, tmp_path, capsys):
    """Rewards that float32 would merge into ties (or overflow) build without error and reach the loss with their
    order intact."""
    from rrhf_core.data.contracts import load_listwise
    from rrhf_core.training.collate import reward_ranks

    scores = rows_of(chain["scores"])
    for i, r in enumerate(scores):
        r["reward"] = rewards[i % 3]
    files = {**chain, "scores": write(tmp_path / "extreme.parquet", scores, SCORES_SCHEMA)}
    code, out = rrhf(capsys, *stage_argv("build", files, tmp_path))
    assert code == 0, out
    assert "2 of 2 prompts kept" in out
    stats = json.loads((tmp_path / "build-out" / "build_stats.json").read_text())
    assert all(math.isfinite(v) for v in (stats["reward_mean"], stats["best_of_n_mean"]))
    examples, _ = load_listwise(tmp_path / "build-out" / "train.parquet")
    for ex in examples:
        ranks = reward_ranks(ex.rewards)
        assert len(set(ranks)) == 3  # three distinct rewards, three distinct ranks: no tie made
        assert sorted(range(3), key=lambda i: ex.rewards[i]) == sorted(range(3), key=lambda i: ranks[i])


# --- score: reward functions and the score cache --------------------------------------------------------------------

REWARD_FUNCTIONS = {
    "as_string": "'1.5' (str)",
    "as_none": "None (NoneType)",
    "as_word": "'high' (str)",
    "as_list": "[1.0] (list)",
}


@pytest.mark.parametrize("fn", list(REWARD_FUNCTIONS))
def test_a_reward_function_that_returns_no_number_is_refused(fn, chain, tmp_path, capsys):
    argv = stage_argv("score", chain, tmp_path)
    argv[argv.index("reward_fns:count_a")] = f"reward_fns:{fn}"
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, f"reward_fns:{fn}", REWARD_FUNCTIONS[fn], "must return a number")
    assert not (tmp_path / "score-out" / "scores.parquet").exists()


def test_a_nan_reward_names_the_response(chain, tmp_path, capsys):
    argv = stage_argv("score", chain, tmp_path)
    argv[argv.index("reward_fns:count_a")] = "reward_fns:as_inf"
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, "gave inf for response", "rewards must be finite numbers")


def _corrupt_cache(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database\n" * 64)


def _cache_under_a_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "a-file").write_text("x")
    return path.parent / "a-file" / "cache.sqlite"


def test_a_corrupt_score_cache_is_named(chain, tmp_path, capsys):
    cache = tmp_path / "cache.sqlite"
    _corrupt_cache(cache)
    code, out = rrhf(capsys, *stage_argv("score", chain, tmp_path))
    assert_clean_error(code, out, f"score cache {cache}", "delete it")


def test_a_score_cache_that_cannot_be_made_is_named(chain, tmp_path, capsys):
    argv = stage_argv("score", chain, tmp_path)
    bad = _cache_under_a_file(tmp_path / "c" / "cache.sqlite")
    argv[argv.index("--cache-path") + 1] = bad
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, str(bad), "--cache-path")


def test_a_locked_score_cache_is_named(chain, tmp_path, capsys, monkeypatch):
    import rrhf_core.scoring.stage as stage

    monkeypatch.setattr(stage, "CACHE_LOCK_TIMEOUT_S", 0.2)
    cache = tmp_path / "cache.sqlite"
    holder = sqlite3.connect(cache, isolation_level=None)
    holder.execute("CREATE TABLE held (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, out = rrhf(capsys, *stage_argv("score", chain, tmp_path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_clean_error(code, out, f"score cache {cache}", "locked", "--cache-path")


# --- models that are not there --------------------------------------------------------------------------------------

HUB_ID = "nonexistent-org/nonexistent-model"


@pytest.mark.parametrize("model", [HUB_ID, "runs/no/such/model"])
def test_an_unavailable_model_is_one_clean_line(model, chain, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = rrhf(
        capsys, "sample", "--prompts", chain["prompts"], "--model", model, "--output-dir", tmp_path / "s"
    )
    why = "not in the local Hugging Face cache" if model == HUB_ID else "does not exist"
    assert_clean_error(code, out, model, why)
    assert len(out.strip().splitlines()) == 1, out


@pytest.mark.parametrize(("stage", "flag"), [("train", "--model"), ("train-rm", "--backbone")])
def test_an_offline_hub_id_for_training_is_one_clean_error(
    stage, flag, learnable_set, tmp_path, capsys, monkeypatch
):
    """The data is read first and is valid; the model fails to load, before any training step."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = "--data" if stage == "train" else "--pairs"
    argv = [stage, flag, HUB_ID, data, learnable_set, "--output-dir", tmp_path / "t", "--no-progress"]
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, HUB_ID, "not in the local Hugging Face cache", "hf download")
    assert len(out.split(" error: ", 1)[1].strip().splitlines()) == 1, out


def test_an_offline_reward_model_is_one_clean_line(chain, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = stage_argv("score", chain, tmp_path)
    argv[argv.index("reward_fns:count_a")] = "nonexistent-org/nonexistent-rm"
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, "nonexistent-org/nonexistent-rm", "not in the local Hugging Face cache")
    assert len(out.strip().splitlines()) == 1, out


# --- the pipeline checks its inputs before any stage ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "policy", "needles"),
    [
        ("missing.jsonl", None, ("missing.jsonl", "does not exist")),
        (
            "hf:nonexistent-org/nonexistent-dataset",
            None,
            ("nonexistent-org/nonexistent-dataset", "HF dataset"),
        ),
        ("embedded:no-such-set", None, ("unknown embedded prompt set",)),
        ("readme.txt", None, ("unsupported file type",)),
        ("embedded:demo-prompts", HUB_ID, (HUB_ID, "not in the local Hugging Face cache")),
    ],
    ids=["missing-file", "hf-dataset-offline", "unknown-embedded", "unsupported-type", "offline-policy"],
)
def test_the_pipeline_refuses_unusable_inputs_before_any_stage(
    prompts, policy, needles, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if prompts in ("missing.jsonl", "readme.txt"):
        prompts = str(tmp_path / prompts)
        if prompts.endswith(".txt"):
            Path(prompts).write_text("hello\n")
    argv = ["pipeline", "--workdir", tmp_path / "work", "--prompts", prompts]
    if policy:
        argv += ["--policy", policy]
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, *needles)
    assert not (tmp_path / "work").exists()  # no stage ran, no Prefect server started
    assert "prefect" not in out.lower()


# --- read-only outputs and caches (file modes bind root only without its capabilities) --------------------------


def unprivileged() -> list[str]:
    """A command prefix under which file modes bind (root drops the capabilities that bypass them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    if not setpriv or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and setpriv cannot drop the capability that ignores file modes")
    return prefix


def run_cli(*argv: Any) -> tuple[int, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [*unprivileged(), sys.executable, "-m", "rrhf_cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def read_only(tmp_path: Path):
    """A folder nobody may write to (its mode restored afterwards, so pytest can clean it up)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["ingest", "sample", "score", "build"])
def test_a_read_only_output_folder_is_named(stage, chain, read_only, tmp_path):
    if stage == "ingest":
        argv: list[Any] = ["ingest", "--inputs", BAD / "bom.jsonl", "--output-dir", read_only]
    else:
        argv = stage_argv(stage, chain, tmp_path)
        argv[argv.index("--output-dir") + 1] = read_only
    code, out = run_cli(*argv)
    assert_clean_error(code, out, f"cannot write to output folder {read_only}")


@pytest.mark.integration
def test_a_read_only_score_cache_is_named(chain, tmp_path, capsys):
    cache = tmp_path / "cache" / "cache.sqlite"
    argv = stage_argv("score", chain, tmp_path)
    argv[argv.index("--cache-path") + 1] = cache
    code, out = rrhf(capsys, *argv)  # fills the cache with count_a's scores
    assert code == 0, out
    argv[argv.index("reward_fns:count_a")] = "reward_fns:checksum"  # new scores to store
    cache.chmod(0o444)
    cache.parent.chmod(0o555)
    try:
        code, out = run_cli(*argv)
    finally:
        cache.parent.chmod(0o755)
        cache.chmod(0o644)
    assert_clean_error(code, out, f"score cache {cache}", "--cache-path")


@pytest.mark.integration
def test_sampling_leaves_out_blank_references(tmp_path, tiny_model_dir, capsys):
    """A prompts file from before ingest dropped blank reference answers: the blank one is not a candidate."""
    refs = [{"text": "  ", "source": "dataset:reference", "reward": None}]
    refs.append({"text": "A real answer.", "source": "dataset:reference", "reward": None})
    prompts = write(
        tmp_path / "prompts.parquet",
        [
            {
                "prompt_id": "p0",
                "messages": [{"role": "user", "content": "Say hi."}],
                "split": "train",
                "source": "t",
                "references": refs,
                "meta": "{}",
            }
        ],
        PROMPTS_SCHEMA,
    )
    code, out = rrhf(
        capsys,
        "sample",
        "--prompts",
        prompts,
        "--model",
        tiny_model_dir,
        "--output-dir",
        tmp_path / "s",
        "--backend",
        "hf",
        "--k",
        "1",
        "--max-new-tokens",
        "2",
        "--no-progress",
    )
    assert code == 0, out
    texts = [
        r["text"] for r in rows_of(tmp_path / "s" / "samples.parquet") if r["finish_reason"] == "reference"
    ]
    assert texts == ["A real answer."]


@pytest.mark.integration
def test_a_read_only_training_folder_is_named_before_training(learnable_set, tiny_model_dir, read_only):
    code, out = run_cli(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        learnable_set,
        "--output-dir",
        read_only,
        "--no-progress",
    )
    assert_clean_error(code, out, f"cannot write to output folder {read_only}")


# --- a full disk: writes past a file-size limit fail as they would on a full disk ----------------------------------


def run_cli_limited(max_file_bytes: int, *argv: Any) -> tuple[int, str]:
    """The CLI in a process that may write no file past ``max_file_bytes`` (``RLIMIT_FSIZE``: the write fails with
    EFBIG, as one on a full disk fails with ENOSPC), any machine, any user."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the failed write returns an error instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "rrhf_cli", *map(str, argv)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, preexec_fn=limit,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["ingest", "sample", "score", "build", "train"])
def test_a_full_disk_is_named_and_leaves_no_partial_outputs(
    stage, chain, tiny_model_dir, learnable_set, tmp_path
):
    if stage == "ingest":
        argv: list[Any] = ["ingest", "--inputs", BAD / "bom.jsonl", "--output-dir", tmp_path / "ingest-out"]
    elif stage == "train":
        argv = ["train", "--model", tiny_model_dir, "--data", learnable_set, "--max-steps", "1"]
        argv += ["--output-dir", tmp_path / "train-out", "--no-progress"]
    else:
        argv = stage_argv(stage, chain, tmp_path)
        if stage == "sample":
            argv[argv.index("--model") + 1] = tiny_model_dir
            argv += ["--backend", "hf", "--k", "2", "--max-new-tokens", "4", "--no-progress"]
    out = Path(argv[argv.index("--output-dir") + 1])
    code, text = run_cli_limited(1024, *argv)
    if stage == "score":  # the score cache is the first file past the limit
        assert_clean_error(code, text, "cache.sqlite")
    else:
        assert_clean_error(code, text, "cannot write to", str(out), "free space")
    left = (
        {p.name for p in out.iterdir()} if out.exists() else set()
    )  # a folder the command made goes with it
    reports = {"ingest_report.json", "sample_report.json", "build_stats.json", "train_summary.json"}
    assert not reports & left, left  # no stage reported done
    assert not [name for name in left if name.startswith((".staging-", ".tmp-")) or ".tmp" in name], left


# --- models whose files are not what they say -----------------------------------------------------------------------


def weights_swapped(tiny_model_dir: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the tiny model whose weights are: a pickle named model.safetensors; a .bin pickle that would run a
    command; a .bin of tensors for another model."""
    import pickle

    import torch

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / how))
    if how == "pickle-named-safetensors":
        (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
        return folder
    (folder / "model.safetensors").unlink()
    if how == "bin-pickle-with-code":

        class Planted:
            def __reduce__(self) -> tuple[Any, ...]:
                return (os.system, (f"touch {tmp_path / 'ran'}",))

        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Planted()))
    else:
        torch.save({"other.weight": torch.zeros(2)}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("pickle-named-safetensors", "is not safetensors"),
        ("bin-pickle-with-code", "nothing in it ran"),
        ("bin-of-other-weights", "lack 21 of the model's tensors"),
    ],
)
def test_weights_that_are_not_what_they_say_are_one_clean_error(
    how, needle, tiny_model_dir, chain, tmp_path, capsys
):
    folder = weights_swapped(tiny_model_dir, tmp_path, how)
    argv = ["sample", "--prompts", chain["prompts"], "--model", folder, "--backend", "hf", "--output-dir"]
    code, out = rrhf(capsys, *argv, tmp_path / "s", "--no-progress")
    assert_clean_error(code, out, str(folder), needle)
    assert not (tmp_path / "ran").exists()


def test_a_champion_without_a_model_folder_is_a_clean_error(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from rrhf_core.errors import ConfigError
    from tasks import registry

    # through the environment and monkeypatch, both restored afterwards (set_tracking_uri would outlive the test)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    notes = tmp_path / "not-a-model"
    notes.mkdir()
    (notes / "README.txt").write_text("no weights here\n")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(notes), "model")
        source = mlflow.get_artifact_uri("model")
    client = MlflowClient()
    client.create_registered_model("empty-champion")
    version = client.create_model_version("empty-champion", source, run_id=run.info.run_id).version
    client.set_registered_model_alias("empty-champion", "champion", version)
    with pytest.raises(
        ConfigError, match=f"version {version}.*holds no model folder.*delete_registered_model"
    ):
        registry.champion("empty-champion")


# --- the command line and the round's settings ----------------------------------------------------------------------


def test_a_dead_prefect_api_is_one_clean_error_before_the_round(tmp_path):
    """In a subprocess: importing Prefect under pytest's captured streams would bind its log handlers to them."""
    from conftest import free_port

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": f"http://user:secret@127.0.0.1:{free_port()}/api",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "rrhf_cli", "pipeline", "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    code, out = proc.returncode, proc.stdout + proc.stderr
    assert_clean_error(code, out, "(PREFECT_API_URL) does not answer", "unset PREFECT_API_URL")
    assert "secret" not in out and not (tmp_path / "work").exists()


@pytest.mark.parametrize("content", ["[1, 2]", '"a string"', "7"])
def test_rrhf_report_on_json_that_is_not_an_object(content, tmp_path, capsys):
    path = tmp_path / "last_summary.json"
    path.write_text(content)
    code, out = rrhf(capsys, "report", path)
    assert_clean_error(code, out, str(path), "is not a run summary", "a summary is an object")


def test_output_into_a_closed_pipe_ends_quietly():
    """``rrhf pipeline --plan | head -1``: the reader leaves after one line; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = f"{sys.executable} -m rrhf_cli pipeline --plan --workdir /nonexistent/w | head -1"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout.startswith("Plan of a round"), proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), proc  # 141 where the pipe closed before the plan was all written


@pytest.mark.parametrize("share", ["0", "1"])
def test_an_eval_share_that_empties_a_split_is_named_by_the_plan(share, tmp_path, capsys):
    """Records may carry their own split (the demo's suite does), so 0 and 1 are valid; the plan says what they mean
    and the round stops after ingest when a split is empty (below)."""
    code, out = rrhf(
        capsys, "pipeline", "--plan", "--workdir", tmp_path / "w", "--set", f"ingest.eval_share={share}"
    )
    assert code == 0 and f"note: ingest.eval_share {share} puts no prompt in the" in out, out


def test_records_whose_own_split_leaves_no_eval_prompts_stop_the_round_before_sampling(tmp_path):
    from rrhf_core.pipeline import PipelineConfig, check_splits

    src = tmp_path / "train-only.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Say {w}.", "split": "train"}) + "\n" for w in "abc"))
    assert main(["ingest", "--inputs", str(src), "--output-dir", str(tmp_path / "in")]) == 0
    cfg = PipelineConfig(workdir=str(tmp_path / "w"), prompts=[str(src)])
    with pytest.raises(DataError, match=r"train 3\) hold no eval prompts to be judged on"):
        check_splits(cfg, str(tmp_path / "in" / "prompts.parquet"))


@pytest.mark.parametrize(
    "argv",
    [
        ["pipeline", "--plan", "--set", "workdir="],
        ["pipeline", "--plan", "--workdir", "  "],
        ["ingest", "--inputs", BAD / "bom.jsonl", "--set", "output_dir="],
    ],
    ids=["workdir-set-empty", "workdir-blank", "output-dir-empty"],
)
def test_an_empty_folder_setting_is_refused_not_read_as_the_current_folder(argv, capsys):
    code, out = rrhf(capsys, *argv)
    assert_clean_error(code, out, "is empty: give a folder")
