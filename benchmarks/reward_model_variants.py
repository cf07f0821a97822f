"""Reward-model variants on the shared HH pairs, outside the product's folder format: what would a different
pooling, dropout or input rendering buy?

    python benchmarks/reward_model_variants.py [--pool cls|mean] [--dropout 0.1] [--render hh|last] [--seed 0]
    python benchmarks/reward_model_variants.py --frozen embedded:smollm2-135m-instruct   # linear probes per layer

Same split (``eval_share`` 0.2 of ../shared/data/hh-rlhf/harmless-base-test.dev.jsonl.gz by prompt), the same length
buckets, schedule and Bradley-Terry loss as ``rrhf train-rm``; MiniLM-L6 (embedded) fine-tuned with either its CLS
pooler (what a saved ``BertForSequenceClassification`` folder does) or mean pooling and a linear head (no standard HF
class does this, so the product does not save it), rendering the whole dialogue (``hh``, the product's) or only the
last human turn and the response (``last``). ``--frozen MODEL``: the backbone is not trained; a logistic regression on
the difference of chosen and rejected hidden states, for every layer, last-token and mean pooling, three weight
decays. Prints one JSON line per result (held-out accuracy on the held-out pairs, seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from rrhf_core.models import EMBEDDED_ENCODER, resolve_model
from rrhf_core.reward_model.pairs import load_pairs
from rrhf_core.reward_model.trainer import _schedule, length_buckets
from rrhf_core.scoring.reward import render_for_reward

DATA = "../shared/data/hh-rlhf/harmless-base-test.dev.jsonl.gz"


def render(tok, pair, text: str, how: str) -> str:
    if how == "hh":
        return render_for_reward(tok, pair.messages, text)
    last = [m for m in pair.messages if m["role"] == "user"][-1]["content"]
    return f"Human: {last}\n\nAssistant: {text.strip()}"


def fine_tune(a: argparse.Namespace) -> dict:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(a.seed)
    data = load_pairs([a.data], 0.2)
    path = resolve_model(EMBEDDED_ENCODER)
    tok = AutoTokenizer.from_pretrained(path)
    tok.truncation_side = "left"
    drop = {"hidden_dropout_prob": a.dropout, "attention_probs_dropout_prob": a.dropout}
    if a.pool == "cls":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **drop)
    else:
        encoder = AutoModel.from_pretrained(path, **drop)

        class MeanPooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.enc, self.head = encoder, torch.nn.Linear(encoder.config.hidden_size, 1)

            def forward(self, input_ids, attention_mask, **_):
                h = self.enc(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                m = attention_mask[..., None].to(h.dtype)
                return self.head((h * m).sum(1) / m.sum(1))

        model = MeanPooled()

    def encode(pairs):
        return [
            [tok(render(tok, p, t, a.render), truncation=True, max_length=a.max_length)["input_ids"]
             for t in (p.chosen, p.rejected)]
            for p in pairs
        ]  # fmt: skip

    train, held = encode(data.train), encode(data.eval)

    def score(seqs):
        b = tok.pad({"input_ids": seqs}, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            out = model(**b)
        return (out.logits if a.pool == "cls" else out).float()[:, 0]

    lengths = [max(len(c), len(r)) for c, r in train]
    total = round(math.ceil(len(train) / a.batch_size) * a.epochs)
    warm = max(1, round(total * 0.1))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, warm))
    t0, step, epoch = time.perf_counter(), 0, 0
    model.train()
    while step < total:
        for idx in length_buckets(lengths, a.batch_size, a.seed + epoch):
            if step >= total:
                break
            r = score([train[i][0] for i in idx] + [train[i][1] for i in idx])
            torch.nn.functional.softplus(-(r[: len(idx)] - r[len(idx) :])).mean().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            step += 1
        epoch += 1
    seconds = time.perf_counter() - t0
    model.eval()
    wins = 0.0
    with torch.no_grad():
        for s in range(0, len(held), 16):
            chunk = held[s : s + 16]
            r = score([c for c, _ in chunk] + [x for _, x in chunk])
            wins += (r[: len(chunk)] > r[len(chunk) :]).float().sum().item()
    keys = ("pool", "dropout", "render", "lr", "epochs", "batch_size", "max_length", "seed")
    return {**{k: getattr(a, k) for k in keys}, "accuracy": round(wins / len(held), 3),
            "pairs": [len(train), len(held)], "train_s": round(seconds)}  # fmt: skip


def frozen_probes(a: argparse.Namespace) -> None:
    from transformers import AutoModel, AutoTokenizer

    data = load_pairs([a.data], 0.2)
    path = resolve_model(a.frozen)
    tok = AutoTokenizer.from_pretrained(path)
    tok.truncation_side, tok.padding_side = "left", "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModel.from_pretrained(path, dtype=torch.bfloat16 if a.bf16 else torch.float32).eval()

    @torch.no_grad()
    def features(pairs):
        texts = [render(tok, p, t, a.render) for p in pairs for t in (p.chosen, p.rejected)]
        enc = [tok(t, truncation=True, max_length=a.max_length)["input_ids"] for t in texts]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        out: dict = {}
        for s in range(0, len(order), 32):
            idx = order[s : s + 32]
            b = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            m, last = b["attention_mask"], b["attention_mask"].sum(1) - 1
            for layer, h in enumerate(model(**b, output_hidden_states=True).hidden_states[1:], 1):
                h = h.float()
                for pool, v in (("mean", (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)),
                                ("last", h[torch.arange(len(idx)), last])):  # fmt: skip
                    out.setdefault((layer, pool), torch.zeros(len(enc), h.shape[-1]))[idx] = v
        return {k: (v[0::2], v[1::2]) for k, v in out.items()}

    t0 = time.perf_counter()
    train, held = features(data.train), features(data.eval)
    print(json.dumps({"backbone": a.frozen, "feature_seconds": round(time.perf_counter() - t0)}), flush=True)
    for key in sorted(train):
        (c, r), (ce, re) = train[key], held[key]
        sd = torch.cat([c, r]).std(0) + 1e-6
        for wd in (1e-3, 1e-2, 1e-1):
            acc = _logistic_probe((c - r) / sd, (ce - re) / sd, wd)
            print(
                json.dumps({"layer": key[0], "pool": key[1], "weight_decay": wd, "accuracy": round(acc, 3)})
            )


def _logistic_probe(x: torch.Tensor, held: torch.Tensor, wd: float) -> float:
    """Bradley-Terry with a linear reward on feature differences ``(N, H)``; held-out accuracy."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + wd * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((held @ w.detach()) > 0).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--pool", choices=["cls", "mean"], default="cls")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--render", choices=["hh", "last"], default="hh")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", type=int, default=1, help="bf16 autocast (1) or fp32 (0)")
    ap.add_argument(
        "--frozen", help="a backbone to probe frozen, layer by layer, instead of fine-tuning MiniLM"
    )
    a = ap.parse_args()
    if a.frozen:
        frozen_probes(a)
    else:
        print(json.dumps(fine_tune(a)), flush=True)


if __name__ == "__main__":
    main()
