"""Shared fixtures: a tiny real HF model (byte-level tokenizer with a ChatML template, 2-layer Llama), a session-wide
Prefect server; and the tests' own tools for real processes: free ports, waiting for a server to answer, stopping a
process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HH_FILE = SHARED / "data" / "hh-rlhf" / "harmless-base-test.dev.jsonl.gz"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answers(url: str, proc: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    """Until ``url`` answers (any HTTP reply); fails at once, with the log's tail, when ``proc`` ends first, and
    after ``timeout_s`` (generous: a loaded 2-core machine starts servers slowly, and the wait ends as soon as one
    answers)."""
    deadline = time.monotonic() + timeout_s
    tail: Callable[[], str] = lambda: log.read_text()[-3000:] if log and log.exists() else ""  # noqa: E731
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # the server is up, whatever it says to this request
        except (urllib.error.URLError, OSError):
            assert proc.poll() is None, (
                f"the server ended (exit status {proc.returncode}) before {url} answered: {tail()}"
            )
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout_s:.0f} s: {tail()}"
            time.sleep(0.5)


def stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)


def held_rrhf(target: str, calls: int, marker: Path, args: list[str], **popen: Any) -> subprocess.Popen:
    """``rrhf ARGS`` in a subprocess that writes ``marker`` and waits after the ``calls``-th return of ``target``
    (``module:function``, as that module calls it): see tests/hold.py."""
    hold = Path(__file__).with_name("hold.py")
    cmd = [sys.executable, str(hold), target, str(calls), str(marker), "--", *args]
    return subprocess.Popen(cmd, **popen)


def wait_for_marker(
    marker: Path, proc: subprocess.Popen, timeout_s: float = 600, log: Path | None = None
) -> None:
    """Until ``marker`` exists; fails at once when ``proc`` ends first (the held point was never reached)."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        tail = log.read_text()[-3000:] if log and log.exists() else ""
        assert proc.poll() is None, (
            f"the command ended (exit status {proc.returncode}) before its held point: {tail}"
        )
        assert time.monotonic() < deadline, f"the held point was not reached in {timeout_s:.0f} s: {tail}"
        time.sleep(0.05)


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(path: Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> Path:
    """Save a byte-level tokenizer and a randomly initialised tiny Llama to ``path``; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from rrhf_core.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the embedded SmolLM2 policy, converted once per test session."""
    from rrhf_core.models import EMBEDDED_POLICY, resolve_model

    cache = tmp_path_factory.mktemp("rrhf-cache")
    resolve_model(EMBEDDED_POLICY, cache)
    return cache


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_cache: Path) -> Path:
    from rrhf_core.models import EMBEDDED_POLICY, resolve_model

    return Path(resolve_model(EMBEDDED_POLICY, smollm2_cache))


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """A temporary Prefect server for the whole session (flows run against it for real)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):  # a loaded 2-core machine starts it slowly
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def learnable_records(n: int = 16, response_len: int = 6) -> list[dict]:
    """A listwise set a tiny model can learn: the prompt names the letter that earns reward.

    Half the prompts prefer 'a'-heavy responses, half 'b'-heavy ones, so a model that ignores the prompt
    orders only about half of the pairs correctly.
    """
    import random

    rng = random.Random(0)
    half = response_len // 2
    records = []
    for i in range(n):
        letter = "ab"[i % 2]
        responses = ["a" * response_len, "a" * half + "b" * half, "b" * response_len]
        rewards = [1.0, 0.5, 0.0] if letter == "a" else [0.0, 0.5, 1.0]
        order = list(range(3))
        rng.shuffle(order)
        records.append(
            {
                "prompt_id": f"p{i:03d}",
                "messages": [{"role": "user", "content": f"say {letter}"}],
                "responses": [responses[j] for j in order],
                "rewards": [rewards[j] for j in order],
                "sources": ["synthetic"] * 3,
            }
        )
    return records


@pytest.fixture
def learnable_set(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "learnable.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in learnable_records()))
    return path


def tiny_round(workdir: Path, prompts: Path, model: Path, registered_model: str) -> dict:
    """Pipeline parameters (as a deployment takes them) for a seconds-long round on the tiny model."""
    return {
        "workdir": str(workdir),
        "prompts": [str(prompts)],
        "policy": str(model),
        "reward": "reward_fns:checksum",
        "registered_model": registered_model,
        "sample": {"backend": "hf", "k": 3, "max_new_tokens": 8, "temperature": 1.0, "dtype": "fp32"},
        "train": {
            "max_steps": 2,
            "micro_batch_size": 2,
            "grad_accum": 1,
            "max_length": 96,
            "max_response_tokens": 16,
            "dtype": "fp32",
        },
        "evaluate": {"max_new_tokens": 8},
    }
