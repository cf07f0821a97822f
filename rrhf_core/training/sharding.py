"""FSDP (PyTorch FSDP2, ``fully_shard``): parameters, gradients and optimizer state sharded over the processes.

Each decoder layer (the model's ``_no_split_modules`` classes) is its own FSDP unit; the module the trainer calls
(the prefix-sharing scorer, or the LM) is the root unit and holds what is left (embeddings, final norm, head), so a
tied head and embedding stay in one unit. With bf16 on, parameters are gathered in bf16 and gradients reduced in
fp32 (``MixedPrecisionPolicy``); autocast stays on as in DDP.

Checkpoints are ``torch.distributed.checkpoint`` (DCP) folders: every process writes its own shards, and a folder
can be read by another number of processes (DCP reshards). The trainer still refuses such a resume, because the data
order of a step depends on the number of processes (:func:`rrhf_core.training.checkpoint.check_compatible`). DCP
reads its ``.metadata`` file with ``pickle``; :func:`check_dcp_metadata` reads it first with an unpickler that
accepts only DCP's own metadata classes, so a planted file is refused instead of run.

Collectives on CPU: FSDP2's all-gather and reduce-scatter run on gloo (measured with torch 2.13), so the CPU tests
run the real thing with 2 processes.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint.metadata

from rrhf_core.errors import ConfigError


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of an HF model (also inside peft), by its ``_no_split_modules`` class names."""
    names: set[str] = set()
    for m in model.modules():
        names |= set(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"strategy 'fsdp' found no decoder layers in {type(model).__name__} (it names no _no_split_modules); "
            "use strategy 'ddp' for this model"
        )
    return layers


def shard(model: torch.nn.Module, bf16: bool, device: torch.device) -> torch.nn.Module:
    """Apply ``fully_shard`` to every decoder layer, then to ``model`` itself (the root unit); returns ``model``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU of process 0 (every process must call this; others get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def as_float(value: Any) -> float:
    """A scalar that may be a DTensor (e.g. the gradient norm over sharded parameters) as a Python float."""
    full = getattr(value, "full_tensor", None)
    return float((full() if full is not None else value).item())


# --- DCP checkpoints ------------------------------------------------------------------------------------------

_SAFE_GLOBALS = {  # what DCP's metadata pickles besides its metadata classes (torch 2.13)
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Imports only DCP's metadata classes (dataclasses and enums), torch dtypes and the few helpers above."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch.distributed.checkpoint.metadata" and isinstance(
            getattr(torch.distributed.checkpoint.metadata, name, None), type
        ):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype | torch.memory_format):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def check_dcp_metadata(folder: Path) -> None:
    """Refuse a DCP folder whose ``.metadata`` would make ``pickle`` import anything but DCP's metadata classes."""
    meta = folder / ".metadata"
    if not meta.exists():
        raise ConfigError(f"{folder} is not a complete sharded checkpoint (no .metadata)")
    try:
        _MetadataUnpickler(io.BytesIO(meta.read_bytes())).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, ValueError) as e:
        raise ConfigError(
            f"{meta} is not a checkpoint metadata file this project wrote ({e}); not loaded"
        ) from None


def save_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every process writes its shards of the model and optimizer state into ``folder`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read ``folder`` (written by :func:`save_sharded`) into the sharded model and optimizer (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    check_dcp_metadata(folder)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))  # fills them in place
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
