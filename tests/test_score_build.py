"""Scoring (embedded reward, functions, HF classifiers, the cache) and building the listwise set."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rrhf_core.data.build import build, cap_k
from rrhf_core.data.config import BuildConfig
from rrhf_core.data.contracts import SAMPLES_SCHEMA, load_listwise
from rrhf_core.data.ingest import ingest
from rrhf_core.errors import ConfigError, DataError
from rrhf_core.sampling.shard import response_id
from rrhf_core.scoring.config import ScoreConfig
from rrhf_core.scoring.embedded import EmbeddedReward, echo_share, repetition_share
from rrhf_core.scoring.reward import FunctionReward, HFClassifierReward, make_reward
from rrhf_core.scoring.stage import score

Q = [{"role": "user", "content": "How do I boil an egg?"}]
ANSWER = (
    "Place the egg in a pot of cold water and bring it to a boil. Then lower the heat and simmer for "
    "9 minutes for a firm yolk. Cool it in cold water before peeling."
)


@pytest.fixture(scope="module")
def embedded() -> EmbeddedReward:
    return EmbeddedReward()


def test_embedded_reward_prefers_answers_and_does_not_pay_for_echo_or_padding(embedded):
    cands = {
        "answer": ANSWER,
        "refusal": "I'm sorry, but I can't help with that.",
        "echo": "How do I boil an egg? How do I boil an egg?",
        "padded": " ".join([ANSWER] * 4),
        "off_topic": "Paris is the capital of France and it is a beautiful city.",
    }
    s = dict(zip(cands, embedded.score([Q] * len(cands), list(cands.values())), strict=True))
    assert s["answer"] > max(s["refusal"], s["echo"], s["padded"], s["off_topic"]), s
    assert embedded.score([Q], [ANSWER]) == embedded.score([Q], [ANSWER])  # deterministic


def test_gaming_signals():
    assert echo_share("how do i boil an egg", "how do i boil an egg") == 1.0
    assert echo_share("how do i boil an egg", "put it in boiling water for nine minutes") == 0.0
    assert repetition_share("a b c a b c a b c") > 0.5 and repetition_share("a b c d e") == 0.0


def test_function_reward_and_spec_errors():
    r = make_reward("reward_fns:count_a")
    assert isinstance(r, FunctionReward) and r.score([Q, Q], ["aaa", "b"]) == [3.0, 0.0]
    assert r.reward_id.startswith("fn:reward_fns:count_a@")
    with pytest.raises(ConfigError, match="cannot import reward module"):
        make_reward("no_such_module:f")
    with pytest.raises(ConfigError, match="has no function"):
        make_reward("reward_fns:nope")
    with pytest.raises(ConfigError, match="unknown embedded reward"):
        make_reward("embedded:gpt-judge")


def _setup(tmp_path: Path, responses: dict[str, list[tuple[str, str]]]) -> tuple[Path, Path]:
    """prompts.parquet from plain prompts and a samples.parquet with the given (text, source) per prompt."""
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in responses))
    ingest([str(src)], tmp_path / "ingest", eval_share=0.0)
    prompts = tmp_path / "ingest" / "prompts.parquet"
    ids = {r["messages"][-1]["content"]: r["prompt_id"] for r in pq.read_table(prompts).to_pylist()}
    rows = [
        {
            "prompt_id": ids[p],
            "response_id": response_id(ids[p], t),
            "text": t,
            "source": s,
            "num_tokens": len(t),
            "finish_reason": "stop",
            "sampler": "x",
        }
        for p, items in responses.items()
        for t, s in items
    ]
    samples = tmp_path / "samples.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), samples)
    return prompts, samples


def test_score_stage_scores_identical_pairs_once_and_caches(tmp_path):
    prompts, samples = _setup(
        tmp_path,
        {"q1": [("aa", "policy:m"), ("b", "policy:m"), ("aa", "dataset:chosen")], "q2": [("a", "policy:m")]},
    )
    cfg = ScoreConfig(
        samples=[str(samples)],
        prompts=str(prompts),
        output_dir=str(tmp_path / "score"),
        reward="reward_fns:count_a",
        cache_path=str(tmp_path / "cache.sqlite"),
    )
    seen: list[tuple[int, int]] = []
    first = score(cfg, progress=False, on_progress=lambda done, total: seen.append((done, total)))
    assert (first.responses, first.unique_pairs, first.scored_now, first.cached) == (4, 3, 3, 0)
    assert seen == [(3, 3)]
    rows = pq.read_table(first.scores_path).to_pylist()
    assert sorted(r["reward"] for r in rows) == [0.0, 1.0, 2.0, 2.0]
    again = score(cfg, progress=False)
    assert (again.scored_now, again.cached) == (0, 3)


def test_nan_reward_is_an_error_naming_the_response(tmp_path):
    prompts, samples = _setup(tmp_path, {"q": [("fine", "policy:m"), ("this is nan", "policy:m")]})
    cfg = ScoreConfig(
        samples=[str(samples)],
        prompts=str(prompts),
        output_dir=str(tmp_path / "s"),
        reward="reward_fns:broken",
        cache_path=str(tmp_path / "c.sqlite"),
    )
    with pytest.raises(DataError, match=r"gave nan for response .* \('this is nan'\)"):
        score(cfg, progress=False)


def test_hf_classifier_reward_with_and_without_length_buckets(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    texts = ["short", "a much longer response " * 5, "mid length answer", "x"]
    bucketed = HFClassifierReward(str(tmp_path / "rm"), batch_size=2, bucket=True)
    plain = HFClassifierReward(str(tmp_path / "rm"), batch_size=2, bucket=False)
    assert bucketed.reward_id.startswith(f"hf:{tmp_path / 'rm'}@")
    a, b = bucketed.score([Q] * 4, texts), plain.score([Q] * 4, texts)
    assert a == pytest.approx(b, abs=2e-2)  # same scores; padding differs only (bf16 where available)
    with pytest.raises(ConfigError, match="cannot load reward model"):
        HFClassifierReward(str(tmp_path / "nothing-here"))


def test_cap_k_keeps_the_best_and_the_reward_range():
    cands = [{"text": str(i), "reward": float(i)} for i in range(10)]
    kept = cap_k(cands, 4)
    assert [c["reward"] for c in kept] == [9.0, 8.0, 4.0, 0.0]  # best, then spread down to the worst
    assert cap_k(cands[:3], 4) == cands[:3]


def test_build_joins_drops_and_writes_statistics(tmp_path):
    prompts, samples = _setup(
        tmp_path,
        {
            "good": [
                ("aaa", "policy:m"),
                ("a", "policy:m"),
                ("b", "dataset:rejected"),
                ("aaa", "dataset:chosen"),
            ],
            "tied": [("x", "policy:m"), ("y", "policy:m")],
            "single": [("aa", "policy:m")],
        },
    )
    sc = score(
        ScoreConfig(
            samples=[str(samples)],
            prompts=str(prompts),
            output_dir=str(tmp_path / "score"),
            reward="reward_fns:count_a",
            cache_path=str(tmp_path / "c.sqlite"),
        ),
        progress=False,
    )
    result = build(
        BuildConfig(
            prompts=str(prompts),
            samples=[str(samples)],
            scores=[str(sc.scores_path)],
            output_dir=str(tmp_path / "build"),
            max_k=8,
        )
    )
    assert (result.prompts_in, result.prompts_out) == (3, 1)
    assert result.dropped == {
        "all rewards equal (no ranking signal)": 1,
        "fewer than 2 distinct responses": 1,
    }
    (ex,), _ = load_listwise(result.train_path)
    assert sorted(zip(ex.rewards, ex.responses, ex.sources, strict=True)) == [
        (0.0, "b", "dataset:rejected"),
        (1.0, "a", "policy:m"),
        (3.0, "aaa", "policy:m"),
    ]  # duplicate text merged
    stats = json.loads(result.stats_path.read_text())
    assert stats["per_source"]["policy:m"]["count"] == 5 and stats["best_of_n_mean"] == pytest.approx(
        (3 + 0 + 2) / 3
    )
    from rrhf_core.data.contracts import SCORES_SCHEMA

    pq.write_table(pa.Table.from_pylist([], schema=SCORES_SCHEMA), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="has no score"):
        build(
            BuildConfig(
                prompts=str(prompts),
                samples=[str(samples)],
                scores=[str(tmp_path / "empty.parquet")],
                output_dir=str(tmp_path / "b2"),
            )
        )


def test_conflicting_rewards_for_one_response_are_refused_and_outputs_are_readable(tmp_path):
    import os
    import stat

    from rrhf_core.data.contracts import SCORES_SCHEMA, atomic_write_parquet, read_scores

    def scores(name: str, reward: float) -> Path:
        path = tmp_path / name
        row = {"response_id": "r1", "prompt_id": "p1", "reward": reward, "reward_model": "m"}
        atomic_write_parquet(pa.Table.from_pylist([row], schema=SCORES_SCHEMA), path)
        return path

    a, same, other = scores("a.parquet", 0.72), scores("same.parquet", 0.72), scores("b.parquet", 999.0)
    assert read_scores([a, same]) == {"r1": 0.72}  # the same value twice is no conflict
    with pytest.raises(
        DataError, match=r"response r1 has two rewards: 0\.72 .*a\.parquet.* and 999\.0 .*b\.parquet"
    ):
        read_scores([a, other])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o666 & ~umask  # like any other file, not mkstemp's 0600


@pytest.mark.integration
def test_killed_scoring_keeps_what_it_scored_and_the_rerun_scores_only_the_rest(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    texts = {f"prompt {p}": [(f"answer {p}-{i}", "policy:m") for i in range(20)] for p in range(10)}
    prompts, samples = _setup(tmp_path, texts)  # 200 distinct responses: chunks of 64 with batch_size 1
    cfg = ScoreConfig(samples=[str(samples)], prompts=str(prompts), output_dir=str(tmp_path / "score"),
                      reward="reward_fns:stalls_after_100", cache_path=str(tmp_path / "cache.sqlite"),
                      batch_size=1)  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", "import json, sys\nfrom rrhf_core.scoring.config import ScoreConfig\n"
         "from rrhf_core.scoring.stage import score\n"
         "score(ScoreConfig(**json.loads(sys.argv[1])), progress=False,\n"
         "      on_progress=lambda done, total: print('DONE', done, flush=True))",
         cfg.model_dump_json()],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent,
        env={**os.environ, "RRHF_TEST_STALL": "1", "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().split() == ["DONE", "64"]  # the first chunk is scored and cached ...
    child.send_signal(signal.SIGKILL)  # ... and the second hangs at its 37th response: kill -9
    child.wait()
    assert not (tmp_path / "score" / "scores.parquet").exists()  # no partial output

    again = score(cfg, progress=False)
    assert (again.unique_pairs, again.cached, again.scored_now) == (200, 64, 136)
    fresh = score(cfg.model_copy(update={"cache_path": str(tmp_path / "fresh.sqlite"),
                                         "output_dir": str(tmp_path / "fresh")}), progress=False)  # fmt: skip
    assert pq.read_table(again.scores_path).to_pylist() == pq.read_table(fresh.scores_path).to_pylist()


def test_an_edited_checker_or_penalty_changes_the_reward_ids_the_score_cache_keys_on(tmp_path):
    """The score cache is global and keyed on reward ids: an id derived from the code that computes the reward
    (not a hand-written version) cannot serve scores computed before an edit. Checked on a copy of the library with
    one constraint checker, then the embedded penalties, edited."""
    import shutil
    import subprocess
    import sys

    import rrhf_core

    specs = ["embedded:constraint-reward", "embedded:constraint-pass", "embedded:minilm-helpfulness"]

    def ids(root: Path) -> list[str]:
        code = f"from rrhf_core.scoring.reward import reward_fingerprint as f; print('\\n'.join(f(s) for s in {specs}))"
        env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    copy = tmp_path / "lib"
    shutil.copytree(
        Path(rrhf_core.__file__).parent, copy / "rrhf_core", ignore=shutil.ignore_patterns("__pycache__")
    )
    before = ids(copy)
    assert before == ids(copy)  # stable while nothing changes
    checkers = copy / "rrhf_core" / "instructions" / "constraints.py"
    text = checkers.read_text()
    edited = text.replace("len(words(t)) < int(a)", "len(words(t)) <= int(a)")
    assert edited != text
    checkers.write_text(edited)
    after = ids(copy)
    assert after[0] != before[0] and after[1] != before[1]  # both instruction rewards use the checkers
    assert after[2] == before[2]  # the helpfulness reward does not
    embedded = copy / "rrhf_core" / "scoring" / "embedded.py"
    embedded.write_text(
        embedded.read_text().replace("p += 0.5 if n_words < 3 else 0.0", "p += 0.6 if n_words < 3 else 0.0")
    )
    last = ids(copy)
    assert last[2] != after[2] and last[0] != after[0]  # the constraint reward adds the penalties too
