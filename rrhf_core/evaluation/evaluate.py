"""Evaluation of a candidate policy against a baseline (the current champion, or the base model) on held-out prompts.

Both models answer every held-out prompt (greedy decoding by default, so the comparison is deterministic) and the
reward scores the answers. Reported:

- per model: mean and median reward, mean and median response tokens, share of answers cut at the length limit;
- reward-judged win rate of the candidate: ``(wins + ties / 2) / prompts``, with wins, ties (equal rewards within
  ``tie_margin``) and losses also reported;
- when the prompts carry preference pairs (HH ``dataset:chosen`` / ``dataset:rejected``): the policy-as-reward-model
  accuracy (paper Table 5), the share of pairs where the policy's length-normalised log-likelihood is higher for the
  chosen response;
- when the training set's best-of-n reward is given: that ceiling and the share of the gap ``ceiling - baseline``
  that the candidate recovered.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from rrhf_core.data.contracts import ListwiseExample, atomic_write_parquet, read_prompts
from rrhf_core.errors import ConfigError
from rrhf_core.evaluation.config import EvalConfig
from rrhf_core.sampling.config import SampleSettings, generation_params
from rrhf_core.sampling.hf_backend import HFSampler
from rrhf_core.sampling.stage import render_prompts
from rrhf_core.scoring.reward import RewardBackend, make_reward
from rrhf_core.training.collate import Encoder
from rrhf_core.training.config import TrainSettings
from rrhf_core.training.listwise import encode_examples, evaluate_listwise


@dataclass
class ModelEval:
    model: str
    reward_mean: float
    reward_median: float
    tokens_mean: float
    tokens_median: float
    truncated_share: float
    preference_accuracy: float | None = None


@dataclass
class EvalReport:
    prompts: int
    candidate: ModelEval
    baseline: ModelEval
    wins: int
    ties: int
    losses: int
    win_rate: float
    reward_gain: float
    best_of_n_ceiling: float | None = None
    gap_recovered: float | None = None
    preference_pairs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _answers(
    sampler: HFSampler, rows: list[dict[str, Any]], cfg: EvalConfig
) -> tuple[list[str], list[int], list[str]]:
    texts, _ = render_prompts(rows, sampler.tokenizer, cfg.prompt_format, cfg.max_prompt_tokens)
    answer = SampleSettings(
        k=1, temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed
    )
    params = generation_params(answer, cfg.prompt_format)
    torch.manual_seed(cfg.seed)
    outs = sampler.generate(texts, params)
    return [o[0].text for o in outs], [o[0].num_tokens for o in outs], [o[0].finish_reason for o in outs]


def preference_pairs(rows: list[dict[str, Any]]) -> list[ListwiseExample]:
    """HH-style (chosen, rejected) references as two-response examples with rewards (1, 0)."""
    out = []
    for r in rows:
        refs = {ref["source"]: ref["text"] for ref in r.get("references") or []}
        if (
            "dataset:chosen" in refs
            and "dataset:rejected" in refs
            and refs["dataset:chosen"] != refs["dataset:rejected"]
        ):
            out.append(
                ListwiseExample(
                    r["prompt_id"],
                    r["messages"],
                    [refs["dataset:chosen"], refs["dataset:rejected"]],
                    [1.0, 0.0],
                    ["dataset:chosen", "dataset:rejected"],
                )
            )
    return out


def _preference_accuracy(model: Any, tok: Any, pairs: list[ListwiseExample], cfg: EvalConfig) -> float | None:
    if not pairs:
        return None
    scoring = TrainSettings(
        max_length=cfg.max_prompt_tokens + cfg.max_new_tokens + 1,
        max_response_tokens=cfg.max_new_tokens,
        micro_batch_size=4,
    )
    encoder = Encoder(tok, scoring.max_length, scoring.max_response_tokens, cfg.prompt_format)
    encoded, _, _ = encode_examples(encoder, pairs)
    if not encoded:
        return None
    return evaluate_listwise(model, encoded, scoring, tok.pad_token_id)["ranking_accuracy"]


def _summary(
    model: str, rewards: list[float], tokens: list[int], finish: list[str], acc: float | None
) -> ModelEval:
    return ModelEval(
        model,
        statistics.fmean(rewards),
        statistics.median(rewards),
        statistics.fmean(tokens),
        statistics.median(tokens),
        sum(f == "length" for f in finish) / len(finish),
        acc,
    )


def evaluate(cfg: EvalConfig, reward: RewardBackend | None = None) -> EvalReport:
    """Compare ``cfg.candidate`` with ``cfg.baseline`` on the held-out prompts; writes eval_samples.parquet and
    eval_report.json in ``cfg.output_dir``."""
    rows = read_prompts(cfg.prompts, cfg.split)[: cfg.limit]
    if not rows:
        raise ConfigError(f"{cfg.prompts} has no prompts in split {cfg.split!r} to evaluate on")
    reward = reward or make_reward(cfg.reward)
    messages = [r["messages"] for r in rows]
    pairs = preference_pairs(rows) if cfg.preference_accuracy else []
    results: dict[str, tuple[Any, ...]] = {}
    evals: dict[str, ModelEval] = {}
    for role, model in (("candidate", cfg.candidate), ("baseline", cfg.baseline)):
        sampler = HFSampler(
            model, cfg.cache_dir, batch_size=cfg.batch_size
        )  # one load serves both measurements
        texts, tokens, finish = _answers(sampler, rows, cfg)
        acc = _preference_accuracy(sampler.model, sampler.tokenizer, pairs, cfg)
        sampler.close()
        rewards = reward.score(messages, texts)
        results[role] = (model, texts, rewards, tokens, finish)
        evals[role] = _summary(model, rewards, tokens, finish, acc)
    cand_r, base_r = results["candidate"][2], results["baseline"][2]
    wins = sum(c > b + cfg.tie_margin for c, b in zip(cand_r, base_r, strict=True))
    losses = sum(b > c + cfg.tie_margin for c, b in zip(cand_r, base_r, strict=True))
    ties = len(rows) - wins - losses
    report = EvalReport(
        prompts=len(rows),
        candidate=evals["candidate"],
        baseline=evals["baseline"],
        wins=wins,
        ties=ties,
        losses=losses,
        win_rate=(wins + ties / 2) / len(rows),
        reward_gain=evals["candidate"].reward_mean - evals["baseline"].reward_mean,
        preference_pairs=len(pairs),
    )
    if cfg.best_of_n_ceiling is not None:
        report.best_of_n_ceiling = cfg.best_of_n_ceiling
        gap = cfg.best_of_n_ceiling - evals["baseline"].reward_mean
        report.gap_recovered = report.reward_gain / gap if gap > 0 else None
    write_outputs(Path(cfg.output_dir), rows, results, report)
    return report


def write_outputs(
    out: Path, rows: list[dict[str, Any]], results: dict[str, tuple[Any, ...]], report: EvalReport
) -> None:
    """eval_samples.parquet (every answer with its reward) and eval_report.json."""
    out.mkdir(parents=True, exist_ok=True)
    sample_rows = [
        {
            "prompt_id": r["prompt_id"],
            "role": role,
            "model": m,
            "text": t,
            "reward": rw,
            "num_tokens": n,
            "finish_reason": f,
        }
        for role, (m, texts, rews, toks, fins) in results.items()
        for r, t, rw, n, f in zip(rows, texts, rews, toks, fins, strict=True)
    ]
    atomic_write_parquet(pa.Table.from_pylist(sample_rows), out / "eval_samples.parquet")
    (out / "eval_report.json").write_text(json.dumps(report.to_dict(), indent=2))
