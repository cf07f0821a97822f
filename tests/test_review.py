"""Human review before promotion: the sheet, the tally and the gate's human rule (rrhf_core.evaluation.review)."""

from __future__ import annotations

import pytest

from rrhf_core.evaluation import review as rv
from rrhf_core.evaluation.promotion import GateConfig, decide


def samples(n: int = 5) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append(
            {"prompt_id": f"p{i}", "prompt": f"q{i}", "role": "candidate", "text": f"new {i}", "judge": 1.0}
        )
        rows.append(
            {"prompt_id": f"p{i}", "prompt": f"q{i}", "role": "baseline", "text": f"old {i}", "judge": 0.0}
        )
    return rows


def report(gain: float = 0.3) -> dict:
    return {
        "candidate": {"reward_mean": 0.5 + gain, "tokens_mean": 10.0},
        "baseline": {"reward_mean": 0.5, "tokens_mean": 10.0},
        "reward_gain_ci": (gain - 0.1, gain + 0.1),
        "win_rate": 0.7,
    }


def test_the_sheet_is_a_seeded_draw_with_each_pair_in_a_coin_order():
    a, b = rv.review_sheet(samples(), 3, seed=1), rv.review_sheet(samples(), 3, seed=1)
    assert a == b and len(a) == 3 and [p.prompt_id for p in a] == sorted(p.prompt_id for p in a)
    for p in a:
        assert p.candidate.startswith("new") and p.baseline.startswith("old")
        assert (p.judge_a, p.judge_b) == ((1.0, 0.0) if p.candidate_is == "A" else (0.0, 1.0))
    assert {p.candidate_is for p in rv.review_sheet(samples(40), 40)} == {"A", "B"}
    assert len(rv.review_sheet(samples(2), 8)) == 2  # fewer prompts than asked: all of them
    md = rv.sheet_markdown(a)
    assert md.count("\n| ") == 5 and "judge A" in md  # header, rule, 3 pairs


def test_the_tally_counts_wins_for_the_challenger_and_keeps_preference_pairs():
    pairs = [
        rv.ReviewPair("p0", "q0", "new", "old", "A", 1, 0),
        rv.ReviewPair("p1", "q1", "old", "new", "B", 0, 1),
        rv.ReviewPair("p2", "q2", "new", "old", "A", 1, 0),
        rv.ReviewPair("p3", "q3", "old", "new", "B", 0, 1),
    ]
    # pair 1: A = challenger wins; pair 2: A = champion wins; pair 3: tie; pair 4: B = challenger wins
    got = rv.tally(
        pairs, {"pair_1": "A", "pair_2": "A", "pair_3": "tie", "pair_4": "B", "approve": True}, "required"
    )
    assert (got.wins, got.ties, got.losses) == (2, 1, 1)
    assert got.win_rate == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    lo, hi = got.win_rate_ci
    assert 0.0 <= lo <= got.win_rate <= hi <= 1.0
    assert [(r["chosen"], r["rejected"]) for r in got.preference_pairs] == [
        ("new", "old"),
        ("old", "new"),
        ("new", "old"),
    ]
    assert got.preference_pairs[0]["messages"] == [{"role": "user", "content": "q0"}]
    with pytest.raises(ValueError, match="pair_1: 'C' is not one of A, B, tie"):
        rv.tally(pairs, {"pair_1": "C"}, "required")


def test_the_form_is_a_typed_run_input_with_one_choice_per_pair():
    from tasks.review import review_form

    form = review_form(rv.review_sheet(samples(3), 3))
    schema = form.model_json_schema()
    assert {"pair_1", "pair_2", "pair_3", "approve", "note"} <= set(schema["properties"])
    assert schema["properties"]["pair_1"]["enum"] == ["A", "B", "tie"]
    assert form(pair_1="B").approve is False  # approving is an act, never a default
    with pytest.raises(ValueError):
        form(pair_1="maybe")


@pytest.mark.parametrize(
    ("mode", "review", "promote", "said"),
    [
        ("off", None, True, None),
        ("required", rv.timed_out("required", 4, 60), False, "nobody answered within 60 s"),
        ("optional", rv.timed_out("optional", 4, 60), True, "the numbers decided"),
        (
            "required",
            rv.Review("answered", "required", 2, approve=False, wins=2, win_rate=1.0, win_rate_ci=(1, 1)),
            False,
            "reviewer rejected",
        ),
        (
            "required",
            rv.Review("answered", "required", 2, approve=True, wins=2, win_rate=1.0, win_rate_ci=(1, 1)),
            True,
            "reviewer approved: human win rate 1.000",
        ),
    ],
)
def test_the_gate_takes_the_reviewer_into_account(mode, review, promote, said):
    d = decide(report(), GateConfig(human=mode), review)
    assert d.promote is promote
    if said:
        assert any(said in r for r in d.reasons), d.reasons


def test_an_approval_does_not_override_the_numbers_and_a_win_rate_floor_applies():
    approved = rv.Review("answered", "required", 4, approve=True, wins=2, ties=1, losses=1, win_rate=0.625,
                         win_rate_ci=(0.25, 1.0))  # fmt: skip
    assert not decide(report(gain=-0.3), GateConfig(human="required"), approved).promote
    floor = decide(report(), GateConfig(human="required", min_human_win_rate=0.5), approved)
    assert not floor.promote and "human win rate CI lower bound 0.250 <= 0.5" in floor.reasons[-1]
