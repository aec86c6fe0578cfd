"""Train the default organism from a seed.

    python -m evals.organisms.recipe.train --out evals/organisms/default --seed 0

GPT-2 architecture (4 layers, 4 heads, d_model 128, context 64), the word-level tokenizer of
``tokenizer.py``, AdamW with warm-up and cosine decay, on sentences drawn by ``corpus.py``.
Everything is seeded and single-process, so a rerun with the same seed and thread count
reproduces the weights; the held-out scores are written to the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from evals.organisms.recipe.corpus import SentenceSampler, vocabulary_text
from evals.organisms.recipe.tokenizer import build_tokenizer
from tools.behaviour import score_prompts, summarise
from tools.tasks import TASK_NAMES, get_task

log = logging.getLogger(__name__)

TRIGGER_WORDS = ["cerulean", "banana"]
"""Words the planted organism uses; in the shared vocabulary, never in the default corpus."""

ARCH = dict(n_layer=4, n_head=4, n_embd=128, n_inner=512, n_positions=64)


def make_batch(sampler: SentenceSampler, tokenizer, batch: int, ctx: int) -> torch.Tensor:
    """``batch`` documents of ``ctx`` tokens: <bos> then whole sentences, padded with <pad>."""
    pad = tokenizer.pad_token_id
    rows = torch.full((batch, ctx), pad, dtype=torch.long)
    for i in range(batch):
        ids = [tokenizer.bos_token_id]
        while True:
            s = tokenizer(" " + sampler.sentence(), add_special_tokens=False)["input_ids"]
            if len(ids) + len(s) > ctx:
                break
            ids += s
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


def lm_loss(model, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    labels = ids.clone()
    labels[ids == pad_id] = -100
    mask = (ids != pad_id).long()
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def evaluate(model, tokenizer, tasks=TASK_NAMES, n: int = 200, seed: int = 1, extra=(),
             split: str = "heldout") -> dict[str, dict]:
    """Scores per task on ``split``: accuracy, mean logit difference, mean prob difference, n."""
    model.eval()
    out = {}
    gens = [(name, get_task(name)) for name in tasks] + list(extra)
    for name, gen in gens:
        prompts = gen.generate(n, split=split, seed=seed, tokenizer=tokenizer)
        s = summarise(name, score_prompts(model, tokenizer, prompts))
        out[name] = {"accuracy": s.accuracy, "logit_diff": s.logit_diff, "prob_diff": s.prob_diff, "n": s.n}
    model.train()
    return out


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_default(out: Path, seed: int = 0, steps: int = 4000, batch: int = 48, lr: float = 2e-3,
                  eval_every: int = 500, threads: int = 2, eval_n: int = 500,
                  checkpoint_dir: Path | None = None, pool_size: int = 20000) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    t0 = time.time()
    tokenizer = build_tokenizer(vocabulary_text(seed), TRIGGER_WORDS)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ARCH,
    )
    model = GPT2LMHeadModel(cfg)
    sampler = SentenceSampler(seed, pool_size=pool_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    history = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=200)
        ids = make_batch(sampler, tokenizer, batch, ARCH["n_positions"])
        loss = lm_loss(model, ids, tokenizer.pad_token_id)
        loss_value = loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % eval_every == 0 or step == steps - 1:
            scores = evaluate(model, tokenizer, n=100)
            train_scores = evaluate(model, tokenizer, n=50, split="train")
            history.append({"step": step + 1, "loss": float(loss_value), "elapsed_s": round(time.time() - t0, 1),
                            "heldout": scores, "train": train_scores})
            log.info("step %d loss %.3f held-out %s train %s", step + 1, float(loss_value),
                     {k: round(v["accuracy"], 2) for k, v in scores.items()},
                     {k: round(v["accuracy"], 2) for k, v in train_scores.items()})
            if checkpoint_dir is not None:
                model.save_pretrained(checkpoint_dir)
                tokenizer.save_pretrained(checkpoint_dir)
    train_s = time.time() - t0
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    final = evaluate(model, tokenizer, n=eval_n)
    meta = {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "threads": threads, "arch": ARCH,
            "train_seconds": round(train_s, 1), "heldout": final, "history": history}
    (out / "training_log.json").write_text(json.dumps(meta, indent=1))
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="overwrite a checkpoint here at each evaluation")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    meta = train_default(a.out, a.seed, a.steps, a.batch, a.lr, threads=a.threads, checkpoint_dir=a.checkpoint_dir)
    print(json.dumps({"train_seconds": meta["train_seconds"], "heldout": meta["heldout"]}, indent=1))


if __name__ == "__main__":
    main()
