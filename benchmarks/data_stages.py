"""Throughput of the data stages, measured side by side in one run.

    python benchmarks/data_stages.py [--prompts 32] [--k 4] [--max-new-tokens 64] [--no-vllm] [--json]

Sampling: the raw backend (``generate`` on rendered prompts) and the pipeline's sampling stage (prompt rendering,
shards, references, Parquet) on the same prompts, for transformers and for vLLM. Scoring: the embedded reward and a
135M-parameter sequence-classifier reward (the SmolLM2 backbone with a fresh head: real size, meaningless scores)
with and without length bucketing, and the scoring stage against the raw reward on the same pairs.
Prompts: the embedded demo prompts (no network, no shared data needed).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--no-sampling", action="store_true", help="only the scoring figures")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from rrhf_core.data.contracts import read_samples
    from rrhf_core.data.ingest import ingest
    from rrhf_core.models import EMBEDDED_POLICY, resolve_model
    from rrhf_core.sampling import GenerationParams
    from rrhf_core.sampling.config import SampleConfig
    from rrhf_core.sampling.shard import make_sampler, render_prompts
    from rrhf_core.sampling.stage import sample
    from rrhf_core.scoring.config import ScoreConfig
    from rrhf_core.scoring.embedded import EmbeddedReward
    from rrhf_core.scoring.reward import HFClassifierReward
    from rrhf_core.scoring.stage import score

    work = Path(tempfile.mkdtemp(prefix="rrhf-bench-"))
    demo = Path(__file__).resolve().parents[1] / "rrhf_core" / "data" / "demo_prompts.jsonl"
    ingest([str(demo)], work / "ingest", eval_share=0.0)
    prompts = work / "ingest" / "prompts.parquet"
    model = resolve_model(EMBEDDED_POLICY)
    results: dict[str, float] = {"threads": torch.get_num_threads()}

    backends = [] if args.no_sampling else ["hf"] + ([] if args.no_vllm else ["vllm"])
    for backend in backends:
        cfg = SampleConfig(
            prompts=str(prompts),
            output_dir=str(work / f"s-{backend}"),
            model=model,
            backend=backend,
            k=args.k,
            max_new_tokens=args.max_new_tokens,
            limit=args.prompts,
            shard_size=args.prompts,
            batch_size=args.prompts,
            include_references=False,
            dtype="bf16",
            temperature=0.8,
        )
        sampler = make_sampler(cfg)
        from rrhf_core.data.contracts import read_prompts

        rows = read_prompts(prompts, "train")[: args.prompts]
        texts, _ = render_prompts(rows, sampler.tokenizer, cfg)
        params = GenerationParams(
            cfg.k, cfg.strategy, cfg.temperature, cfg.top_p, cfg.max_new_tokens, (), cfg.seed
        )
        sampler.generate(texts[:2], params)  # warm-up
        t0 = time.perf_counter()
        raw = sampler.generate(texts, params)
        raw_s = time.perf_counter() - t0
        raw_tokens = sum(c.num_tokens for group in raw for c in group)
        stage = sample(cfg, sampler=sampler, progress=False)
        sampler.close()
        results[f"sample_{backend}_raw_tok_s"] = raw_tokens / raw_s
        results[f"sample_{backend}_stage_tok_s"] = stage.tokens_per_s
        results[f"sample_{backend}_stage_over_raw"] = stage.tokens_per_s / (raw_tokens / raw_s)
    if "sample_vllm_raw_tok_s" in results:
        results["sample_vllm_over_hf_raw"] = results["sample_vllm_raw_tok_s"] / results["sample_hf_raw_tok_s"]

    # Scoring set: every sampled response (or, with --no-sampling, the demo reference answers) cut at 10 %, 40 % and
    # 100 % of its words, so lengths are mixed as in a real candidate pool (equal lengths leave bucketing nothing to
    # gain). The same pairs go to the raw reward and, written as a samples table, through the scoring stage.
    from rrhf_core.data.contracts import read_prompts

    rows = read_prompts(prompts)
    if args.no_sampling:
        refs = {
            json.loads(line)["prompt"]: json.loads(line)["reference"]
            for line in demo.read_text().splitlines()
        }
        base = [(r["prompt_id"], refs[r["messages"][-1]["content"]]) for r in rows]
    else:
        base = [(s["prompt_id"], s["text"]) for s in read_samples([str(work / "s-hf" / "samples.parquet")])]
    msgs = {r["prompt_id"]: r["messages"] for r in rows}
    mixed = []
    for pid, text in base:
        words = text.split()
        for share in (0.1, 0.4, 1.0):
            mixed.append((pid, " ".join(words[: max(1, round(share * len(words)))])))
    mixed = list(dict.fromkeys(mixed))
    pairs_p = [msgs[pid] for pid, _ in mixed]
    pairs_r = [t for _, t in mixed]
    results["score_pairs"] = len(pairs_r)

    tok = AutoTokenizer.from_pretrained(model)
    clf = LlamaForSequenceClassification.from_pretrained(model, num_labels=1)
    clf.save_pretrained(work / "rm")
    tok.save_pretrained(work / "rm")
    for name, make in (
        ("embedded", lambda b: EmbeddedReward(bucket=b)),
        ("classifier135m", lambda b: HFClassifierReward(str(work / "rm"), batch_size=16, bucket=b)),
    ):
        for bucket in (False, True):
            reward = make(bucket)
            reward.score(pairs_p[:4], pairs_r[:4])  # warm-up
            t0 = time.perf_counter()
            reward.score(pairs_p, pairs_r)
            results[f"score_{name}_{'bucketed' if bucket else 'unbucketed'}_per_s"] = len(pairs_r) / (
                time.perf_counter() - t0
            )
        results[f"score_{name}_bucketing_speedup"] = (
            results[f"score_{name}_bucketed_per_s"] / results[f"score_{name}_unbucketed_per_s"]
        )

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rrhf_core.data.contracts import SAMPLES_SCHEMA
    from rrhf_core.sampling.shard import response_id

    table = [
        {
            "prompt_id": pid,
            "response_id": response_id(pid, t),
            "text": t,
            "source": "bench",
            "num_tokens": 0,
            "finish_reason": "stop",
            "sampler": "bench",
        }
        for pid, t in mixed
    ]
    pq.write_table(pa.Table.from_pylist(table, schema=SAMPLES_SCHEMA), work / "mixed.parquet")
    reward = EmbeddedReward()
    best_raw = best_stage = 0.0
    for rep in range(3):  # alternate raw and stage; keep each one's best (the machine is shared and noisy)
        t0 = time.perf_counter()
        reward.score(pairs_p, pairs_r)
        best_raw = max(best_raw, len(pairs_r) / (time.perf_counter() - t0))
        st = score(
            ScoreConfig(
                samples=[str(work / "mixed.parquet")],
                prompts=str(prompts),
                output_dir=str(work / f"score{rep}"),
                cache_path=str(work / f"cache{rep}.sqlite"),
            ),
            reward=reward,
            progress=False,
        )
        best_stage = max(best_stage, st.responses / st.seconds)
    results["score_embedded_raw_per_s"] = best_raw
    results["score_embedded_stage_per_s"] = best_stage
    results["score_embedded_stage_over_raw"] = best_stage / best_raw

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for k, v in results.items():
            print(f"{k:<44}{v:>12.2f}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
