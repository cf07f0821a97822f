"""Training checkpoints: written to a temporary folder then renamed, read back without running any code.

``output_dir/checkpoints/step-NNNNNNNN`` holds the trainable weights, the optimizer and scheduler states (under
FSDP the first two as a ``sharded/`` DCP folder, see :mod:`rrhf_core.training.sharding`), each
process's RNG state and ``trainer_state.json`` (step, world size, the configuration fingerprint and the training
data's digest). Every file is loaded with ``torch.load(weights_only=True)`` or as JSON (DCP's pickled metadata only
after an allow-list check), so a planted file cannot execute code on resume.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from rrhf_core.data.contracts import failed_write, not_writable
from rrhf_core.errors import ConfigError
from rrhf_core.training.distributed import DistEnv, barrier
from rrhf_core.training.prefix import PrefixSharedLM
from rrhf_core.training.sharding import is_sharded, load_sharded, save_sharded

CHECKPOINTS = "checkpoints"
SHARDED = "sharded"  # the DCP folder of an FSDP checkpoint


def unwrap(model: Any) -> Any:
    """The causal LM inside the DDP and prefix-sharing wrappers."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return model.lm if isinstance(model, PrefixSharedLM) else model


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unwrap(model).named_parameters() if p.requires_grad}


def save_rng(folder: Path, rank: int) -> None:
    """This process's RNG states: Python's as JSON, torch's (and CUDA's) as plain tensors."""
    version, state, gauss = random.getstate()
    (folder / f"rng-rank{rank}.json").write_text(
        json.dumps({"version": version, "state": state, "gauss": gauss})
    )
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    torch.save(tensors, folder / f"rng-rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    py = json.loads((folder / f"rng-rank{rank}.json").read_text())
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    tensors = torch.load(folder / f"rng-rank{rank}.pt", map_location="cpu", weights_only=True)
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / CHECKPOINTS
    if not root.exists():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").exists())
    return done[-1] if done else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    fingerprint: dict[str, Any],
    keep: int,
    env: DistEnv,
) -> Path:
    root = output_dir / CHECKPOINTS
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    try:
        save_rng(tmp, env.rank)
        if is_sharded(model):  # FSDP: every process writes its shards of weights and optimizer state
            save_sharded(tmp / SHARDED, model, optimizer)
        if env.is_main:
            if not is_sharded(model):
                torch.save(trainable_state(model), tmp / "trainable.pt")
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    except Exception as e:
        os_error = failed_write(e)
        if os_error is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise not_writable(root, os_error, "checkpoint folder") from None
    barrier(env)
    if env.is_main:
        state = {"step": step, "world_size": env.world_size, "fingerprint": fingerprint}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").exists())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def check_compatible(path: Path, state: dict[str, Any], fingerprint: dict[str, Any], env: DistEnv) -> None:
    """Refuse, saying why, to resume a checkpoint of another configuration, data set or process count."""
    theirs = state["fingerprint"]
    if theirs != fingerprint:
        diff = sorted(k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k))
        raise ConfigError(
            f"{path} was written with a different configuration ({', '.join(diff)} differ); "
            "use another output_dir, or resume=false to start over in this one"
        )
    if state["world_size"] != env.world_size:
        raise ConfigError(
            f"{path} was written by {state['world_size']} process(es), this run has {env.world_size}; "
            "resume with the same number of processes (nproc x nnodes): which prompts a process trains on, "
            "and each process's random state, depend on it"
        )


def load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, fingerprint: dict[str, Any], env: DistEnv
) -> int:
    """Restore weights, optimizer, scheduler and RNG from ``path``; return its step."""
    state = json.loads((path / "trainer_state.json").read_text())
    check_compatible(path, state, fingerprint, env)
    if is_sharded(model):
        load_sharded(path / SHARDED, model, optimizer)
    else:
        _load_whole(path, model, optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    load_rng(path, env.rank)
    return int(state["step"])


def _load_whole(path: Path, model: Any, optimizer: Any) -> None:
    weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    params = dict(unwrap(model).named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ConfigError(
            f"{path} holds weights this model lacks (e.g. {missing[:3]}); was it another model?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
