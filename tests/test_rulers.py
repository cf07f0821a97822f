"""Rulers the verdict rests on: the length-controlled gain and win rate (a candidate that wins by being shorter
alone must not count as better) and judges that must prove themselves on held-out human pairs before the gate
believes them (a near-chance judge makes the verdict inconclusive). Expected values are derived by hand."""

from __future__ import annotations

import random

import pytest

from rrhf_core.data.contracts import ListwiseExample
from rrhf_core.evaluation.config import EvalConfig
from rrhf_core.evaluation.evaluate import Answers, JudgeValidity, Side, compare, judge_validity
from rrhf_core.evaluation.promotion import GateConfig, decide
from rrhf_core.evaluation.stats import length_controlled_gain, length_matched


def test_the_length_controlled_gain_is_the_intercept_of_the_score_difference_on_the_length_difference():
    # diff = 1 + 1 * length_diff exactly: the slope is 1 and at equal length the gain is 1
    gain, ci = length_controlled_gain([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0])
    assert gain == pytest.approx(1.0) and ci is not None and ci[0] <= 1.0 + 1e-9 <= ci[1] + 2e-9
    # by hand: x = (-2, 0, 2), d = (0, 3, 3): mean x 0, mean d 2, cov = (-2*-2 + 0 + 2*1)/3 = 2, var = 8/3,
    # beta = 0.75, gamma = 2 - 0.75 * 0 = 2
    assert length_controlled_gain([0.0, 3.0, 3.0], [-2.0, 0.0, 2.0])[0] == pytest.approx(2.0)
    # no length difference anywhere: nothing to control, the plain mean gain
    assert length_controlled_gain([0.5, 1.5], [0.0, 0.0])[0] == pytest.approx(1.0)
    # every answer shorter by the same 5 tokens: length and model cannot be told apart
    assert length_controlled_gain([1.0, 2.0, 3.0], [-5.0, -5.0, -5.0]) == (None, None)
    with pytest.raises(ValueError, match="differ in shape"):
        length_controlled_gain([1.0], [1.0, 2.0])


def test_length_matched_prompts_are_those_of_about_equal_length():
    # |a - b| <= max(2, 10 % of the longer): (10, 12) yes, (10, 13) no, (40, 44) yes, (40, 45) no
    assert length_matched([10, 10, 40, 40, 0], [12, 13, 44, 45, 0]) == [0, 2, 4]


RULE = [JudgeValidity(rule=True)]  # the judge of the length tests is a rule: no held-out accuracy asked


def _eval_cfg(tmp_path) -> EvalConfig:
    return EvalConfig(prompts=str(tmp_path / "p.parquet"), output_dir=str(tmp_path), candidate="c")


def _side(scores: list[float], tokens: list[int]) -> Side:
    n = len(scores)
    return Side(
        "m",
        Answers(["x" * t for t in tokens], tokens, ["stop"] * n),
        scores,
        scores,
        {},
        (None, None),
        [scores],
    )


def test_a_shorter_answer_that_wins_by_length_alone_is_not_a_gain(tmp_path):
    """The judge pays for brevity and nothing else (score = -tokens); the candidate is shorter on 16 of 20 prompts
    and as long on 4. The plain gain is positive with a CI above 0 and the plain gate promotes; the gain at equal
    length is 0, the length-matched win rate is a tie, and the gate deciding on ci_lower_lc refuses."""
    base_tokens = [30 + 2 * i for i in range(20)]
    cand_tokens = [t - (0 if i < 4 else 4 + i) for i, t in enumerate(base_tokens)]
    cand = _side([-float(t) for t in cand_tokens], cand_tokens)
    base = _side([-float(t) for t in base_tokens], base_tokens)
    rep = compare(cand, base, _eval_cfg(tmp_path), 0, None, RULE).to_dict()
    assert rep["reward_gain"] > 0 and rep["reward_gain_ci"][0] > 0 and rep["win_rate"] > 0.5
    assert rep["reward_gain_lc"] == pytest.approx(0.0, abs=1e-9)
    assert rep["reward_gain_lc_ci"][0] <= 1e-9
    assert rep["length_matched_prompts"] == 4 and rep["win_rate_lc"] == 0.5
    assert rep["length_ratio"] == pytest.approx(sum(cand_tokens) / sum(base_tokens))
    assert decide(rep, GateConfig()).promote  # the plain verdict is fooled
    lc = decide(rep, GateConfig(decide_on="ci_lower_lc"))
    assert not lc.promote and lc.verdict == "reject"
    assert "length-controlled judge gain +0.0000" in lc.reasons[0] and "<= 0.0" in lc.reasons[0]
    assert lc.numbers["reward_gain_lc"] == pytest.approx(0.0, abs=1e-9)


def test_a_gain_that_holds_at_equal_length_passes_the_length_controlled_gate(tmp_path):
    # the judge pays 1 for the candidate's answers beyond their length: the gain at equal length is 1
    base_tokens = [30 + 2 * i for i in range(20)]
    cand_tokens = [t - (i % 5) for i, t in enumerate(base_tokens)]
    cand = _side([1.0 - t for t in cand_tokens], cand_tokens)
    base = _side([-float(t) for t in base_tokens], base_tokens)
    rep = compare(cand, base, _eval_cfg(tmp_path), 0, None, RULE).to_dict()
    assert rep["reward_gain_lc"] == pytest.approx(1.0)
    assert decide(rep, GateConfig(decide_on="ci_lower_lc")).promote


def test_the_length_controlled_gate_refuses_when_length_and_model_cannot_be_told_apart(tmp_path):
    tokens = [20] * 8
    cand = _side([1.0] * 8, [t - 5 for t in tokens])
    rep = compare(cand, _side([0.0] * 8, tokens), _eval_cfg(tmp_path), 0, None, RULE).to_dict()
    assert rep["reward_gain_lc"] is None and rep["win_rate_lc"] is None
    d = decide(rep, GateConfig(decide_on="ci_lower_lc"))
    assert not d.promote and "cannot be measured" in d.reasons[0]


def _pairs(n: int) -> list[ListwiseExample]:
    return [
        ListwiseExample(
            f"p{i}", [{"role": "user", "content": f"q{i}"}], [f"good {i}", f"bad {i}"], [1.0, 0.0], ["c", "r"]
        )
        for i in range(n)
    ]


class CoinJudge:
    """A model judge that knows nothing: a fixed random score per answer."""

    reward_id = "coin"

    def score(self, prompts, responses):
        return [random.Random(r).random() for r in responses]


class GoodJudge:
    reward_id = "good"

    def score(self, prompts, responses):
        return [1.0 if r.startswith("good") else 0.0 for r in responses]


class RuleJudge(GoodJudge):
    rule = True


def _report_with(tmp_path, judge, pairs) -> dict:
    validity = judge_validity(judge, pairs, seed=0)
    cand, base = _side([1.0, 2.0, 3.0, 4.0], [10] * 4), _side([0.0] * 4, [10] * 4)
    cfg = _eval_cfg(tmp_path).model_copy(update={"judge": "trained:judge"})
    return compare(cand, base, cfg, 0, None, [validity]).to_dict()


def test_a_near_chance_judge_makes_the_verdict_inconclusive(tmp_path):
    rep = _report_with(tmp_path, CoinJudge(), _pairs(200))
    (j,) = rep["judges"]
    assert j["held_out_pairs"] == 200 and 0.4 < j["held_out_accuracy"] < 0.6
    assert j["held_out_accuracy_ci"][0] < 0.55
    d = decide(rep, GateConfig())
    assert not d.promote and d.verdict == "inconclusive" and d.outcome == "inconclusive"
    assert "judge trained:judge: held-out pair accuracy" in d.reasons[-1] and "may be a coin" in d.reasons[-1]
    assert d.summary(has_champion=True).startswith("inconclusive, keep the current champion")
    # the same numbers with a judge that has proved itself promote
    good = decide(_report_with(tmp_path, GoodJudge(), _pairs(200)), GateConfig())
    assert good.promote and "accuracy 1.000" in good.reasons[-1]
    # the check can be turned off (a judge trusted untested), and a rule is never asked
    assert decide(rep, GateConfig(min_judge_accuracy=None)).promote
    ruled = _report_with(tmp_path, RuleJudge(), [])
    assert ruled["judges"][0]["rule"] and decide(ruled, GateConfig()).promote


def test_a_model_judge_without_held_out_pairs_is_refused_as_a_gate_input(tmp_path):
    rep = _report_with(tmp_path, GoodJudge(), [])
    d = decide(rep, GateConfig())
    assert not d.promote and d.verdict == "inconclusive"
    assert "is a model whose accuracy cannot be measured" in d.reasons[-1]
    assert "gate.min_judge_accuracy: null" in d.reasons[-1]


def test_rules_and_models_are_told_apart():
    from rrhf_core.instructions.reward import InstructionReward
    from rrhf_core.scoring.reward import FunctionReward, HFClassifierReward

    assert InstructionReward.rule and FunctionReward.rule
    assert not getattr(HFClassifierReward, "rule", False)


def test_the_gain_is_reported_per_prompt_group_with_its_own_ci():
    from rrhf_core.evaluation.evaluate import group_label
    from rrhf_core.evaluation.stats import group_gains

    # by hand: group "false" = prompts 0, 2: baseline (0, 1) -> candidate (1, 1): gain 0.5; group "true" = prompt 1
    # and 3: baseline (0, 0) -> candidate (0, 0): gain 0
    out = group_gains(["false", "true", "false", "true"], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0])
    assert [(g["group"], g["prompts"], g["baseline_mean"], g["candidate_mean"]) for g in out] == [
        ("false", 2, 0.5, 1.0),
        ("true", 2, 0.0, 0.0),
    ]
    assert out[0]["gain"] == pytest.approx(0.5) and out[0]["gain_ci"][0] <= 0.5 <= out[0]["gain_ci"][1]
    assert out[1]["gain"] == 0.0 and tuple(out[1]["gain_ci"]) == (0.0, 0.0)
    # labels come from the prompt's meta: booleans as true/false, a missing key as "(none)"
    assert group_label({"meta": '{"held_out_kind": true}'}, "held_out_kind") == "true"
    assert group_label({"meta": '{"family": "writing"}'}, "family") == "writing"
    assert group_label({"meta": "{}"}, "family") == group_label({"meta": None}, "family") == "(none)"


def test_the_demo_reports_its_held_out_kinds_apart():
    from pathlib import Path

    from rrhf_core.config import load_yaml
    from rrhf_core.pipeline import PipelineConfig

    demo_yaml = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    demo = PipelineConfig.model_validate(load_yaml(demo_yaml))
    assert demo.evaluate.group_by == "held_out_kind" and demo.sample.include_references is False
