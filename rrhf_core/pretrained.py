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


def load(cls: Any, path: str | os.PathLike[str], what: str = "model", **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, trust_remote_code=False, **kwargs)`` after :func:`refuse_custom_code`."""
    if kwargs.get("trust_remote_code"):
        raise ConfigError("trust_remote_code=True is never passed: rrhf does not run code from model folders")
    kwargs["trust_remote_code"] = False
    refuse_custom_code(path, what)
    return cls.from_pretrained(path, **kwargs)
