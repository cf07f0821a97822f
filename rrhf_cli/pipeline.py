"""``rrhf pipeline`` / ``rrhf retrain``: run the round as a Prefect flow and print what a person wants to know."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rrhf_core.pipeline import PipelineConfig


def run_pipeline(cfg: PipelineConfig, retrain: bool = False) -> int:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    from flows.pipeline import pipeline_flow, retrain_flow
    from rrhf_cli.reaper import guard_temporary_server
    from tasks.tracking import check_prefect_api

    check_prefect_api()
    guard_temporary_server()  # stopped with this command, even after kill -9
    t0 = time.perf_counter()
    summary = (retrain_flow if retrain else pipeline_flow)(cfg)
    work = Path(cfg.workdir).resolve()
    if summary.get("skipped"):
        print()
        print(f"RRHF round skipped after {time.perf_counter() - t0:.0f} s: {summary['skipped']}")
        print(f"  arrivals: {summary['arrivals']}")
        print(f"  files:   {work}/last_summary.json, {work}/arrivals.json (the watermark)")
        return 0
    e, p = summary["evaluation"], summary["promotion"]
    print()
    print(f"RRHF round done in {time.perf_counter() - t0:.0f} s (pipeline time)")
    print_evaluation(e)
    for name, rm in (summary.get("reward_models") or {}).items():
        acc = rm.get("held_out_accuracy")
        print(
            f"  reward model {name!r}: held-out pair accuracy {acc:.3f}" if acc is not None else f"  {name}"
        )
    verdict = (
        "promoted to champion"
        if p["promoted"]
        else "not promoted: the verdict is inconclusive (a judge did not prove itself)"
        if p["decision"].get("verdict") == "inconclusive"
        else "not promoted"
    )
    if summary.get("arrivals"):
        print(f"  arrivals: {summary['arrivals']}")
    print(f"  model version {p['version']} of '{cfg.registered_model}': challenger, {verdict}")
    print(f"    gate: {'; '.join(p['decision']['reasons'])}")
    print()
    print("See this run:")
    print(
        f"  MLflow:  mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1   "
        f"(run {summary['mlflow_run_id']})"
    )
    print(
        f"  Prefect: prefect server start --host 127.0.0.1   then http://127.0.0.1:4200/runs/flow-run/"
        f"{summary['flow_run_id']}"
    )
    print(f"  files:   {work}/stages, {work}/last_summary.json")
    return 0


def run_compare(cfg: PipelineConfig, losses: list[str]) -> int:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows.pipeline import compare_flow
    from rrhf_cli.reaper import guard_temporary_server
    from tasks.tracking import check_prefect_api

    check_prefect_api()
    guard_temporary_server()
    t0 = time.perf_counter()
    rows = compare_flow(cfg, losses)
    print()
    print(f"Training methods compared in {time.perf_counter() - t0:.0f} s; judge: {rows[0]['judge']}")
    from rrhf_cli.report import comparison_columns

    groups, benchmarks = comparison_columns(rows)
    bench = groups + benchmarks
    print(
        f"  {'loss':<10}{'base':>8}{'trained':>9}  {'gain [95 % CI]':<26}{'at equal length [95 % CI]':<27}"
        f"{'win rate':>9}{'tokens':>8}" + "".join(f"  {b}" for b in bench)
    )
    for r in rows:
        ci = f"{r['gain']:+.3f} [{r['gain_ci'][0]:+.3f}, {r['gain_ci'][1]:+.3f}]"
        lc = (
            f"{r['gain_lc']:+.3f} [{r['gain_lc_ci'][0]:+.3f}, {r['gain_lc_ci'][1]:+.3f}]"
            if r.get("gain_lc") is not None and r.get("gain_lc_ci")
            else "n/a (lengths confounded)"
        )
        print(
            f"  {r['loss']:<10}{r['base']:>8.3f}{r['trained']:>9.3f}  {ci:<26}{lc:<27}{r['win_rate']:>9.3f}"
            f"{r['tokens_mean']:>8.1f}"
            + "".join(
                f"  {r[b]:>{len(b)}.3f}" if isinstance(r.get(b), float) else f"  {'n/a':>{len(b)}}"
                for b in bench
            )
        )
    print(f"  table: {Path(cfg.workdir).resolve() / 'last_comparison.json'}")
    return 0


def print_evaluation(e: dict[str, Any]) -> None:
    """What a person wants to know of an evaluation report (``EvalReport.to_dict()``): judge, gain with CI, win rate,
    answer lengths, preference accuracy, best-of-k, the other rewards."""
    judge = e["judge"] + ("  (the training reward itself)" if e["judge_is_training_reward"] else "")
    lo, hi = e["reward_gain_ci"]
    print(f"  held-out prompts: {e['prompts']}   judge: {judge}")
    print(
        f"  judge score: baseline {e['baseline']['reward_mean']:.4f} -> trained {e['candidate']['reward_mean']:.4f}"
        f"  (gain {e['reward_gain']:+.4f}, 95 % CI {lo:+.4f}..{hi:+.4f})"
    )
    if len(e.get("judges") or []) > 1:
        print(
            f"  (gain in pooled standard deviations: the mean of {len(e['judges'])} judges' standardised scores)"
        )
        for j in e["judges"]:
            jlo, jhi = j["reward_gain_ci"]
            print(
                f"    judge {j['spec']}: {j['baseline_mean']:.4f} -> {j['candidate_mean']:.4f} (gain "
                f"{j['reward_gain']:+.4f}, 95 % CI {jlo:+.4f}..{jhi:+.4f}; {j['wins']} W {j['ties']} T {j['losses']} L)"
            )
    wlo, whi = e["win_rate_ci"]
    print(
        f"  win rate (ties half): {e['win_rate']:.3f} (95 % CI {wlo:.3f}..{whi:.3f}; "
        f"{e['wins']} wins, {e['ties']} ties, {e['losses']} losses)"
    )
    if "length_ratio" in e:
        from rrhf_core.evaluation.evaluate import length_controlled_line

        print(f"  length control: {length_controlled_line(e)}")
    for j in e.get("judges") or []:
        if j.get("held_out_accuracy") is not None:
            alo, ahi = j["held_out_accuracy_ci"]
            print(
                f"  judge {j['spec']} on {j['held_out_pairs']} held-out human pairs: accuracy "
                f"{j['held_out_accuracy']:.3f} (95 % CI {alo:.3f}..{ahi:.3f})"
            )
        elif not j.get("rule", True):
            print(f"  judge {j['spec']}: a model with no held-out human pairs to prove itself on")
    for g in e.get("groups") or []:
        glo, ghi = g["gain_ci"]
        print(
            f"  {e['group_by']} = {g['group']} ({g['prompts']} prompts): {g['baseline_mean']:.4f} -> "
            f"{g['candidate_mean']:.4f} (gain {g['gain']:+.4f}, 95 % CI {glo:+.4f}..{ghi:+.4f})"
        )
    if e.get("benchmarks"):
        from rrhf_core.evaluation.benchmarks import summary_line

        for bench in e["benchmarks"]:
            print(f"  lm-eval {summary_line(bench)}")
    b, c = e["baseline"], e["candidate"]
    print(
        f"  answers: {b['tokens_mean']:.1f} -> {c['tokens_mean']:.1f} tokens on average; empty "
        f"{b.get('empty_share', 0.0):.0%} -> {c.get('empty_share', 0.0):.0%}"
    )
    if b.get("preference_accuracy") is not None and c.get("preference_accuracy") is not None:
        clo, chi = c["preference_accuracy_ci"]
        print(
            f"  policy as reward model on {e['preference_pairs']} held-out human pairs: "
            f"{b['preference_accuracy']:.3f} -> {c['preference_accuracy']:.3f} (95 % CI {clo:.3f}..{chi:.3f})"
        )
    if e.get("baseline_best_of_k") is not None:
        print(f"  baseline best-of-{e['best_of_k']} by the judge: {e['baseline_best_of_k']:.4f}")
    for spec, value in e["candidate"]["also"].items():
        print(f"  {spec}: baseline {e['baseline']['also'][spec]:.4f} -> trained {value:.4f}")
    if not e["judge_is_training_reward"]:
        tlo, thi = e["training_reward_gain_ci"]
        print(
            f"  training reward ({e['reward']}): gain {e['training_reward_gain']:+.4f} (95 % CI {tlo:+.4f}..{thi:+.4f})"
        )
    if e.get("gap_recovered") is not None:
        print(
            f"  best-of-n ceiling {e['best_of_n_ceiling']:.4f}: the trained model recovered "
            f"{100 * e['gap_recovered']:.0f} % of the gap from the baseline"
        )


def print_plan(cfg: PipelineConfig) -> int:
    """``rrhf pipeline --plan``: the round's stages, reused or run and why, in this workdir; nothing runs and no stage
    folder or tracking store is made (a champion is looked up only in a store that exists)."""
    from rrhf_core.pipeline import with_precision
    from rrhf_core.plan import plan_round

    cfg, precision = with_precision(cfg)  # as the round decides it: the stage keys depend on it
    work = Path(cfg.workdir).resolve()
    start = cfg.policy
    if cfg.from_champion:
        start = _champion_dir(cfg, work) or cfg.policy
    print(f"Plan of a round in {work} (nothing runs), sampling from and training {start}:")
    print(f"  precision: {precision['round']} ({precision['decided_by']})")
    share = cfg.ingest.eval_share
    if share in (0.0, 1.0):  # allowed where the records carry their own split (the demo's suite does)
        empty = "eval" if share == 0.0 else "train"
        print(
            f"  note: ingest.eval_share {share:g} puts no prompt in the {empty} split by id; only records with their "
            f"own split field can be {empty} prompts, and the round stops after ingest if there are none"
        )
    planned = plan_round(cfg, start, work / "stages")
    stage_w = max(len(p.stage) for p in planned)
    action_w = max(len(p.action) for p in planned)
    for p in planned:
        print(f"  {p.stage:<{stage_w}}  {p.action:<{action_w}}  {p.why}")
        if p.folder:
            print(f"  {'':<{stage_w}}  {'':<{action_w}}  {p.folder}")
    return 0


def _champion_dir(cfg: PipelineConfig, work: Path) -> str | None:
    """The champion's folder, read from the round's tracking store without creating it (no store, no champion: the
    round would start from the policy). A champion registered from outside the workdir is downloaded, as the round
    would download it."""
    import mlflow

    from tasks import registry
    from tasks.tracking import store_uri

    uri = store_uri(work, cfg.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    champ = registry.champion(cfg.registered_model, trusted_root=work)
    return champ["model_dir"] if champ else None
