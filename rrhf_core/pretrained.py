"""Every model, tokenizer and config the project loads comes through :func:`load`: never with code from the folder.

A model folder (or Hub repository) can name Python classes of its own (``auto_map`` in ``config.json`` or
``tokenizer_config.json``); transformers would import and run them with ``trust_remote_code=True``, and when that
argument is left out it *asks* on the terminal, so a ``y`` on standard input runs the folder's code. Here the
argument is always ``False`` and a local folder that names custom code is refused before transformers reads it, with
what to do instead.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from rrhf_core.errors import ConfigError

# the files in which a model folder can name its own classes
_CODE_NAMING_FILES = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
)


def refuse_custom_code(path: str | os.PathLike[str], what: str = "model") -> None:
    """:class:`ConfigError` when the local folder ``path`` names classes of its own (``auto_map``), or Python files
    it would import; nothing for a Hub id (transformers refuses those itself under ``trust_remote_code=False``)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return
    for name in _CODE_NAMING_FILES:
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # transformers reports an unreadable config in its own words
        if isinstance(data, dict) and data.get("auto_map"):
            raise ConfigError(
                f"the {what} folder {folder} needs custom code ({name} names auto_map classes "
                f"{sorted(data['auto_map'])}): rrhf never runs code from a model folder. Use a model whose "
                "architecture transformers ships (or convert it to one and save it with save_pretrained), or remove "
                "auto_map from its files if the architecture is a built-in one"
            )


def _unreadable_weights(err: Exception) -> str | None:
    """Why a weights file could not be read, where ``err`` says so: a ``model.safetensors`` that is not one (a
    pickle under that name, say) or a PyTorch ``.bin`` that holds more than plain tensors (``torch.load`` with
    ``weights_only=True`` refuses it and runs nothing)."""
    text = " ".join(str(err).split())
    if type(err).__name__ == "SafetensorError":
        return f"a .safetensors file in it is not safetensors ({text}); it may be a pickle under that name"
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        return (
            "its PyTorch .bin weights hold more than plain tensors (a pickle with other objects, refused unread: "
            "nothing in it ran)"
        )
    return None


def load(
    cls: Any, path: str | os.PathLike[str], what: str = "model", *, new_head: bool = False, **kwargs: Any
) -> Any:
    """``cls.from_pretrained(path, trust_remote_code=False, **kwargs)`` after :func:`refuse_custom_code`.

    A model (an ``AutoModel*`` class) must find every weight in the folder: transformers would fill missing ones
    with random values and only log it (weights saved for another architecture, a truncated file). ``new_head``
    allows missing weights outside the base model (the fresh score head of a reward model made from a causal LM).
    A weights file that cannot be read is a :class:`ConfigError` naming the folder."""
    if kwargs.get("trust_remote_code"):
        raise ConfigError("trust_remote_code=True is never passed: rrhf does not run code from model folders")
    kwargs["trust_remote_code"] = False
    refuse_custom_code(path, what)
    is_model = getattr(cls, "__name__", "").startswith("AutoModel")
    try:
        if not is_model:
            return cls.from_pretrained(path, **kwargs)
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except Exception as e:
        why = _unreadable_weights(e)
        if why is None:
            raise
        raise ConfigError(
            f"cannot load {what} from {path}: {why}. rrhf reads weights as safetensors (or .bin files of plain "
            "tensors): save the model again with save_pretrained(..., safe_serialization=True)"
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    if new_head:
        base = f"{getattr(model, 'base_model_prefix', '')}."
        missing = [k for k in missing if k.startswith(base)]
    if missing:
        raise ConfigError(
            f"cannot load {what} from {path}: its weights lack {len(missing)} of the model's tensors (e.g. "
            f"{', '.join(missing[:3])}), which transformers would fill with random values; the weights file belongs "
            "to another architecture or is incomplete: save the model again with save_pretrained"
        )
    return model
