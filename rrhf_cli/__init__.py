"""The ``rrhf`` command line: one subcommand per pipeline stage.

User errors (bad data, bad configuration, missing packages) print a message and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rrhf_core.errors import RRHFError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


def _add_config_flags(parser: argparse.ArgumentParser, cls: Any) -> None:
    """A ``--kebab-name`` flag for every top-level scalar field of a pydantic config, help from its description."""
    for name, f in cls.model_fields.items():
        if name in ("lora",):
            continue
        default = "required" if f.is_required() else f"default: {f.default}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"cfg__{name}",
            metavar="VALUE",
            help=f"{f.description or ''} ({default})".replace("%", "%%"),
        )


def _collect_overrides(args: argparse.Namespace) -> list[str]:
    out = [f"{k[5:]}={v}" for k, v in vars(args).items() if k.startswith("cfg__") and v is not None]
    return out + list(args.set or [])


def _base_config(args: argparse.Namespace) -> dict[str, Any]:
    from rrhf_core.config import load_yaml

    return load_yaml(args.config) if args.config else {}


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        rest = [a for i, a in enumerate(argv) if not _is_nproc_arg(argv, i)]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "rrhf_cli",
            *rest,
        ]
        return subprocess.call(cmd)
    from rrhf_core.config import TrainConfig, build_config
    from rrhf_core.train import train

    cfg = build_config(TrainConfig, _base_config(args), _collect_overrides(args), "training configuration")
    result = train(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        final = result.summary.get("final") or {}
        print(
            f"trained {result.steps} steps (resumed from step {result.resumed_from}); "
            f"last loss {final.get('loss', float('nan')):.4f}, ranking accuracy {final.get('ranking_accuracy', float('nan')):.3f}"
        )
        print(f"model: {result.model_dir}  metrics: {result.output_dir / 'metrics.jsonl'}")
    return 0


def _is_nproc_arg(argv: Sequence[str], i: int) -> bool:
    a = argv[i]
    return a.startswith("--nproc") or (i > 0 and argv[i - 1] == "--nproc")


def cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rrhf_cli.demo import run_demo

    return run_demo(Path(args.workdir), steps=args.steps, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    from rrhf_core.config import TrainConfig

    p = argparse.ArgumentParser(prog="rrhf", description="RRHF alignment pipeline")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a policy with the RRHF loss on a listwise training set",
        description="Train with RRHF. Settings: --config FILE, then flags, then --set key=value.",
    )
    t.add_argument("--config", help="YAML file with training settings")
    t.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override any setting, e.g. --set lora.r=8"
    )
    t.add_argument(
        "--nproc", type=int, default=1, help="processes to launch with torchrun (DDP; gloo on CPU)"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(t, TrainConfig)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser(
        "demo", help="the embedded demo: train SmolLM2-135M on the built-in listwise set, no network"
    )
    d.add_argument("--workdir", default="runs/demo", help="where the run folder goes (default runs/demo)")
    d.add_argument("--steps", type=int, default=12, help="optimizer steps (default 12)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, argv) or 0)
    except RRHFError as e:
        print(f"rrhf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rrhf {args.command}: interrupted", file=sys.stderr)
        return 130
