"""The ``rrhf`` command line: one subcommand per pipeline stage.

User errors (bad data, bad configuration, missing packages) print a message and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rrhf_core import redaction
from rrhf_core.errors import ConfigError, RRHFError


def flag_kind(annotation: Any) -> str:
    """How a flag's value is read: ``list`` (the flag repeats), ``str`` (taken literally) or ``yaml`` (numbers,
    booleans, null)."""
    origin, parts = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list or any(typing.get_origin(a) is list for a in parts):
        return "list"
    if annotation is str or (parts and set(parts) <= {str, type(None)}):
        return "str"
    return "yaml"


def metavar(annotation: Any) -> str:
    """What a flag takes, for help: the choices of a Literal (``{cosine,linear,constant}``), else the type (``INT``,
    ``FLOAT``, ``BOOL``, ``TEXT``, ``MAPPING``); an optional setting shows its type (``null`` unsets it)."""
    origin, parts = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "{" + ",".join(str(p) for p in parts) + "}"
    if origin is list:
        return metavar(parts[0]) if parts else "TEXT"
    if origin is dict:
        return "MAPPING"
    if parts:  # a union: X | None, list[str] | Literal[...]
        shown = [metavar(p) for p in parts if p is not type(None)]
        return shown[0] if len(shown) == 1 else "|".join(shown)
    names = {bool: "BOOL", int: "INT", float: "FLOAT", str: "TEXT"}
    return names.get(annotation, "VALUE")


def _default_text(f: Any) -> str:
    return "required" if f.is_required() else f"default: {f.get_default(call_default_factory=True)}"


def _add_config_flags(parser: argparse.ArgumentParser, cls: Any, skip: tuple[str, ...] = ()) -> None:
    """A ``--kebab-name`` flag for every top-level field of a pydantic config that is not a section, help from its
    description; the metavar shows the type or choices. List settings take the flag once per value
    (``--inputs a --inputs b``); text settings take the value literally (``--output-dir "runs/exp #3"``)."""
    for name, f in cls.model_fields.items():
        if name in skip or isinstance(f.get_default(call_default_factory=True), BaseModel):
            continue  # nested sections: set them with --set section.key=value (listed in the epilog)
        kind = flag_kind(f.annotation)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"cfg__{name}",
            metavar=metavar(f.annotation),
            action="append" if kind == "list" else "store",
            help=f"{f.description or ''} ({_default_text(f)}{'; repeat for several' if kind == 'list' else ''})".replace(
                "%", "%%"
            ),
        )


def _section_keys(section: BaseModel, prefix: str = "") -> list[str]:
    keys = []
    for k, sf in type(section).model_fields.items():
        value = getattr(section, k)
        if isinstance(value, BaseModel):
            keys.extend(_section_keys(value, f"{prefix}{k}."))
        elif not sf.is_required():
            keys.append(f"{prefix}{k}={metavar(sf.annotation)} ({value})")
    return keys


def _named_sections_model(annotation: Any) -> Any:
    """The settings model of a ``dict[str, Model]`` field (named sections), else None."""
    if typing.get_origin(annotation) is dict:
        value = typing.get_args(annotation)[1:]
        if value and isinstance(value[0], type) and issubclass(value[0], BaseModel):
            return value[0]
    return None


def nested_keys(cls: Any) -> str:
    """The ``--set`` keys of a config's sections, one paragraph per section: ``key=TYPE (default)``."""
    import textwrap

    out = []
    for name, f in cls.model_fields.items():
        section = f.get_default(call_default_factory=True)
        named = _named_sections_model(f.annotation)
        if named is not None:  # a mapping of named sections (reward_models: NAME: settings)
            section, name = named(), f"{name}.NAME"
        if not isinstance(section, BaseModel):
            continue
        keys = ", ".join(_section_keys(section))
        out.append(
            textwrap.fill(
                f"{name}: {keys}",
                width=110,
                initial_indent="  ",
                subsequent_indent="      ",
                break_on_hyphens=False,
            )
        )
    if not out:
        return ""
    return "settings of the sections, given as --set SECTION.KEY=VALUE (type, default):\n" + "\n".join(out)


def _list_items(value: str) -> list[Any]:
    """One repeated list flag's value: itself, or the items of a YAML/JSON list (``--stop '["."]'``)."""
    import yaml

    if value.lstrip().startswith("["):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return [value]
        if isinstance(parsed, list):
            return parsed
    return [value]


def _pipeline_sections() -> list[str]:
    """The sections of a round's configuration (one settings model each: ingest ... evaluate, gate)."""
    from rrhf_core.pipeline import PipelineConfig

    return [
        name
        for name, f in PipelineConfig.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    ]


def _refuse_a_pipeline_file(args: argparse.Namespace, cls: Any, data: dict[str, Any]) -> None:
    """A stage command given a pipeline preset (sections per stage) says so, instead of listing unknown keys."""
    sections = [
        k for k in _pipeline_sections() if isinstance(data.get(k), dict) and k not in cls.model_fields
    ]
    if len(sections) < 2:
        return
    from rrhf_core.stages import stage

    own = stage(args.command).section
    raise ConfigError(
        f"{args.config} is a pipeline configuration (sections {', '.join(sections)}): run it with "
        f"`rrhf pipeline --config {args.config}`. `rrhf {args.command}` reads a file of its own settings at the top "
        f"level (in a pipeline file they sit under `{own}:`; `rrhf {args.command} --help` lists them)"
    )


def _config(args: argparse.Namespace, cls: Any, where: str) -> Any:
    """Settings from --config FILE, then flags, then --set key=value, validated by the stage's config model."""
    import yaml

    from rrhf_core.config import build_config, load_yaml

    data = load_yaml(args.config) if args.config else {}
    _refuse_a_pipeline_file(args, cls, data)
    for key, value in vars(args).items():
        if not key.startswith("cfg__") or value is None:
            continue
        name = key[5:]
        kind = flag_kind(cls.model_fields[name].annotation)
        if kind == "list":
            data[name] = [item for v in value for item in _list_items(v)]
        else:
            data[name] = value if kind == "str" else (yaml.safe_load(value) if value else "")
    cfg = build_config(cls, data, list(args.set or []), where)
    out = getattr(cfg, "output_dir", None)
    if out and not Path(out).exists():
        made = Path(out).absolute()
        top = made
        while not top.parent.exists():
            top = top.parent
        args.new_output_dir = (made, top)  # a failed command takes away what it made, if it stayed empty
    held = getattr(args, "held", None)  # set by main while a command runs
    if held is not None and out and args.command in STAGE_COMMANDS and getattr(cfg, "nnodes", 1) == 1:
        # one command at a time writes a stage's folder (the machines of a multi-machine training share theirs)
        from rrhf_core.workdir import workdir_lock

        held.enter_context(workdir_lock(out, f"rrhf {args.command}"))
    return cfg


def cmd_ingest(args: argparse.Namespace) -> int:
    from rrhf_core.data.config import IngestConfig
    from rrhf_core.data.ingest import run_ingest

    cfg = _config(args, IngestConfig, "ingest configuration")
    report = run_ingest(cfg)
    print(report.summary())
    print(
        f"prompts: {Path(cfg.output_dir) / 'prompts.parquet'}  rejects: {Path(cfg.output_dir) / 'rejects.jsonl'}"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from rrhf_core.sampling.config import SampleConfig
    from rrhf_core.sampling.stage import sample

    r = sample(_config(args, SampleConfig, "sampling configuration"), progress=not args.no_progress)
    print(
        f"{r.prompts} prompts in {r.shards_total} shards ({r.shards_done_now} sampled now, the rest reused); "
        f"{r.generated_tokens} tokens in {r.seconds:.1f} s ({r.tokens_per_s:.0f} tok/s) -> {r.samples_path}"
    )
    if r.dropped_for_length:
        print(
            f"{len(r.dropped_for_length)} prompt(s) longer than max_prompt_tokens were not sampled (ids in "
            f"{r.samples_path.with_name('sample_report.json')}), e.g. {r.dropped_for_length[0]}"
        )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from rrhf_core.scoring.config import ScoreConfig
    from rrhf_core.scoring.stage import score

    r = score(_config(args, ScoreConfig, "scoring configuration"), progress=not args.no_progress)
    print(
        f"{r.responses} responses, {r.unique_pairs} unique (prompt, response) pairs: {r.scored_now} scored now, "
        f"{r.cached} from the cache, by {r.reward_id} in {r.seconds:.1f} s -> {r.scores_path}"
    )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from rrhf_core.data.build import build
    from rrhf_core.data.config import BuildConfig

    r = build(_config(args, BuildConfig, "build configuration"))
    dropped = ", ".join(f"{v} {k}" for k, v in r.dropped.items()) or "none"
    print(
        f"{r.prompts_out} of {r.prompts_in} prompts kept (dropped: {dropped}) -> {r.train_path}; stats: {r.stats_path}"
    )
    if r.blank_responses_skipped:
        print(f"{r.blank_responses_skipped} blank response(s) skipped (not training responses)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rrhf_core.training.config import TrainConfig
    from rrhf_core.training.launch import train

    result = train(_config(args, TrainConfig, "training configuration"), progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        final = result.summary.get("final") or {}
        print(
            f"trained {result.steps} steps (resumed from step {result.resumed_from}); "
            f"last loss {final.get('loss', float('nan')):.4f}, "
            f"ranking accuracy {final.get('ranking_accuracy', float('nan')):.3f}"
        )
        print(f"model: {result.model_dir}  metrics: {result.output_dir / 'metrics.jsonl'}")
    return 0


def cmd_train_rm(args: argparse.Namespace) -> int:
    from rrhf_core.reward_model.config import RMTrainConfig
    from rrhf_core.reward_model.trainer import train_reward_model

    r = train_reward_model(
        _config(args, RMTrainConfig, "reward-model configuration"), progress=not args.no_progress
    )
    d, e = r.report["data"], r.report["eval"]
    print(
        f"trained {r.report['steps']} steps on {d['train_pairs']} pairs in {r.seconds:.0f} s; model: {r.model_dir}"
    )
    if e:
        lo, hi = e["accuracy_ci"]
        print(
            f"held-out ({e['pairs']} pairs): accuracy {e['accuracy']:.3f} (95 % CI {lo:.3f}..{hi:.3f}), "
            f"mean margin {e['mean_margin']:+.3f}, calibration error {e['calibration_error']:.3f}, "
            f"reward-length correlation {e['length_correlation']:+.2f}"
        )
    for spec, m in r.report["compare"].items():
        lo, hi = m["accuracy_ci"]
        print(f"  {spec}: accuracy {m['accuracy']:.3f} (95 % CI {lo:.3f}..{hi:.3f})")
    print(f"report: {r.output_dir / 'rm_report.json'}  pairs: {r.output_dir / 'eval_pairs.parquet'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rrhf_cli.pipeline import print_evaluation
    from rrhf_core.evaluation.config import EvalConfig
    from rrhf_core.evaluation.evaluate import evaluate

    cfg = _config(args, EvalConfig, "evaluation configuration")
    report = evaluate(cfg, log=print).to_dict()
    print()
    print_evaluation(report)
    out = Path(cfg.output_dir)
    print(f"report: {out / 'eval_report.json'}  answers: {out / 'eval_samples.parquet'}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from rrhf_cli.pipeline import run_pipeline
    from rrhf_core.pipeline import PipelineConfig, preflight

    cfg = _config(args, PipelineConfig, "pipeline configuration")
    retrain = args.command == "retrain"  # retrain samples from the champion: the policy may go unused
    preflight(cfg.model_copy(update={"from_champion": True}) if retrain else cfg)  # before any stage
    if args.plan:
        from rrhf_cli.pipeline import print_plan

        return print_plan(cfg.model_copy(update={"from_champion": True}) if retrain else cfg)
    return run_pipeline(cfg, retrain=retrain)


def cmd_compare(args: argparse.Namespace) -> int:
    from rrhf_cli.pipeline import run_compare
    from rrhf_core.pipeline import PipelineConfig, preflight

    cfg = _config(args, PipelineConfig, "pipeline configuration")
    preflight(cfg)
    return run_compare(cfg, args.losses)


def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    if not script.exists():
        raise ConfigError(
            f"the training-step benchmark is a script of the repository ({script} is missing): run `rrhf bench` "
            "from a clone (an editable install, as `make setup` makes)"
        )
    main = runpy.run_path(str(script), run_name="rrhf_bench")["main"]
    return int(main(list(args.rest)))


def cmd_stack(args: argparse.Namespace) -> int:
    from rrhf_cli.stack import main as stack_main

    return stack_main(list(args.rest))


def cmd_report(args: argparse.Namespace) -> int:
    from rrhf_cli.report import run_comparison_report, run_report

    return run_comparison_report(args.summaries) if args.comparisons else run_report(args.summaries)


def _set_example(cls: Any) -> str:
    """A ``--set`` example that this command's settings accept: a nested key where there is one."""
    for name, field in cls.model_fields.items():
        inner = getattr(field.annotation, "model_fields", None)
        if inner and "seed" in inner:
            return f"{name}.seed=1"
    if "lora" in cls.model_fields:
        return "lora.r=8"
    if "seed" in cls.model_fields:
        return "seed=1"
    simple = (
        (name, f.default)
        for name, f in cls.model_fields.items()
        if isinstance(f.default, (bool, int, float, str))
    )
    name, default = next(simple, ("KEY", "VALUE"))
    return f"{name}={str(default).lower() if isinstance(default, bool) else default}"


def _settings_parser(
    sub: Any, name: str, text: str, cls: Any, func: Any, skip: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """A subcommand whose settings come from --config FILE, then one flag per setting, then --set key=value; its
    epilog lists the nested keys."""
    t = sub.add_parser(
        name,
        help=text,
        description=f"{text}. Settings: --config FILE, then flags, then --set key=value.",
        epilog=nested_keys(cls).replace("%", "%%") or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--config",
        help="YAML file with settings (presets: configs/)"
        if set(_pipeline_sections()) <= set(cls.model_fields)
        else "YAML file with this command's settings at its top level: the flags' names with underscores "
        "(output_dir: runs/x), a section's keys nested under it",
    )
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=f"override any setting, e.g. --set {_set_example(cls)}",
    )
    _add_config_flags(t, cls, skip)
    t.set_defaults(func=func)
    return t


# the printer of each stage that runs alone (the stage table's other stages run only inside a round)
STAGE_COMMANDS: dict[str, Any] = {
    "ingest": cmd_ingest,
    "sample": cmd_sample,
    "score": cmd_score,
    "build": cmd_build,
    "train": cmd_train,
    "train-rm": cmd_train_rm,
    "evaluate": cmd_evaluate,
}


def _add_stage_commands(sub: Any) -> None:
    """One subcommand per stage of the stage table that runs alone, in the table's order: its configuration's
    settings as flags, its one-line summary as help."""
    from rrhf_core.stages import STAGES

    for stage in STAGES:
        if stage.name not in STAGE_COMMANDS:
            continue
        t = _settings_parser(sub, stage.name, stage.summary, stage.config, STAGE_COMMANDS[stage.name])
        if stage.name != "evaluate":  # evaluation logs a line per model instead of a bar
            t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_round_commands(sub: Any) -> None:
    from rrhf_core.pipeline import PipelineConfig

    rounds = [
        _settings_parser(
            sub,
            "pipeline",
            "run a whole RRHF round as a Prefect flow tracked in MLflow (embedded defaults)",
            PipelineConfig,
            cmd_pipeline,
        ),
        _settings_parser(  # retrain always samples from the champion: no --from-champion to set
            sub,
            "retrain",
            "another RRHF round sampled from the current champion (iterative RRHF)",
            PipelineConfig,
            cmd_pipeline,
            skip=("from_champion",),
        ),
    ]
    for r in rounds:
        r.add_argument(
            "--plan",
            action="store_true",
            help="say which stages this round would reuse or run in its workdir, and why; run nothing",
        )
    losses = ["rrhf", "ranking", "sft_best", "dpo", "simpo"]
    c = _settings_parser(
        sub,
        "compare",
        "RRHF beside its ranking term alone, sft_best, dpo and simpo on the round's built data set: same steps, "
        "same judge, one table",
        PipelineConfig,
        cmd_compare,
    )
    c.add_argument(
        "--losses",
        nargs="+",
        default=losses,
        choices=losses,
        help="the losses to compare (default: all five; ranking = rrhf with sft_weight 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rrhf", description="RRHF alignment pipeline")
    sub = p.add_subparsers(dest="command", required=True)
    _add_stage_commands(sub)
    _add_round_commands(sub)

    b = sub.add_parser("bench", help="benchmarks: `rrhf bench train-step --help`")
    b.add_argument("what", choices=["train-step"])
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser(
        "stack",
        help="the production stack on this machine: PostgreSQL, Prefect and MLflow servers, a worker "
        "(`rrhf stack up|down|status|env`; `rrhf stack --help`)",
        add_help=False,
    )
    s.add_argument("rest", nargs=argparse.REMAINDER, help="up | down | status | env, then options")
    s.set_defaults(func=cmd_stack)

    from rrhf_cli.serve import add_parsers as add_serving_parsers

    add_serving_parsers(sub)

    r = sub.add_parser("report", help="render the result table (markdown) from runs' last_summary.json files")
    r.add_argument("summaries", nargs="+", help="last_summary.json files or run workdirs")
    r.add_argument(
        "--comparisons",
        action="store_true",
        help="the arguments are `rrhf compare` workdirs (last_comparison.json): render the ablation table, each "
        "loss per run and RRHF minus each loss with its CI",
    )
    r.set_defaults(func=cmd_report)

    return p


def _remove_if_empty(made: tuple[Path, Path] | None) -> None:
    """The output folder a failed command made, and the parents it made for it, while they are empty."""
    if made is None:
        return
    folder, top = made
    (folder / ".rrhf.lock").unlink(missing_ok=True)  # the command's own lock, released by now
    while folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        if folder == top:
            break
        folder = folder.parent


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rrhf`` command: exit status 0, 2 for a user error (one line, no traceback), 130 when interrupted, 141
    when its reader went away (``rrhf report ... | head``: quiet, as a process ended by SIGPIPE)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # whatever is still buffered cannot be written either: standard output goes to /dev/null so that the
        # interpreter's own flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    redaction.install()  # no credentials of a tracking URI in anything this command prints or logs
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stack"]:  # its own parser (its --help included)
        args = argparse.Namespace(command="stack", func=cmd_stack, rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    args.held = contextlib.ExitStack()  # the output folder's lock, while the command runs
    try:
        with args.held:
            return int(args.func(args) or 0)
    except RRHFError as e:
        print(f"rrhf {args.command}: error: {e}", file=sys.stderr)
        _remove_if_empty(getattr(args, "new_output_dir", None))
        return 2
    except KeyboardInterrupt:
        print(f"rrhf {args.command}: interrupted", file=sys.stderr)
        return 130
