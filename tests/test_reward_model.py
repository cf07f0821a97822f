"""Reward-model training: the Bradley-Terry loss and metrics by hand, preference pairs from every source, and the
trained folder round-tripping into the scoring stage."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rrhf_core.data.contracts import write_listwise
from rrhf_core.data.ingest import ingest
from rrhf_core.errors import ConfigError, DataError
from rrhf_core.reward_model.config import RMTrainConfig
from rrhf_core.reward_model.loss import bradley_terry_loss, calibration_error, pair_outcomes, pearson
from rrhf_core.reward_model.pairs import load_pairs, part_of, read_pairs
from rrhf_core.reward_model.trainer import length_buckets, pair_metrics

SHARED_HH = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "hh-rlhf"
    / "harmless-base-test.dev.jsonl.gz"
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_loss_by_hand():
    rc, rr = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    # differences 1, 0, -3: -log sigmoid(d) = log(1 + e^-d)
    expected = (math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(3))) / 3
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(expected, rel=1e-6)
    # a margin of 0.5 shifts every difference down: the chosen must win by 0.5 to earn the same loss
    with_margin = -(log_sigmoid(0.5) + log_sigmoid(-0.5) + log_sigmoid(-3.5)) / 3
    assert bradley_terry_loss(rc, rr, margin=0.5).item() == pytest.approx(with_margin, rel=1e-6)
    # the gradient pushes the chosen up and the rejected down, by sigmoid(-d) / n
    rc.requires_grad_(True)
    bradley_terry_loss(rc, rr).backward()
    assert rc.grad.tolist() == pytest.approx([-1 / (1 + math.e) / 3, -0.5 / 3, -1 / (1 + math.exp(-3)) / 3])


def test_pair_metrics_by_hand():
    assert pair_outcomes([2.0, 0.0, 1.0], [1.0, 1.0, 1.0]) == [1.0, 0.0, 0.5]
    # a perfectly calibrated reward: differences of 0 (p = 0.5) are coin flips -> error 0 when they enter as (0.5, 1)
    # and (0.5, 0); a confident wrong pair (p ~ 0 for the chosen) is maximally miscalibrated
    assert calibration_error([0.0], [0.0]) == pytest.approx(0.0)
    assert calibration_error([-50.0], [50.0]) == pytest.approx(1.0)
    p = 1 / (1 + math.exp(-1))  # diff 1 -> (0.731, 1) in bin 7 and (0.269, 0) in bin 2: error 1 - p on each
    assert calibration_error([1.0], [0.0]) == pytest.approx(1 - p)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_length_buckets_cover_every_pair_once_with_similar_lengths():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    batches = length_buckets(lengths, 2, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(abs(lengths[b[0]] - lengths[b[-1]]) <= 1 for b in batches)
    assert sorted(i for b in length_buckets(lengths, 3, 0, bucket=False) for i in b) == list(range(8))
    # items counted by their pairs: at most 4 pairs per batch, an item over that alone
    sizes = [2, 2, 2, 1, 1, 5, 2, 2]
    batches = length_buckets(lengths, 4, seed=0, sizes=sizes)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(sum(sizes[i] for i in b) <= 4 or len(b) == 1 for b in batches)
    assert sorted(sorted(b) for b in batches) == [[0, 2], [1, 3], [4, 6], [5], [7]]


def test_pairs_are_grouped_by_prompt_with_each_response_once():
    from rrhf_core.reward_model.pairs import PreferencePair, empty_negatives
    from rrhf_core.reward_model.trainer import group_pairs

    pairs = [PreferencePair("a", [], "good", "bad"), PreferencePair("b", [], "ok", "no"),
             PreferencePair("a", [], "fine", "bad"), PreferencePair("a", [], "good", "fine")]  # fmt: skip
    a, b = group_pairs(pairs + empty_negatives(pairs))
    assert a.responses == ["good", "bad", "fine", ""]  # 4 sequences for 4 pairs, not 8
    assert a.pairs == [(0, 1), (2, 1), (0, 2), (0, 3)]
    assert (b.responses, b.pairs) == (["ok", "no", ""], [(0, 1), (0, 2)])


def hh(q: str, chosen: str, rejected: str) -> dict[str, str]:
    return {
        "chosen": f"\n\nHuman: {q}\n\nAssistant: {chosen}",
        "rejected": f"\n\nHuman: {q}\n\nAssistant: {rejected}",
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hh_prompts(tmp_path: Path, n: int = 24, eval_share: float = 0.25) -> Path:
    """Ingested HH-style records where the chosen answer is polite and the rejected one rude."""
    rows = [hh(f"question {i}?", f"thanks for asking, here is help {i}", f"go away {i}") for i in range(n)]
    rows.append(hh("same?", "identical", "identical"))
    ingest([str(write_jsonl(tmp_path / "hh.jsonl", rows))], tmp_path / "ingest", eval_share=eval_share)
    return tmp_path / "ingest" / "prompts.parquet"


def test_pairs_from_ingested_hh_keep_its_split_and_skip_identical_texts(tmp_path):
    prompts = hh_prompts(tmp_path)
    data = load_pairs([str(prompts)])
    splits = {r["prompt_id"]: r["split"] for r in pq.read_table(prompts).to_pylist()}
    assert all(splits[p.prompt_id] == "train" for p in data.train)
    assert all(splits[p.prompt_id] == "eval" for p in data.eval)
    assert not {p.prompt_id for p in data.train} & {p.prompt_id for p in data.eval}
    assert len(data.train) + len(data.eval) == 24 and data.counts["skipped_identical"] == 1
    assert all(p.chosen.startswith("thanks") and p.rejected.startswith("go away") for p in data.train)


def test_pairs_from_pair_rows_and_listwise_sets(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b"},
        {"messages": [{"role": "user", "content": "q2"}], "chosen": "c", "rejected": "d"},
    ]
    got = read_pairs(write_jsonl(tmp_path / "pairs.jsonl", rows), Counter())
    assert [(p.messages[-1]["content"], p.chosen, p.rejected) for _, p in got] == [
        ("q1", "a", "b"),
        ("q2", "c", "d"),
    ]
    from rrhf_core.data.contracts import ListwiseExample

    lw = write_listwise(
        [
            ListwiseExample(
                "p", [{"role": "user", "content": "q"}], ["x", "y", "z"], [1.0, 0.0, 1.0], ["s"] * 3
            )
        ],
        tmp_path / "train.parquet",
    )
    pairs = {(p.chosen, p.rejected) for _, p in read_pairs(lw, Counter())}
    assert pairs == {("x", "y"), ("z", "y")}  # every ordered pair with distinct rewards; the tie gives none


def test_bad_preference_data_is_named_by_file_row_and_column(tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}],
    )
    with pytest.raises(DataError, match=r"bad.jsonl, row 2, column 'rejected'"):
        read_pairs(bad, Counter())
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match=r"missing\.jsonl"):
        read_pairs(missing, Counter())
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "q"}])
    with pytest.raises(DataError, match="not preference data"):
        read_pairs(other, Counter())


def test_raw_hh_dialogues_are_ingested_on_the_fly(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", [hh(f"q{i}", "kind answer", "rude answer") for i in range(6)])
    got = read_pairs(raw, counts := Counter(), eval_share=0.5)
    assert len(got) == 6 and counts["ingested_inputs"] == 1
    assert {split for split, _ in got} <= {"train", "eval"}
    assert all(
        p.chosen == "kind answer" and p.messages[-1]["content"] == p.messages[-1]["content"] for _, p in got
    )


def test_empty_negatives_add_one_chosen_over_silence_pair_per_prompt():
    from rrhf_core.reward_model.pairs import PreferencePair, empty_negatives

    pairs = [PreferencePair("a", [], "good", "bad"), PreferencePair("a", [], "fine", "bad"),
             PreferencePair("b", [], "ok", "no")]  # fmt: skip
    assert [(p.prompt_id, p.chosen, p.rejected) for p in empty_negatives(pairs)] == [
        ("a", "good", ""),
        ("b", "ok", ""),
    ]


def test_data_parts_are_disjoint_by_prompt_and_cover_the_training_pairs(tmp_path):
    prompts = hh_prompts(tmp_path, n=40)
    whole = load_pairs([str(prompts)])
    a = load_pairs([str(prompts)], data_part=0, data_parts=2)
    b = load_pairs([str(prompts)], data_part=1, data_parts=2)
    ids = lambda s: {p.prompt_id for p in s.train}  # noqa: E731
    assert not ids(a) & ids(b) and ids(a) | ids(b) == ids(whole)
    assert a.eval == b.eval == whole.eval  # the same held-out pairs judge both
    assert all(part_of(p.prompt_id, 2) == 0 for p in a.train)


def tiny_rm_config(tmp_path: Path, prompts: Path, backbone: str, **kw) -> RMTrainConfig:
    settings = {
        "pairs": [str(prompts)],
        "output_dir": str(tmp_path / "rm"),
        "backbone": backbone,
        "learning_rate": 3e-3,
        "epochs": 3,
        "batch_size": 4,
        "max_length": 40,
        "dtype": "fp32",
        "log_every": 1,
        **kw,
    }
    return RMTrainConfig(**settings)


@pytest.mark.integration
def test_a_trained_reward_model_round_trips_into_the_scoring_stage(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rrhf_core.reward_model.trainer import train_reward_model
    from rrhf_core.scoring.config import ScoreConfig
    from rrhf_core.scoring.reward import render_for_reward
    from rrhf_core.scoring.stage import score

    # scoring picks bf16 where a CPU measures it faster, and a loaded machine can measure either way; the comparison
    # by hand below is in fp32
    monkeypatch.setattr("rrhf_core.hardware.bf16_available", lambda device: False)
    prompts = hh_prompts(tmp_path)
    r = train_reward_model(tiny_rm_config(tmp_path, prompts, str(tiny_model_dir)), progress=False)
    report = json.loads((tmp_path / "rm" / "rm_report.json").read_text())
    assert report["eval"]["pairs"] == report["data"]["eval_pairs"] > 0
    assert report["data"]["skipped_identical"] == 1 and report["data"]["empty_negatives"] > 0
    assert report["eval"]["empty_beats_chosen"] == 0.0  # trained with empty negatives: silence never wins
    assert report["eval"]["accuracy"] == 1.0  # polite vs rude is learnable even for a tiny model
    lines = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] > lines[-1]["loss"]

    # the folder is a plain single-logit classifier; the tokenizer carries the training length
    tok = AutoTokenizer.from_pretrained(r.model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(r.model_dir).eval()
    assert model.config.num_labels == 1 and tok.model_max_length == 40

    # the scoring stage, given the folder as --reward, scores exactly what training computed: same rendering,
    # same left truncation (the long prompt below is cut), same head
    eval_pairs = pq.read_table(tmp_path / "rm" / "eval_pairs.parquet").to_pylist()
    pid_of = {r["prompt_id"]: r for r in pq.read_table(prompts).to_pylist()}
    samples = []
    for i, p in enumerate(eval_pairs):
        for side in ("chosen", "rejected"):
            samples.append(
                {
                    "prompt_id": p["prompt_id"],
                    "response_id": f"{i}-{side}",
                    "text": p[side],
                    "source": side,
                    "num_tokens": 1,
                    "finish_reason": "stop",
                    "sampler": "test",
                }
            )
    from rrhf_core.data.contracts import SAMPLES_SCHEMA

    pq.write_table(pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA), tmp_path / "samples.parquet")
    res = score(
        ScoreConfig(
            samples=[str(tmp_path / "samples.parquet")],
            prompts=str(prompts),
            output_dir=str(tmp_path / "s"),
            reward=str(r.model_dir),
            cache_dir=str(tmp_path / "cache"),
        ),
        progress=False,
    )
    scored = {x["response_id"]: x["reward"] for x in pq.read_table(res.scores_path).to_pylist()}
    for i, p in enumerate(eval_pairs):
        assert scored[f"{i}-chosen"] == pytest.approx(p["reward_chosen"], abs=1e-5)
        assert scored[f"{i}-rejected"] == pytest.approx(p["reward_rejected"], abs=1e-5)
        # and by hand: the training-time encoding through the saved weights
        text = render_for_reward(tok, pid_of[p["prompt_id"]]["messages"], p["chosen"])
        tok.truncation_side = "left"
        ids = tok(text, truncation=True, max_length=40, return_tensors="pt")
        assert len(tok(text)["input_ids"]) > 40  # the input was truncated
        with torch.no_grad():
            assert model(**ids).logits[0, 0].item() == pytest.approx(p["reward_chosen"], abs=1e-5)


@pytest.mark.integration
def test_lora_reward_model_saves_a_merged_plain_folder(tmp_path, tiny_model_dir):
    from rrhf_core.reward_model.trainer import train_reward_model
    from rrhf_core.scoring.reward import make_reward

    prompts = hh_prompts(tmp_path)
    cfg = tiny_rm_config(tmp_path, prompts, str(tiny_model_dir), lora={"enabled": True, "r": 4}, epochs=1)
    r = train_reward_model(cfg, progress=False)
    assert not (r.model_dir / "adapter_config.json").exists()
    reward = make_reward(str(r.model_dir))
    assert len(reward.score([[{"role": "user", "content": "q"}]], ["a"])) == 1


def test_a_reward_folder_without_a_single_logit_head_is_a_clear_error(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rrhf_core.scoring.reward import make_reward

    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).save_pretrained(
        tmp_path / "rm3"
    )
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm3")
    with pytest.raises(ConfigError, match="3-label head; a reward model needs a single-logit head"):
        make_reward(str(tmp_path / "rm3"))


def test_held_out_metrics_show_length_preference():
    from rrhf_core.reward_model.pairs import PreferencePair

    pairs = [PreferencePair(f"p{i}", [], "short", "a much longer answer here") for i in range(4)]
    m = pair_metrics([1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], pairs)
    assert m["accuracy"] == 0.75 and m["longer_wins"] == 0.25 and m["longer_is_chosen"] == 0.0
    assert m["length_correlation"] < 0 and m["accuracy_ci"][0] <= 0.75 <= m["accuracy_ci"][1]


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_HH.exists(), reason="needs ../shared/data/hh-rlhf (the shared HH data)")
def test_the_embedded_encoder_trains_on_real_hh_pairs(tmp_path):
    from rrhf_core.reward_model.trainer import train_reward_model

    ingest([str(SHARED_HH)], tmp_path / "ingest", eval_share=0.05)
    cfg = RMTrainConfig(
        pairs=[str(tmp_path / "ingest" / "prompts.parquet")],
        output_dir=str(tmp_path / "rm"),
        max_train_pairs=32,
        batch_size=8,
        max_length=64,
        compare_with=["embedded:minilm-helpfulness"],
    )
    r = train_reward_model(cfg, progress=False)
    assert r.report["eval"]["pairs"] > 50 and "embedded:minilm-helpfulness" in r.report["compare"]
    assert (r.model_dir / "config.json").exists()


def test_precision_is_spelled_dtype_in_every_stage_and_the_old_switch_is_refused_with_the_new_spelling():
    from pydantic import ValidationError

    from rrhf_core.evaluation.config import EvalSettings
    from rrhf_core.reward_model.config import RMSettings
    from rrhf_core.sampling.config import SampleSettings
    from rrhf_core.training.config import TrainSettings

    for cls in (SampleSettings, TrainSettings, RMSettings, EvalSettings):
        assert [cls(dtype=v).dtype for v in ("auto", "bf16", "fp32")] == ["auto", "bf16", "fp32"]
    # `--set bf16=on` arrives as True (YAML 1.1): the message gives the new spelling either way
    for old, new in ((True, "bf16"), ("on", "bf16"), (False, "fp32"), ("off", "fp32"), ("auto", "auto")):
        for cls in (TrainSettings, RMSettings):
            with pytest.raises(ValidationError, match=f"bf16 is spelled dtype now.*is dtype: {new}"):
                cls(bf16=old)


@pytest.mark.parametrize("backbone", ["tiny", "embedded:minilm-l6"])
def test_dropout_setting_turns_every_dropout_of_the_backbone_off(tmp_path, tiny_model_dir, backbone):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rrhf_core.models import resolve_model
    from rrhf_core.reward_model.trainer import set_dropout

    path = str(tiny_model_dir) if backbone == "tiny" else resolve_model(backbone)
    config_kwargs = (
        {"attention_dropout": 0.3} if backbone == "tiny" else {}
    )  # a decoder with attention dropout
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **config_kwargs)
    model.config.pad_token_id = model.config.pad_token_id or 0
    model.train()
    ids = torch.randint(5, 60, (2, 12))
    torch.manual_seed(0)
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout draws differ
    set_dropout(model, 0.0)
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # still training, no dropout
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    saved = model.config.to_dict()
    assert all(
        saved[k] == 0.0
        for k in ("attention_dropout", "hidden_dropout_prob")
        if isinstance(saved.get(k), float)
    )
