"""Evaluation statistics and the judge: bootstrap CIs on cases with known answers, the gate deciding on the CI, and
a judge kept apart from the training reward through a real evaluation on a tiny model."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from rrhf_core.evaluation.promotion import GateConfig, decide
from rrhf_core.evaluation.stats import (
    bootstrap_mean_ci,
    gain_ci,
    standardised_mean,
    win_rate_ci,
    win_scores,
)


def test_a_constant_gain_has_a_zero_width_interval():
    assert gain_ci([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == (0.5, 0.5)


def test_the_bootstrap_interval_matches_the_normal_approximation():
    # differences of +1 and -1 in equal numbers: mean 0, standard error 1/sqrt(n), so the 95 % CI is about +-1.96/sqrt(n)
    n = 400
    lo, hi = gain_ci([1.0, -1.0] * (n // 2), [0.0] * n)
    half = 1.96 / math.sqrt(n)
    assert lo == pytest.approx(-half, abs=0.02) and hi == pytest.approx(half, abs=0.02)


def test_pairing_makes_a_small_consistent_gain_significant():
    base = [float(i) for i in range(30)]  # prompts differ a lot, the candidate is better on each by 0.1
    cand = [b + 0.1 for b in base]
    lo, _ = gain_ci(cand, base)
    assert lo == pytest.approx(0.1)
    unpaired_lo, _ = bootstrap_mean_ci(cand)  # the spread across prompts alone is far wider than the gain
    assert unpaired_lo < sum(base) / len(base)


def test_win_scores_and_their_interval():
    assert win_scores([1.0, 0.0, 0.5], [0.0, 1.0, 0.5], tie_margin=1e-6) == [1.0, 0.0, 0.5]
    lo, hi = win_rate_ci([1.0] * 10, [0.0] * 10, tie_margin=0.0)
    assert (lo, hi) == (1.0, 1.0)


def test_judges_are_standardised_over_both_models_answers_then_averaged():
    # judge A: candidate [3, 1], baseline [1, -1]: pooled mean 1, s.d. sqrt((4 + 0 + 0 + 4) / 4) = sqrt(2)
    #   -> candidate [sqrt 2, 0], baseline [0, -sqrt 2]
    # judge B: candidate [0, 2], baseline [2, 0]: pooled mean 1, s.d. 1 -> candidate [-1, 1], baseline [1, -1]
    r2 = math.sqrt(2)
    cand, base = standardised_mean([([3.0, 1.0], [1.0, -1.0]), ([0.0, 2.0], [2.0, 0.0])])
    assert cand == pytest.approx([(r2 - 1) / 2, 0.5]) and base == pytest.approx([0.5, (-r2 - 1) / 2])
    # a judge's scale and offset do not matter: 10 x A + 5 standardises to A
    same = standardised_mean([([35.0, 15.0], [15.0, -5.0]), ([0.0, 2.0], [2.0, 0.0])])
    assert same[0] == pytest.approx(cand) and same[1] == pytest.approx(base)
    # a judge that sees no difference between any answers adds 0 to every answer's mean
    flat = standardised_mean([([3.0, 1.0], [1.0, -1.0]), ([2.0, 2.0], [2.0, 2.0])])
    assert flat[0] == pytest.approx([r2 / 2, 0.0]) and flat[1] == pytest.approx([0.0, -r2 / 2])
    with pytest.raises(ValueError, match="judge 0 scored 1 and 2 answers"):
        standardised_mean([([3.0], [1.0, -1.0])])


def test_a_judge_list_is_validated():
    from rrhf_core.evaluation.config import EvalSettings

    assert EvalSettings(judge=["a"]).judge == "a"  # one judge in a list is that judge
    with pytest.raises(ValueError, match="names a judge twice"):
        EvalSettings(judge=["a", "b", "a"])
    with pytest.raises(ValueError, match="an empty list"):
        EvalSettings(judge=[])


def report(gain_mean: float, ci: tuple[float, float], win: float = 0.8) -> dict:
    side = {"tokens_mean": 10.0}
    return {
        "candidate": {**side, "reward_mean": 0.5 + gain_mean},
        "baseline": {**side, "reward_mean": 0.5},
        "win_rate": win,
        "reward_gain_ci": list(ci),
    }


def test_the_gate_decides_on_the_ci_lower_bound():
    noisy = report(0.2, (-0.05, 0.45))
    assert not decide(noisy, GateConfig()).promote  # a positive mean whose CI includes 0 does not promote
    assert decide(noisy, GateConfig(decide_on="mean")).promote
    clear = decide(report(0.2, (0.05, 0.35)), GateConfig())
    assert clear.promote and clear.numbers["reward_gain_ci_lo"] == 0.05
    assert "CI lower bound > 0.0" in clear.reasons[0]
    assert not decide(report(0.2, (0.05, 0.35)), GateConfig(min_reward_gain=0.1)).promote


def test_the_gate_refuses_a_policy_that_learned_to_say_nothing():
    silent = report(0.4, (0.2, 0.6))
    silent["candidate"]["empty_share"], silent["baseline"]["empty_share"] = 0.14, 0.0
    d = decide(silent, GateConfig())
    assert not d.promote and "empty answers 14% vs 0%: increase +0.14 > 0.05" in d.reasons[-1]
    assert decide(silent, GateConfig(max_empty_increase=0.2)).promote


def tiny_eval_config(tmp_path, model_dir, prompt: str, **settings):
    """An evaluation of the tiny model against itself on 6 held-out prompts ``f"{prompt} {i}"``."""
    from rrhf_core.data.ingest import ingest
    from rrhf_core.evaluation.config import EvalConfig

    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"{prompt} {i}", "split": "eval"}) + "\n" for i in range(6)))
    ingest([str(src)], tmp_path / "ingest")
    return EvalConfig(
        prompts=str(tmp_path / "ingest" / "prompts.parquet"),
        output_dir=str(tmp_path / "eval"),
        candidate=str(model_dir),
        baseline=str(model_dir),
        **settings,
    )


@pytest.mark.integration
def test_the_judge_is_kept_apart_from_the_training_reward(tmp_path, tiny_model_dir):
    from reward_fns import checksum, count_a

    from rrhf_core.evaluation.evaluate import evaluate

    cfg = tiny_eval_config(
        tmp_path,
        tiny_model_dir,
        "say something",
        reward="reward_fns:count_a",
        judge="reward_fns:checksum",
        also_report=["embedded:constraint-pass"],
        best_of_k=2,
        max_new_tokens=6,
        dtype="fp32",
    )
    rep = evaluate(cfg)
    assert rep.judge == "reward_fns:checksum" and not rep.judge_is_training_reward
    assert (
        rep.prompts == 6 and rep.reward_gain == 0.0 and rep.reward_gain_ci == (0.0, 0.0)
    )  # same model both sides
    assert rep.baseline_best_of_k is not None and rep.baseline_best_of_k >= rep.baseline.reward_mean - 1e-9
    assert set(rep.candidate.also) == {"embedded:constraint-pass"}
    rows = pq.read_table(tmp_path / "eval" / "eval_samples.parquet").to_pylist()
    assert {"prompt", "text", "judge", "reward"} <= set(rows[0])
    for r in rows:  # each column holds its own reward's score of the answer
        msgs = [{"role": "user", "content": r["prompt"]}]
        assert r["judge"] == checksum(msgs, r["text"]) and r["reward"] == count_a(msgs, r["text"])
    same = evaluate(cfg.model_copy(update={"judge": None, "best_of_k": 0, "also_report": []}))
    assert same.judge == "reward_fns:count_a" and same.judge_is_training_reward


@pytest.mark.integration
def test_several_judges_give_one_verdict_on_their_standardised_scores_and_each_its_own(
    tmp_path, tiny_model_dir
):
    from reward_fns import checksum, count_a

    from rrhf_core.evaluation.evaluate import evaluate

    cfg = tiny_eval_config(
        tmp_path,
        tiny_model_dir,
        "tell me",
        reward="embedded:constraint-pass",
        judge=["reward_fns:checksum", "reward_fns:count_a"],
        best_of_k=2,
        max_new_tokens=6,
        dtype="fp32",
    )
    rep = evaluate(cfg)
    assert rep.judge == "mean of 2 standardised judges: reward_fns:checksum, reward_fns:count_a"
    assert rep.judge_scale == "pooled s.d." and not rep.judge_is_training_reward
    assert [j.spec for j in rep.judges] == ["reward_fns:checksum", "reward_fns:count_a"]
    rows = pq.read_table(tmp_path / "eval" / "eval_samples.parquet").to_pylist()
    for r in rows:  # each judge's own score of the answer, in the order of rep.judges
        msgs = [{"role": "user", "content": r["prompt"]}]
        assert r["judge_0"] == checksum(msgs, r["text"]) and r["judge_1"] == count_a(msgs, r["text"])
    by_role = {role: [r for r in rows if r["role"] == role] for role in ("candidate", "baseline")}
    cand, base = standardised_mean(
        [([r[f"judge_{i}"] for r in by_role["candidate"]], [r[f"judge_{i}"] for r in by_role["baseline"]])
         for i in range(2)]
    )  # fmt: skip
    assert [r["judge"] for r in by_role["candidate"]] == pytest.approx(cand)
    assert [r["judge"] for r in by_role["baseline"]] == pytest.approx(base)
    assert rep.baseline.reward_mean == pytest.approx(sum(base) / len(base))
    assert rep.judges[0].baseline_mean == pytest.approx(sum(r["judge_0"] for r in by_role["baseline"]) / 6)
    assert rep.reward_gain == 0.0 and all(j.reward_gain == 0.0 for j in rep.judges)  # same model both sides
    assert rep.baseline_best_of_k is not None  # on the verdict's scale
    with_reward = evaluate(
        cfg.model_copy(update={"judge": ["reward_fns:checksum", "embedded:constraint-pass"]})
    )
    assert with_reward.judge_is_training_reward and [j.is_training_reward for j in with_reward.judges] == [
        False,
        True,
    ]


@pytest.mark.integration
def test_preference_pairs_can_reach_beyond_the_answered_prompts(tmp_path, tiny_model_dir):
    import pyarrow as pa

    from rrhf_core.data.contracts import PROMPTS_SCHEMA
    from rrhf_core.evaluation.config import EvalConfig
    from rrhf_core.evaluation.evaluate import evaluate

    refs = [{"text": "kind", "source": "dataset:chosen", "reward": None},
            {"text": "rude", "source": "dataset:rejected", "reward": None}]  # fmt: skip
    rows = [
        {"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"q{i}"}], "split": "eval",
         "source": "t", "references": refs, "meta": "{}"}
        for i in range(6)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA), tmp_path / "prompts.parquet")
    cfg = EvalConfig(prompts=str(tmp_path / "prompts.parquet"), output_dir=str(tmp_path / "e"),
                     candidate=str(tiny_model_dir), baseline=str(tiny_model_dir), reward="reward_fns:checksum",
                     limit=2, max_new_tokens=4, dtype="fp32")  # fmt: skip
    assert evaluate(cfg).preference_pairs == 2
    wide = evaluate(cfg.model_copy(update={"preference_limit": 5}))
    assert wide.prompts == 2 and wide.preference_pairs == 5
    assert wide.candidate.preference_accuracy == wide.baseline.preference_accuracy  # same model


@pytest.mark.integration
def test_the_baselines_generations_are_reused_by_content_key(tmp_path, tiny_model_dir):
    import shutil

    from reward_fns import count_a

    from rrhf_core.evaluation.evaluate import evaluate

    cfg = tiny_eval_config(
        tmp_path,
        tiny_model_dir,
        "say something",
        reward="reward_fns:count_a",
        best_of_k=2,
        max_new_tokens=6,
        dtype="fp32",
        reuse_dir=str(tmp_path / "reuse"),
    )
    first_log: list[str] = []
    first = evaluate(cfg, log=first_log.append)
    kept = list((tmp_path / "reuse").glob("baseline-*.json"))
    assert len(kept) == 1 and not any("reused" in line for line in first_log)
    # a second evaluation against the same baseline (another candidate: a copy of the weights) generates nothing
    # for the baseline, and its figures are exactly the first's
    other = tmp_path / "candidate"
    shutil.copytree(tiny_model_dir, other)
    again_log: list[str] = []
    again = evaluate(cfg.model_copy(update={"candidate": str(other)}), log=again_log.append)
    assert any("baseline's answers are reused" in line for line in again_log)
    assert not any("baseline best-of-2" in line or "(baseline" in line for line in again_log)
    assert again.baseline == first.baseline and again.baseline_best_of_k == first.baseline_best_of_k
    rows = pq.read_table(tmp_path / "eval" / "eval_samples.parquet").to_pylist()
    for r in rows:  # reused answers are scored again, by the judge of this evaluation
        assert r["reward"] == count_a([{"role": "user", "content": r["prompt"]}], r["text"])
    # any setting the answers depend on is a new key: generated again, kept beside the first
    evaluate(cfg.model_copy(update={"max_new_tokens": 5}))
    assert len(list((tmp_path / "reuse").glob("baseline-*.json"))) == 2
    # an unreadable record is generated again, not an error
    kept[0].write_text("{not json")
    log: list[str] = []
    evaluate(cfg, log=log.append)
    assert not any("reused" in line for line in log) and json.loads(kept[0].read_text())["texts"]
