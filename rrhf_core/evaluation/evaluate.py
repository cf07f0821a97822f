"""Evaluation of a candidate policy against a baseline (the current champion, or the base model) on held-out prompts.

Both models answer every held-out prompt (greedy decoding by default, so the comparison is deterministic). A
**judge** scores the answers; it is kept apart from the training **reward** (``judge``: a reward spec; left unset,
the training reward judges and the report says so, since a gain judged by the reward that was optimised can be pure
reward hacking). ``judge`` may name several reward models: the verdict (gain, win rate, gate) is then the mean of
their standardised scores (:func:`~rrhf_core.evaluation.stats.standardised_mean`, in pooled standard deviations), so
it does not hinge on one judge's training draw; each judge's own gain and win rate are reported beside it.
Reported, with paired bootstrap 95 % CIs over prompts (:mod:`rrhf_core.evaluation.stats`):

- per model: the judge's mean and median, the training reward's mean, response length statistics, the share of
  answers cut at the length limit, and the mean of every extra reward in ``also_report`` (e.g. relevance);
- the judge's gain (``reward_gain``, ``reward_gain_ci``) and win rate (ties half; ``win_rate``, ``win_rate_ci``, with
  wins, ties and losses), and the training reward's gain (``training_reward_gain``, ``training_reward_gain_ci``);
- with ``best_of_k``: the baseline's best-of-k judge score (k answers sampled per prompt, the best one judged): the
  ceiling that reranking alone reaches, which RRHF tries to move into greedy decoding;
- when the prompts carry preference pairs (HH ``dataset:chosen`` / ``dataset:rejected``): the policy-as-reward-model
  accuracy (paper Table 5) with its CI;
- when the training set's best-of-n reward is given: that ceiling and the share of ``ceiling - baseline`` (by the
  training reward) that the candidate recovered.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from rrhf_core.data.contracts import ListwiseExample, atomic_write_parquet, read_prompts
from rrhf_core.encoding import Encoder
from rrhf_core.errors import ConfigError
from rrhf_core.evaluation import benchmarks
from rrhf_core.evaluation.config import EvalConfig
from rrhf_core.evaluation.stats import (
    bootstrap_mean_ci,
    gain_ci,
    group_gains,
    judge_scales,
    length_controlled_gain,
    length_matched,
    mean_standardised,
    paired_differences,
    standardised_mean,
    win_rate_ci,
    win_scores,
)
from rrhf_core.reward_model.loss import pair_outcomes
from rrhf_core.sampling.config import SampleSettings, generation_params
from rrhf_core.sampling.hf_backend import HFSampler
from rrhf_core.sampling.shard import render_prompts
from rrhf_core.scoring.embedded import last_user_turn
from rrhf_core.scoring.reward import RewardBackend, make_reward
from rrhf_core.training.config import TrainSettings
from rrhf_core.training.listwise import encode_examples, ranking_agreement

CI = tuple[float, float]


@dataclass
class ModelEval:
    model: str
    reward_mean: float  # the judge's
    reward_median: float
    reward_mean_ci: CI
    training_reward_mean: float
    tokens_mean: float
    tokens_median: float
    truncated_share: float
    empty_share: float  # answers with no visible text: a policy that learned to say nothing
    preference_accuracy: float | None = None
    preference_accuracy_ci: CI | None = None
    also: dict[str, float] = field(default_factory=dict)


@dataclass
class JudgeEval:
    """One judge's verdict, in its own score units."""

    spec: str
    baseline_mean: float
    candidate_mean: float
    reward_gain: float
    reward_gain_ci: CI
    win_rate: float
    wins: int
    ties: int
    losses: int
    is_training_reward: bool
    # a model judge proves itself on the held-out human pairs (chosen above rejected, ties half); a rule needs not
    rule: bool = False
    held_out_pairs: int = 0
    held_out_accuracy: float | None = None
    held_out_accuracy_ci: CI | None = None


@dataclass
class JudgeValidity:
    """A judge's held-out pair accuracy (:func:`judge_validity`)."""

    rule: bool
    pairs: int = 0
    accuracy: float | None = None
    accuracy_ci: CI | None = None


def judge_validity(judge: RewardBackend, pairs: list[ListwiseExample], seed: int) -> JudgeValidity:
    """How often ``judge`` scores the human-chosen answer of a held-out pair above the rejected one (ties half),
    with a 95 % bootstrap CI over pairs. A rule (``judge.rule``) is not asked; a model without pairs gets none."""
    if getattr(judge, "rule", False):
        return JudgeValidity(True)
    if not pairs:
        return JudgeValidity(False)
    scores = judge.score(  # one call: chosen answers, then rejected ones
        [p.messages for p in pairs] * 2, [p.responses[0] for p in pairs] + [p.responses[1] for p in pairs]
    )
    outcomes = pair_outcomes(scores[: len(pairs)], scores[len(pairs) :])
    return JudgeValidity(
        False, len(pairs), statistics.fmean(outcomes), bootstrap_mean_ci(outcomes, seed=seed)
    )


def judge_eval(
    spec: str,
    cand: list[float],
    base: list[float],
    cfg: EvalConfig,
    validity: JudgeValidity | None = None,
) -> JudgeEval:
    scores = win_scores(cand, base, cfg.tie_margin)
    wins, losses = scores.count(1.0), scores.count(0.0)
    v = validity or JudgeValidity(False)
    return JudgeEval(
        spec,
        statistics.fmean(base),
        statistics.fmean(cand),
        statistics.fmean(cand) - statistics.fmean(base),
        gain_ci(cand, base, seed=cfg.seed),
        statistics.fmean(scores),
        wins,
        len(scores) - wins - losses,
        losses,
        spec == cfg.reward,
        v.rule,
        v.pairs,
        v.accuracy,
        v.accuracy_ci,
    )


@dataclass
class EvalReport:
    prompts: int
    judge: str  # the judge's spec, or "mean of N standardised judges: spec, spec"
    reward: str
    judge_is_training_reward: bool
    candidate: ModelEval
    baseline: ModelEval
    wins: int
    ties: int
    losses: int
    win_rate: float
    win_rate_ci: CI
    reward_gain: float  # by the judge
    reward_gain_ci: CI
    training_reward_gain: float
    training_reward_gain_ci: CI
    best_of_k: int = 0
    baseline_best_of_k: float | None = None
    best_of_n_ceiling: float | None = None
    gap_recovered: float | None = None
    preference_pairs: int = 0
    judges: list[JudgeEval] = field(default_factory=list)  # each judge's own verdict
    judge_scale: str = "judge score"  # or "pooled s.d." (an ensemble's standardised mean)
    # length control (rrhf_core.evaluation.stats): candidate / baseline mean answer tokens; the gain at equal length
    # (per-prompt score difference regressed on token difference, the intercept); the win rate over the prompts
    # whose two answers are about as long (None: no such prompt, or length and model cannot be told apart)
    length_ratio: float = 1.0
    reward_gain_lc: float | None = None
    reward_gain_lc_ci: CI | None = None
    length_matched_prompts: int = 0
    win_rate_lc: float | None = None
    win_rate_lc_ci: CI | None = None
    # lm-eval benchmarks (rrhf_core.evaluation.benchmarks.BenchmarkResult.to_dict()), in evaluate.benchmarks order
    benchmarks: list[dict[str, Any]] = field(default_factory=list)
    # the verdict's gain per value of the prompts' meta[evaluate.group_by] (stats.group_gains), when set
    group_by: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answers:
    texts: list[str]
    tokens: list[int]
    finish: list[str]


def _generate(
    sampler: HFSampler,
    texts: list[str],
    answer: SampleSettings,
    cfg: EvalConfig,
    batch_size: int | None = None,
) -> list[Any]:
    torch.manual_seed(answer.seed)
    return sampler.generate(texts, generation_params(answer, cfg.prompt_format), batch_size)


def _answers(sampler: HFSampler, prompt_texts: list[str], cfg: EvalConfig) -> Answers:
    greedy = SampleSettings(
        k=1, temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed
    )
    outs = _generate(sampler, prompt_texts, greedy, cfg)
    return Answers(
        [o[0].text for o in outs], [o[0].num_tokens for o in outs], [o[0].finish_reason for o in outs]
    )


def _sample_k(sampler: HFSampler, prompt_texts: list[str], cfg: EvalConfig) -> list[list[str]]:
    """Per prompt, ``best_of_k`` sampled answers (the baseline's best-of-k)."""
    sampled = SampleSettings(
        k=cfg.best_of_k,
        temperature=cfg.best_of_k_temperature,
        top_p=0.95,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
    )
    # batch_size counts answers per call here too: 64 held-out prompts x 4, fp32, 2-core CPU, side by side in one
    # ad hoc run: 96-99 s at 64 answers per call, 138 s at 256 (the pipeline's evaluation stage did not show it)
    outs = _generate(sampler, prompt_texts, sampled, cfg, max(1, cfg.batch_size // cfg.best_of_k))
    return [[c.text for c in group] for group in outs]


def _best_of_k(
    outs: list[list[str]], messages: list[Any], judges: list[RewardBackend]
) -> list[list[list[float]]]:
    """Per judge and prompt, the judge's scores of the sampled answers ``outs`` (:func:`best_per_prompt` picks)."""
    flat_msgs = [m for m, group in zip(messages, outs, strict=True) for _ in group]
    texts = [t for group in outs for t in group]
    per_judge = []
    for judge in judges:
        scores, i, grouped = judge.score(flat_msgs, texts), 0, []
        for group in outs:
            grouped.append(scores[i : i + len(group)])
            i += len(group)
        per_judge.append(grouped)
    return per_judge


def best_per_prompt(
    per_judge: list[list[list[float]]], scales: list[tuple[float, float]] | None
) -> list[float]:
    """Per prompt, the best sampled answer's score: the one judge's, or (``scales``: each judge's mean and s.d. of
    the greedy answers) the judges' standardised mean, on the verdict's scale."""
    if scales is None:
        (only,) = per_judge
        return [max(s) if s else float("-inf") for s in only]
    best = []
    for p in range(len(per_judge[0])):
        mean = mean_standardised([judge[p] for judge in per_judge], scales)
        best.append(max(mean) if mean else float("-inf"))
    return best


def preference_pairs(rows: list[dict[str, Any]]) -> list[ListwiseExample]:
    """HH-style (chosen, rejected) references as two-response examples with rewards (1, 0)."""
    out = []
    for r in rows:
        refs = {ref["source"]: ref["text"] for ref in r.get("references") or []}
        chosen, rejected = refs.get("dataset:chosen"), refs.get("dataset:rejected")
        if chosen and rejected and chosen != rejected:
            out.append(
                ListwiseExample(
                    r["prompt_id"],
                    r["messages"],
                    [chosen, rejected],
                    [1.0, 0.0],
                    ["dataset:chosen", "dataset:rejected"],
                )
            )
    return out


def _preference_accuracy(
    model: Any, tok: Any, pairs: list[ListwiseExample], cfg: EvalConfig
) -> tuple[float | None, CI | None]:
    """Share of pairs where the policy's length-normalised log-likelihood prefers the chosen response, with CI."""
    if not pairs:
        return None, None
    scoring = TrainSettings(
        max_length=cfg.max_prompt_tokens + cfg.max_new_tokens + 1,
        max_response_tokens=cfg.max_new_tokens,
        micro_batch_size=cfg.batch_size,
        dtype=cfg.dtype,
    )
    encoder = Encoder(tok, scoring.max_length, scoring.max_response_tokens, cfg.prompt_format)
    encoded, _, _ = encode_examples(encoder, pairs)
    if not encoded:
        return None, None
    agree = [a for a in ranking_agreement(model, encoded, scoring, tok.pad_token_id) if not math.isnan(a)]
    if not agree:
        return None, None
    return statistics.fmean(agree), bootstrap_mean_ci(agree, seed=cfg.seed)


@dataclass
class Side:
    """One model's answers and every score of them."""

    model: str
    answers: Answers
    judged: list[float]  # the verdict's scores: the judge's, or the judges' standardised mean
    rewarded: list[float]
    also: dict[str, list[float]]
    acc: tuple[float | None, CI | None]
    # each judge's scores, in cfg.judge_specs() order
    by_judge: list[list[float]] = field(default_factory=list)

    def summary(self, seed: int) -> ModelEval:
        a = self.answers
        return ModelEval(
            self.model,
            statistics.fmean(self.judged),
            statistics.median(self.judged),
            bootstrap_mean_ci(self.judged, seed=seed),
            statistics.fmean(self.rewarded),
            statistics.fmean(a.tokens),
            statistics.median(a.tokens),
            sum(f == "length" for f in a.finish) / len(a.finish),
            sum(not t.strip() for t in a.texts) / len(a.texts),
            self.acc[0],
            self.acc[1],
            {spec: statistics.fmean(v) for spec, v in self.also.items()},
        )


def evaluate(
    cfg: EvalConfig,
    reward: RewardBackend | None = None,
    judge: RewardBackend | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> EvalReport:
    """Compare ``cfg.candidate`` with ``cfg.baseline`` on the held-out prompts; writes eval_samples.parquet and
    eval_report.json in ``cfg.output_dir``. ``log`` receives a line as each step starts (progress)."""
    held_out = read_prompts(cfg.prompts, cfg.split)
    rows = held_out[: cfg.limit]
    if not rows:
        raise ConfigError(f"{cfg.prompts} has no prompts in split {cfg.split!r} to evaluate on")
    specs = cfg.judge_specs()
    if judge is not None and len(specs) > 1:
        raise ConfigError(f"a judge backend was passed but judge names {len(specs)} judges; pass none")
    reward = reward or make_reward(cfg.reward)
    judges = [judge] if judge is not None else [reward if s == cfg.reward else make_reward(s) for s in specs]
    extra = {spec: make_reward(spec) for spec in cfg.also_report}
    messages = [r["messages"] for r in rows]
    pair_rows = rows if cfg.preference_limit is None else held_out[: cfg.preference_limit]
    pairs = preference_pairs(pair_rows) if cfg.preference_accuracy else []
    # every held-out human pair tests the judges (scoring is cheap next to answering)
    judge_pairs = preference_pairs(held_out)
    if any(not getattr(j, "rule", False) for j in judges):
        log(f"evaluate: the model judges rank {len(judge_pairs)} held-out human preference pairs")
    validity = [judge_validity(j, judge_pairs, cfg.seed) for j in judges]
    bench_dir = Path(cfg.output_dir) / "benchmarks"
    prepared = (
        benchmarks.prepare(cfg.benchmarks, [last_user_turn(m) for m in messages], bench_dir)
        if cfg.benchmarks
        else []
    )
    bench_runs: dict[str, list[Any]] = {}
    sides: dict[str, Side] = {}
    best_of_k: list[list[list[float]]] | None = None
    for role, model in (("candidate", cfg.candidate), ("baseline", cfg.baseline)):
        sampler = HFSampler(
            model, cfg.cache_dir, dtype=cfg.dtype, batch_size=cfg.batch_size
        )  # one load serves all
        texts, _ = render_prompts(rows, sampler.tokenizer, cfg.prompt_format, cfg.max_prompt_tokens)
        answers, acc, sampled = _model_side(role, model, sampler, texts, pairs, cfg, log)
        if sampled:
            best_of_k = _best_of_k(sampled, messages, judges)
        bench_runs[role] = []
        for p in prepared:
            log(f"evaluate: {role} runs lm-eval's {p.bench.task} ({p.data})")
            chat = cfg.prompt_format == "chat"
            bench_runs[role].append(benchmarks.run(p, sampler.model, sampler.tokenizer, chat, cfg.seed))
        sampler.close()
        log(
            f"evaluate: scoring the {role}'s answers ({len(judges)} judge(s), training reward, {len(extra)} more)"
        )
        by_judge = [j.score(messages, answers.texts) for j in judges]
        rewarded = next((s for j, s in zip(judges, by_judge, strict=True) if j is reward), None)
        if rewarded is None:  # no judge is the training reward itself
            rewarded = reward.score(messages, answers.texts)
        also = {spec: r.score(messages, answers.texts) for spec, r in extra.items()}
        sides[role] = Side(model, answers, by_judge[0], rewarded, also, acc, by_judge)
    log(f"evaluate: judging with {', '.join(specs)}")
    scales = combine_judges(sides["candidate"], sides["baseline"])
    best = best_per_prompt(best_of_k, scales) if best_of_k else None
    report = compare(sides["candidate"], sides["baseline"], cfg, len(pairs), best, validity)
    report.benchmarks = [
        benchmarks.compare_runs(p, c, b, cfg.seed, bench_dir).to_dict()
        for p, c, b in zip(prepared, bench_runs["candidate"], bench_runs["baseline"], strict=True)
    ]
    if cfg.group_by:
        report.group_by = cfg.group_by
        report.groups = group_gains(
            [group_label(r, cfg.group_by) for r in rows],
            sides["candidate"].judged,
            sides["baseline"].judged,
            seed=cfg.seed,
        )
    write_outputs(Path(cfg.output_dir), rows, sides, report)
    return report


def _model_side(
    role: str,
    model: str,
    sampler: HFSampler,
    texts: list[str],
    pairs: list[ListwiseExample],
    cfg: EvalConfig,
    log: Callable[[str], None],
) -> tuple[Answers, tuple[float | None, CI | None], list[list[str]]]:
    """One model's greedy answers, its preference accuracy and (the baseline, with ``best_of_k``) its k samples per
    prompt; the baseline's are reused from ``cfg.reuse_dir`` when the same work was done before."""
    kept = BaselineStore(cfg, texts, pairs) if role == "baseline" and cfg.reuse_dir else None
    stored = kept.load() if kept else None
    if kept is not None and stored is not None:
        log(f"evaluate: the baseline's answers are reused ({kept.path}: same model, prompts and settings)")
        return stored
    log(f"evaluate: {role} ({model}) answers {len(texts)} held-out prompts")
    answers = _answers(sampler, texts, cfg)
    if pairs:
        log(f"evaluate: {role} ranks {len(pairs)} held-out preference pairs by its likelihood")
    acc = _preference_accuracy(sampler.model, sampler.tokenizer, pairs, cfg)
    sampled = []
    if role == "baseline" and cfg.best_of_k:
        log(f"evaluate: baseline best-of-{cfg.best_of_k} on {len(texts)} prompts")
        sampled = _sample_k(sampler, texts, cfg)
    if kept:
        kept.save(answers, acc, sampled)
    return answers, acc, sampled


def group_label(row: dict[str, Any], key: str) -> str:
    """The prompt's ``meta[key]`` as a label (``"(none)"`` where the prompt's meta lacks it)."""
    try:
        meta = json.loads(row.get("meta") or "{}")
    except ValueError:
        meta = {}
    value = meta.get(key) if isinstance(meta, dict) else None
    return "(none)" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


class BaselineStore:
    """The baseline's generations (greedy answers, best-of-k samples, preference accuracy) kept in
    ``cfg.reuse_dir`` under a key of everything they depend on: the baseline's weights (:func:`model_fingerprint`),
    the rendered prompts, the generation settings, the preference pairs, the code of this stage and the torch build
    and device. Every RRHF round, and every loss of ``rrhf compare``, judges against the same base policy on the same
    prompts: the work is done once per workdir. Scores are always recomputed (judges can change; scoring is cheap)."""

    def __init__(self, cfg: EvalConfig, texts: list[str], pairs: list[ListwiseExample]) -> None:
        import platform

        from rrhf_core.digest import code_digest, digest_json, model_fingerprint

        settings = (
            "max_new_tokens",
            "temperature",
            "seed",
            "batch_size",
            "best_of_k",
            "best_of_k_temperature",
        )
        key = digest_json(
            {
                "model": model_fingerprint(cfg.baseline),
                "prompts": texts,
                "settings": {k: getattr(cfg, k) for k in settings},
                "dtype": cfg.dtype,
                "pairs": [(p.prompt_id, p.responses) for p in pairs],
                "code": code_digest(__name__),
                "torch": [torch.__version__, platform.machine(), torch.cuda.is_available()],
            }
        )
        self.path = Path(str(cfg.reuse_dir)) / f"baseline-{key[:20]}.json"

    def load(self) -> tuple[Answers, tuple[float | None, CI | None], list[list[str]]] | None:
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
            answers = Answers(list(d["texts"]), list(d["tokens"]), list(d["finish"]))
            ci: CI | None = tuple(d["accuracy_ci"]) if d["accuracy_ci"] else None
            return answers, (d["accuracy"], ci), [list(g) for g in d["sampled"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or unreadable: generate again (and overwrite it)

    def save(self, answers: Answers, acc: tuple[float | None, CI | None], sampled: list[list[str]]) -> None:
        from rrhf_core.data.contracts import atomic_write_text

        record = {
            "texts": answers.texts,
            "tokens": answers.tokens,
            "finish": answers.finish,
            "accuracy": acc[0],
            "accuracy_ci": list(acc[1]) if acc[1] else None,
            "sampled": sampled,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(record))
        except OSError:
            pass  # keeping them is an optimisation: a read-only or full disk only costs the next run the work


def combine_judges(cand: Side, base: Side) -> list[tuple[float, float]] | None:
    """With several judges, both sides' verdict scores (``judged``) become the judges' standardised mean; returns
    each judge's (mean, s.d.) for best-of-k to pick on the same scale. One judge: nothing changes, None."""
    if len(cand.by_judge) < 2:
        return None
    pairs = list(zip(cand.by_judge, base.by_judge, strict=True))
    cand.judged, base.judged = standardised_mean(pairs)
    return judge_scales(pairs)


def compare(
    cand: Side,
    base: Side,
    cfg: EvalConfig,
    n_pairs: int,
    best_of_k: list[float] | None,
    validity: list[JudgeValidity] | None = None,
) -> EvalReport:
    """The report's numbers from both sides' verdict scores, each judge's own scores and held-out accuracy, and the
    baseline's best-of-k scores per prompt (a pure function)."""
    specs = cfg.judge_specs()
    validity = validity or [JudgeValidity(False)] * len(specs)
    judges = [
        judge_eval(spec, c, b, cfg, v)
        for spec, c, b, v in zip(specs, cand.by_judge, base.by_judge, validity, strict=True)
    ]
    label = specs[0] if len(specs) == 1 else f"mean of {len(specs)} standardised judges: {', '.join(specs)}"
    verdict = judge_eval(label, cand.judged, base.judged, cfg)
    base_eval, cand_eval = base.summary(cfg.seed), cand.summary(cfg.seed)
    report = EvalReport(
        prompts=len(cand.judged),
        judge=label,
        reward=cfg.reward,
        judge_is_training_reward=cfg.reward in specs,
        candidate=cand_eval,
        baseline=base_eval,
        wins=verdict.wins,
        ties=verdict.ties,
        losses=verdict.losses,
        win_rate=verdict.win_rate,
        win_rate_ci=win_rate_ci(cand.judged, base.judged, cfg.tie_margin, seed=cfg.seed),
        reward_gain=verdict.reward_gain,
        reward_gain_ci=verdict.reward_gain_ci,
        training_reward_gain=cand_eval.training_reward_mean - base_eval.training_reward_mean,
        training_reward_gain_ci=gain_ci(cand.rewarded, base.rewarded, seed=cfg.seed),
        best_of_k=cfg.best_of_k,
        baseline_best_of_k=statistics.fmean(best_of_k) if best_of_k else None,
        preference_pairs=n_pairs,
        judges=judges,
        judge_scale="judge score" if len(specs) == 1 else "pooled s.d.",
    )
    length_control(report, cand, base, cfg)
    if cfg.best_of_n_ceiling is not None:
        report.best_of_n_ceiling = cfg.best_of_n_ceiling
        gap = cfg.best_of_n_ceiling - base_eval.training_reward_mean
        report.gap_recovered = report.training_reward_gain / gap if gap > 0 else None
    return report


def length_control(report: EvalReport, cand: Side, base: Side, cfg: EvalConfig) -> None:
    """Fill the report's length-controlled figures: the gain at equal length (regression; it uses every prompt and
    keeps the judge's score scale) and the win rate over length-matched prompts (a win indicator carries no size to
    regress: a judge that pays for brevity and a policy that is always shorter win every prompt, so only pairs of
    about equal length say what the judge prefers apart from length)."""
    ct, bt = cand.answers.tokens, base.answers.tokens
    report.length_ratio = statistics.fmean(ct) / max(statistics.fmean(bt), 1e-9)
    report.reward_gain_lc, report.reward_gain_lc_ci = length_controlled_gain(
        paired_differences(cand.judged, base.judged),
        [c - b for c, b in zip(ct, bt, strict=True)],
        seed=cfg.seed,
    )
    matched = length_matched(ct, bt)
    report.length_matched_prompts = len(matched)
    if matched:
        wins = win_scores(
            [cand.judged[i] for i in matched], [base.judged[i] for i in matched], cfg.tie_margin
        )
        report.win_rate_lc = statistics.fmean(wins)
        report.win_rate_lc_ci = bootstrap_mean_ci(wins, seed=cfg.seed)


def length_controlled_line(report: dict[str, Any]) -> str:
    """The length-controlled figures in words, for the evaluation artifact."""
    lc, ci = report.get("reward_gain_lc"), report.get("reward_gain_lc_ci")
    gain = (
        f"gain at equal length {lc:+.4f} (95 % CI {ci[0]:+.4f}..{ci[1]:+.4f})"
        if lc is not None and ci
        else "gain at equal length not measurable"
    )
    win = report.get("win_rate_lc")
    matched = (
        f"win rate {win:.3f} on {report['length_matched_prompts']} length-matched prompts"
        if win is not None
        else "no length-matched prompts"
    )
    return f"length ratio {report.get('length_ratio', 1.0):.2f}, {gain}, {matched}"


def write_outputs(out: Path, rows: list[dict[str, Any]], sides: dict[str, Side], report: EvalReport) -> None:
    """eval_samples.parquet (per prompt and model: prompt, answer, judge score, training reward; with several judges
    ``judge`` is their standardised mean and ``judge_0``, ``judge_1``, ... each judge's score, in the order of
    ``report.judges``) and the report."""
    out.mkdir(parents=True, exist_ok=True)
    several = len(report.judges) > 1
    table = [
        {
            "prompt_id": r["prompt_id"],
            "prompt": r["messages"][-1]["content"],
            "role": role,
            "model": side.model,
            "text": t,
            "judge": j,
            "reward": rw,
            "num_tokens": n,
            "finish_reason": f,
            **({f"judge_{i}": s for i, s in enumerate(each)} if several else {}),
        }
        for role, side in sides.items()
        for r, t, j, rw, n, f, each in zip(
            rows,
            side.answers.texts,
            side.judged,
            side.rewarded,
            side.answers.tokens,
            side.answers.finish,
            list(zip(*side.by_judge, strict=True)),
            strict=True,
        )
    ]
    atomic_write_parquet(pa.Table.from_pylist(table), out / "eval_samples.parquet")
    (out / "eval_report.json").write_text(json.dumps(report.to_dict(), indent=2))
