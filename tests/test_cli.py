"""The command line: user errors are one clear message and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from rrhf_cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_bad_training_row_is_reported_by_row_and_column(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "set.jsonl"
    data.write_text(
        json.dumps(
            {
                "prompt_id": "x",
                "messages": [{"role": "user", "content": "q"}],
                "responses": ["a", "b"],
                "rewards": [1.0],
            }
        )
        + "\n"
    )
    code, out = run(
        capsys,
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert code == 2
    assert "row 0 (prompt_id='x'), column 'rewards': has 1 values for 2 responses" in out
    assert "Traceback" not in out


def test_invalid_settings_are_listed(capsys, tmp_path):
    code, out = run(
        capsys,
        "train",
        "--data",
        "x.parquet",
        "--output-dir",
        str(tmp_path),
        "--learning-rate",
        "-1",
        "--set",
        "lora.rank=4",
    )
    assert code == 2
    assert "learning_rate: Input should be greater than 0" in out
    assert "lora.rank: unknown setting; did you mean 'r'?" not in out  # too far from `r` to be guessed
    assert "lora.rank: unknown setting" in out
    assert "settings of 'lora': enabled, r, alpha, dropout, target_modules, merge_on_save" in out


def test_a_misspelled_key_gets_the_closest_names(capsys):
    code, out = run(capsys, "pipeline", "--set", "trian.seed=1", "--set", "gate.min_reward_gian=0.1")
    assert code == 2
    assert "trian: unknown setting; did you mean 'train'?" in out
    assert "gate.min_reward_gian: unknown setting; did you mean 'min_reward_gain'?" in out
    assert "settings of 'gate': min_reward_gain, min_win_rate" in out
    # under a mapping of named sections the name is not a setting: a reward model named like one changes nothing
    code, out = run(capsys, "pipeline", "--set", "reward_models.lora.backbon=x")
    assert code == 2 and "reward_models.lora.backbon: unknown setting; did you mean 'backbone'?" in out
    assert "settings of 'reward_models.lora': backbone, learning_rate" in out


def test_an_override_that_is_not_valid_yaml_is_named(capsys):
    code, out = run(capsys, "pipeline", "--set", "evaluate.judge=[a")
    assert code == 2 and "the value of 'evaluate.judge' is not valid YAML" in out and "[a, b]" in out
    code, out = run(capsys, "pipeline", "--set", "workdir=runs/a: b: c", "--set", "x=1")
    assert (
        code == 2 and "  x: unknown setting" in out and "  workdir:" not in out
    )  # plain text taken as written


@pytest.mark.parametrize(
    ("model", "needle"),
    [("random:foo", "unknown random shape 'foo'"), ("/nonexistent/model", "the folder does not exist")],
)
def test_the_benchmark_refuses_an_unknown_model_in_one_line(capsys, model, needle):
    code, out = run(capsys, "bench", "train-step", "--model", model, "--ks", "2", "--steps", "1")
    assert code == 2 and needle in out and "Traceback" not in out


@pytest.mark.parametrize("command", ["ingest", "train"])
def test_a_failed_command_leaves_no_empty_output_folder_and_keeps_an_existing_one(capsys, tmp_path, command):
    missing = (
        ["--inputs", str(tmp_path / "none.jsonl")]
        if command == "ingest"
        else ["--data", str(tmp_path / "n.parquet")]
    )
    out = tmp_path / "new" / "out"
    code, text = run(capsys, command, *missing, "--output-dir", str(out))
    assert code == 2 and "does not exist" in text
    assert not (tmp_path / "new").exists()  # the parent it made for the folder too
    kept = tmp_path / "kept"
    kept.mkdir()
    code, _ = run(capsys, command, *missing, "--output-dir", str(kept))
    assert code == 2 and kept.is_dir()


@pytest.mark.parametrize("command", ["pipeline", "retrain"])
def test_the_plan_of_a_round_in_a_new_workdir_runs_nothing_and_makes_nothing(capsys, tmp_path, command):
    work = tmp_path / "w"
    code, out = run(
        capsys, command, "--config", str(ROOT / "configs" / "demo.yaml"), "--workdir", str(work), "--plan"
    )
    assert code == 0, out
    assert out.splitlines()[1].startswith("  precision: ")  # decided as the round would decide it
    lines = [ln.split() for ln in out.splitlines()[1:] if ln.startswith("  ") and ln.split()[0][0].isalpha()]
    lines = [ln for ln in lines if not ln[0].endswith(":")]  # the precision line and notes
    assert [(ln[0], " ".join(ln[1:3])) for ln in lines if not ln[0].startswith("/")][:6] == [
        ("ingest", "run first"),
        ("sample", "after ingest"),
        ("score", "after sample"),
        ("build", "after score"),
        ("train", "after build"),
        ("evaluate", "run every"),
    ]
    assert "sampling from and training embedded:smollm2-135m-instruct" in out  # no champion without a store
    assert not work.exists()


def test_a_pipeline_preset_given_to_a_stage_command_is_named_as_such(capsys):
    code, out = run(capsys, "train", "--config", str(ROOT / "configs" / "demo.yaml"))
    assert code == 2
    assert "configs/demo.yaml is a pipeline configuration" in out and "rrhf pipeline --config" in out
    assert "under `train:`" in out


def test_config_file_and_override_order(capsys, tmp_path, tiny_model_dir, learnable_set):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {tiny_model_dir}\ndata: {learnable_set}\noutput_dir: {tmp_path / 'o'}\n"
        "max_steps: 5\nmax_length: 64\nmax_response_tokens: 16\ndtype: fp32\n"
    )
    code, out = run(
        capsys,
        "train",
        "--config",
        str(cfg),
        "--max-steps",
        "2",
        "--set",
        "micro_batch_size=2",
        "--no-progress",
    )
    assert code == 0, out
    assert "trained 2 steps" in out
    assert (tmp_path / "o" / "model" / "config.json").exists()


def test_missing_config_file(capsys):
    code, out = run(capsys, "train", "--config", "/nonexistent.yaml")
    assert code == 2 and "does not exist" in out


def test_rrhf_core_never_imports_orchestration_or_tracking():
    """flows -> tasks -> rrhf_core, one way: rrhf_core imports neither prefect, mlflow, flows nor tasks."""
    banned = {"prefect", "mlflow", "flows", "tasks", "rrhf_cli"}
    for path in (ROOT / "rrhf_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in banned, f"{path.name} imports {n}"
                if n.split(".")[0] == "vllm":
                    assert path.name == "vllm_backend.py", f"vllm imported outside its backend: {path.name}"


def test_importing_the_core_pulls_in_no_prefect_or_mlflow():
    code = (
        "import sys, rrhf_core.training.trainer, rrhf_core.training.loss, rrhf_core.training.collate, rrhf_core.models; "
        "print(sorted(m for m in ('prefect','mlflow','vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("sub", ["train", "pipeline"])
def test_help_works(sub):
    out = subprocess.run(
        [sys.executable, "-m", "rrhf_cli", sub, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and "usage: rrhf" in out.stdout


def test_the_pipeline_help_lists_every_nested_key_the_named_sections_included(capsys):
    from rrhf_core.pipeline import PipelineConfig
    from rrhf_core.reward_model.config import RMSettings

    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # the epilog is wrapped
    assert "reward_models.NAME: backbone=TEXT (embedded:minilm-l6)" in out
    for name in RMSettings.model_fields:
        if not isinstance(getattr(RMSettings(), name), BaseModel):
            assert f" {name}=" in out.split("reward_models.NAME:")[1], name
    assert "train: on_bad_row=" in out and "gate: min_reward_gain=" in out
    assert {"train", "evaluate", "gate"} <= set(PipelineConfig.model_fields)


def test_ingest_reads_the_embedded_demo_prompts(capsys, tmp_path):
    from rrhf_core.data.contracts import read_prompts

    assert main(["ingest", "--inputs", "embedded:demo-prompts", "--output-dir", str(tmp_path)]) == 0
    assert len(read_prompts(tmp_path / "prompts.parquet")) == 32
    assert main(["ingest", "--inputs", "embedded:nope", "--output-dir", str(tmp_path / "x")]) == 2
    assert "unknown embedded prompt set 'embedded:nope'" in capsys.readouterr().err


def test_the_report_renders_from_stored_summaries(capsys, tmp_path):
    def summary(seed: int, gain: float, lo: float, promoted: bool) -> dict:
        side = {"reward_mean": 0.3, "tokens_mean": 20.0}
        return {
            "evaluation": {
                "prompts": 64,
                "judge": "embedded:constraint-pass",
                "judge_is_training_reward": False,
                "baseline": side,
                "candidate": {**side, "reward_mean": 0.3 + gain},
                "baseline_best_of_k": 0.45,
                "best_of_k": 4,
                "reward_gain": gain,
                "reward_gain_ci": [lo, gain + 0.1],
                "win_rate": 0.6,
                "wins": 20,
                "ties": 40,
                "losses": 4,
            },
            "promotion": {"promoted": promoted},
            "config": {"train": {"seed": seed}},
            "precision": {"sample": "fp32", "train": "fp32", "evaluate": "fp32"},
            "machine": "test machine, 2 cores",
            "seconds": 300.0,
        }

    for seed, (gain, lo, promoted) in enumerate([(0.25, 0.15, True), (0.05, -0.05, False)]):
        (tmp_path / f"run{seed}").mkdir()
        (tmp_path / f"run{seed}" / "last_summary.json").write_text(
            json.dumps(summary(seed, gain, lo, promoted))
        )
    assert main(["report", str(tmp_path / "run0"), str(tmp_path / "run1" / "last_summary.json")]) == 0
    out = capsys.readouterr().out
    assert "| 0 | fp32 | 64 | 0.300 | 0.450 (k=4) | 0.550 | +0.250 [+0.150, +0.350] |" in out
    assert "**not promoted**" in out and "(not the training reward)" in out
    assert "2 run(s): mean gain +0.150 (s.d. 0.141); CI lower bound above 0 in 1; promoted in 1." in out
    assert "Machines: test machine, 2 cores." in out
    assert main(["report", str(tmp_path / "missing")]) == 2

    # a round with reward models: the judge as configured, policy-as-RM accuracy and the RMs' accuracy
    hh = summary(0, 0.2, 0.05, True)
    hh["config"]["evaluate"] = {"judge": "trained:judge"}
    hh["evaluation"]["judge"] = "/somewhere/stages/train-rm-abc/model"
    hh["evaluation"]["baseline"]["preference_accuracy"] = 0.5
    hh["evaluation"]["candidate"]["preference_accuracy"] = 0.55
    hh["evaluation"]["preference_pairs"] = 64
    hh["reward_models"] = {"reward": {"held_out_accuracy": 0.62}, "judge": {"held_out_accuracy": 0.6}}
    (tmp_path / "hh").mkdir()
    (tmp_path / "hh" / "last_summary.json").write_text(json.dumps(hh))
    assert main(["report", str(tmp_path / "hh")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Judge: `trained:judge` (not the training reward)")
    assert "| 0.500 -> 0.550 (64) | reward 0.620, judge 0.600 |" in out

    # two judges: the configured names, and each judge's own gain in a column of its own
    hh["config"]["evaluate"] = {"judge": ["trained:judge", "trained:judge2"]}
    hh["evaluation"]["judges"] = [
        {"spec": "/a", "reward_gain": 0.4, "reward_gain_ci": [0.1, 0.7]},
        {"spec": "/b", "reward_gain": 0.9, "reward_gain_ci": [-0.2, 1.9]},
    ]
    (tmp_path / "hh" / "last_summary.json").write_text(json.dumps(hh))
    assert main(["report", str(tmp_path / "hh")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Judge: `mean of 2 standardised judges: trained:judge, trained:judge2`")
    assert "| each judge's gain [95 % CI] |" in out
    assert "| +0.400 [+0.100, +0.700]; +0.900 [-0.200, +1.900] |" in out

    # the length-controlled gain and an lm-eval benchmark get columns of their own
    lm = summary(0, 0.4, 0.25, True)
    lm["evaluation"] |= {"reward_gain_lc": 0.26, "reward_gain_lc_ci": [0.1, 0.43], "length_ratio": 0.59}
    lm["evaluation"]["benchmarks"] = [
        {"task": "ifeval", "primary": "prompt_level_strict_acc", "metrics": [
            {"name": "prompt_level_strict_acc", "baseline": 0.271, "candidate": 0.812, "difference": 0.541,
             "difference_ci": [0.417, 0.667]}]}
    ]  # fmt: skip
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "last_summary.json").write_text(json.dumps(lm))
    assert main(["report", str(tmp_path / "lm")]) == 0
    out = capsys.readouterr().out
    assert "gain at equal length [95 % CI] | lm-eval ifeval prompt_level_strict_acc" in out
    assert "| +0.260 [+0.100, +0.430] (length ratio 0.59) | 0.271 -> 0.812, +0.541 [+0.417, +0.667] |" in out


def test_repeated_flags_keep_every_value_and_text_flags_are_literal(capsys, tmp_path):
    from rrhf_core.data.contracts import read_prompts

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"prompt": "first question"}) + "\n")
    b.write_text(json.dumps({"prompt": "second question"}) + "\n")
    out = tmp_path / "runs" / "exp #3"
    assert main(["ingest", "--inputs", str(a), "--inputs", str(b), "--output-dir", str(out)]) == 0
    assert len(read_prompts(out / "prompts.parquet")) == 2  # both inputs, into the folder named exactly
    numeric = tmp_path / "2024"
    assert main(["ingest", "--inputs", str(a), "--output-dir", str(numeric), "--eval-share", "0.5"]) == 0
    assert (numeric / "prompts.parquet").exists()


def test_flag_kinds_follow_the_setting_types():
    from rrhf_cli import flag_kind
    from rrhf_core.data.config import BuildConfig, IngestConfig

    assert flag_kind(IngestConfig.model_fields["inputs"].annotation) == "list"
    assert flag_kind(BuildConfig.model_fields["samples"].annotation) == "list"
    assert flag_kind(IngestConfig.model_fields["output_dir"].annotation) == "str"
    assert flag_kind(IngestConfig.model_fields["eval_share"].annotation) == "yaml"


def test_a_list_flag_also_takes_a_yaml_list():
    from rrhf_cli import _config, build_parser
    from rrhf_core.sampling.config import SampleConfig

    for flags, expected in (([("--stop", '["."]')], ["."]), ([("--stop", "."), ("--stop", "!")], [".", "!"])):
        argv = ["sample", "--prompts", "p", "--output-dir", "o", *[x for f in flags for x in f]]
        assert _config(build_parser().parse_args(argv), SampleConfig, "sampling").stop == expected


def test_help_shows_types_choices_and_the_nested_keys():
    from rrhf_cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    train, pipeline, retrain = (sub[n].format_help() for n in ("train", "pipeline", "retrain"))
    assert "VALUE" not in train.replace("KEY=VALUE", "")
    assert "--scheduler {cosine,linear,constant}" in train and "--learning-rate FLOAT" in train
    assert "--dtype {auto,bf16,fp32}" in train and "--max-steps INT" in train
    assert "lora: enabled=BOOL (False), r=INT (16)" in train  # the section a --set reaches
    assert "sample: " in pipeline and "backend={auto,vllm,hf} (auto)" in pipeline
    assert "train.lora" not in pipeline and "lora.enabled=BOOL" in pipeline
    assert "--from-champion" in pipeline and "--from-champion" not in retrain  # retrain always does


def test_rrhf_evaluate_compares_two_models_on_held_out_prompts(capsys, tmp_path, tiny_model_dir):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"say {i}", "split": "eval"}) + "\n" for i in range(3)))
    assert main(["ingest", "--inputs", str(src), "--output-dir", str(tmp_path / "in")]) == 0
    argv = ["evaluate", "--prompts", str(tmp_path / "in" / "prompts.parquet"), "--output-dir", str(tmp_path / "e"),
            "--candidate", str(tiny_model_dir), "--baseline", str(tiny_model_dir), "--reward", "reward_fns:checksum",
            "--max-new-tokens", "4", "--dtype", "fp32"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out prompts: 3" in out and "gain +0.0000" in out  # the same model on both sides
    report = json.loads((tmp_path / "e" / "eval_report.json").read_text())
    assert report["prompts"] == 3 and report["reward_gain"] == 0
    # --judge repeated: an ensemble, each judge printed with its own numbers
    assert main([*argv, "--judge", "reward_fns:checksum", "--judge", "reward_fns:count_a"]) == 0
    out = capsys.readouterr().out
    assert "judge: mean of 2 standardised judges: reward_fns:checksum, reward_fns:count_a" in out
    assert "judge reward_fns:count_a: " in out and "pooled standard deviations" in out
    assert main([*argv, "--judge", "reward_fns:checksum"]) == 0  # one --judge is that judge alone
    assert "judge: reward_fns:checksum  (the training reward itself)" in capsys.readouterr().out


def test_the_ablation_table_renders_from_comparisons_with_the_paired_difference(capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def row(run: int, loss: str, scores: list[float]) -> dict:
        folder = tmp_path / f"run{run}" / "eval" / loss
        folder.mkdir(parents=True)
        table = [{"prompt_id": f"p{i}", "role": "candidate", "judge": s} for i, s in enumerate(scores)]
        table += [{"prompt_id": f"p{i}", "role": "baseline", "judge": 0.0} for i in range(len(scores))]
        pq.write_table(pa.Table.from_pylist(table), folder / "eval_samples.parquet")
        gain = sum(scores) / len(scores)
        return {"loss": loss, "judge": "lm-eval:ifeval", "base": 0.0, "trained": gain, "gain": gain,
                "gain_ci": [gain - 0.1, gain + 0.1], "gain_lc": None, "gain_lc_ci": None, "win_rate": 0.5,
                "length_ratio": 0.8, "tokens_mean": 20.0, "held_out_kind=true gain": 0.25, "seed": run,
                "precision": "fp32", "eval_dir": str(folder)}  # fmt: skip

    # by hand: rrhf minus sft_best per prompt-run: run 0 (1-0, 1-1) = (1, 0), run 1 (0-0, 1-0) = (0, 1): mean 0.5
    for run, (rrhf, sft) in enumerate([([1.0, 1.0], [0.0, 1.0]), ([0.0, 1.0], [0.0, 0.0])]):
        rows = [row(run, "rrhf", rrhf), row(run, "sft_best", sft)]
        (tmp_path / f"run{run}" / "last_comparison.json").write_text(json.dumps(rows))
    assert main(["report", "--comparisons", str(tmp_path / "run0"), str(tmp_path / "run1")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Judge: `lm-eval:ifeval`")
    assert (
        "| rrhf | 0 | fp32 | 0.000 | 1.000 | +1.000 [+0.900, +1.100] | not measurable | 0.500 | 0.80 | 20.0 |"
        in out
    )
    assert "| +0.250 |" in out  # the held-out-kind group's gain
    assert "| rrhf | 2 | +0.750 (0.354) | - |" in out
    assert "| sft_best | 2 | +0.250 (0.354) | +0.500 [" in out and "(4 prompt-runs) |" in out
    assert main(["report", "--comparisons", str(tmp_path / "nothing")]) == 2
