"""Train the default organism from a seed.

    python -m evals.organisms.recipe.train --out evals/organisms/default --seed 0

A short run that saves a checkpoint series for ``sleuth watch`` (a small model on an
induction-heavy mix; see `WATCH_PRESET`)::

    python -m evals.organisms.recipe.train --out /tmp/run --preset watch --checkpoint-every 60

Each checkpoint is an ordinary model folder with its tokenizer, ``OUT/checkpoint-<step>``
(never committed: the tests make their own short series in a temporary folder).

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

WATCH_PRESET = dict(arch=dict(n_layer=2, n_head=2, n_embd=64, n_inner=256, n_positions=32),
                    mixture={"repeats": 1.0}, steps=480, batch=32, lr=5e-3, warmup=30, schedule="constant",
                    eval_every=0)
"""A short run in which induction forms: 2 layers, 2 heads, d_model 64, context 32, constant
learning rate after a 30-step warm-up, on repeated random word sequences only
(`corpus.repeat_sentence`)."""


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


def lr_at(step: int, steps: int, lr: float, warmup: int, schedule: str = "cosine") -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_default(out: Path, seed: int = 0, steps: int = 4000, batch: int = 48, lr: float = 2e-3,
                  eval_every: int = 500, threads: int = 2, eval_n: int = 500,
                  checkpoint_dir: Path | None = None, pool_size: int = 20000,
                  checkpoint_every: int | None = None, arch: dict | None = None,
                  mixture: dict[str, float] | None = None, warmup: int = 200, schedule: str = "cosine",
                  on_checkpoint=None) -> dict:
    """Train from ``seed`` and save the model in ``out``; returns the training log.

    ``checkpoint_every``: also save ``out/checkpoint-<step>`` (model and tokenizer) every that
    many steps; ``arch`` / ``mixture`` replace `ARCH` / the corpus mixture; ``eval_every`` 0
    evaluates only at the end. ``on_checkpoint(model, tokenizer, step)`` is called after each
    checkpoint is saved (e.g. `agents.canaries.run_canaries`); its wall time is logged apart.
    """
    arch = dict(ARCH if arch is None else arch)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    t0 = time.time()
    tokenizer = build_tokenizer(vocabulary_text(seed), TRIGGER_WORDS)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **arch,
    )
    model = GPT2LMHeadModel(cfg)
    sampler = SentenceSampler(seed, pool_size=pool_size, **({} if mixture is None else {"mixture": mixture}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    history, checkpoints = [], []
    hook_seconds = 0.0
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=warmup, schedule=schedule)
        ids = make_batch(sampler, tokenizer, batch, arch["n_positions"])
        loss = lm_loss(model, ids, tokenizer.pad_token_id)
        loss_value = loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            folder = out / f"checkpoint-{step + 1}"
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            checkpoints.append({"step": step + 1, "path": str(folder), "loss": float(loss_value),
                                "elapsed_s": round(time.time() - t0, 2)})
            if on_checkpoint is not None:
                began = time.time()
                model.eval()
                on_checkpoint(model, tokenizer, step + 1)
                model.train()
                hook_seconds += time.time() - began
        if eval_every and ((step + 1) % eval_every == 0 or step == steps - 1):
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
    meta = {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "threads": threads, "arch": arch,
            "mixture": mixture, "warmup": warmup, "schedule": schedule, "train_seconds": round(train_s, 1), "heldout": final,
            "history": history, "checkpoints": checkpoints, "checkpoint_hook_seconds": round(hook_seconds, 3)}
    (out / "training_log.json").write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="default: the preset's (4000 for the organism)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="overwrite a checkpoint here at each evaluation")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="save OUT/checkpoint-<step> (model + tokenizer) every N steps")
    p.add_argument("--preset", choices=("organism", "watch"), default="organism",
                   help="organism (default): the shipped default organism's recipe; watch: a short run of a "
                   "2-layer model on repeated word sequences, in which induction forms")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--mixture", default=None, metavar="KIND=W,...",
                   help="corpus mixture, e.g. repeats=0.7,filler=0.3 (kinds: filler, name_to, repeats, ioi, "
                   "induction, facts, greater_than, pronoun)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--eval-n", type=int, default=500, help="held-out prompts per task in the final evaluation")
    p.add_argument("--canaries", default=None, metavar="WORKSPACE",
                   help="run the training canaries (agents.canaries.run_canaries) at every checkpoint and store "
                   "them in this workspace")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = recipe_settings(a)
    hook = None
    if a.canaries:
        from agents.canaries import CanaryMonitor

        hook = CanaryMonitor(workspace=a.canaries, name=f"recipe:{a.out}")
    meta = train_default(a.out, a.seed, threads=a.threads, checkpoint_dir=a.checkpoint_dir,
                         checkpoint_every=a.checkpoint_every, eval_n=a.eval_n, on_checkpoint=hook, **settings)
    out = {"train_seconds": meta["train_seconds"], "heldout": meta["heldout"],
           "checkpoints": len(meta["checkpoints"]), "checkpoint_hook_seconds": meta["checkpoint_hook_seconds"]}
    if hook is not None:
        out["canaries"] = {**hook.summary(), "report": hook.finish()}
    print(json.dumps(out, indent=1))


def recipe_settings(a: argparse.Namespace) -> dict:
    """The keyword arguments of `train_default` a command line asks for (preset, then overrides)."""
    if a.preset == "watch":
        settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in WATCH_PRESET.items()}
    else:
        settings = {"arch": dict(ARCH), "mixture": None, "steps": 4000, "batch": 48, "lr": 2e-3, "warmup": 200,
                    "schedule": "cosine", "eval_every": 500}
    for flag, key in (("layers", "n_layer"), ("heads", "n_head"), ("d_model", "n_embd"), ("context", "n_positions")):
        if getattr(a, flag) is not None:
            settings["arch"][key] = getattr(a, flag)
    if a.d_model is not None:
        settings["arch"]["n_inner"] = 4 * a.d_model
    for flag in ("steps", "batch", "lr", "warmup", "eval_every"):
        if getattr(a, flag) is not None:
            settings[flag] = getattr(a, flag)
    if a.mixture:
        settings["mixture"] = parse_mixture(a.mixture)
    return settings


def parse_mixture(text: str) -> dict[str, float]:
    """``"repeats=0.7,filler=0.3"`` -> ``{"repeats": 0.7, "filler": 0.3}`` (kinds checked)."""
    from tools.tasks import TASK_NAMES

    kinds = {"filler", "name_to", "repeats", *TASK_NAMES}
    out = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in kinds:
            raise SystemExit(f"--mixture: unknown kind {name!r}; use {', '.join(sorted(kinds))}")
        try:
            out[name] = float(weight)
        except ValueError:
            raise SystemExit(f"--mixture: {part!r} is not KIND=WEIGHT") from None
    return out


if __name__ == "__main__":
    main()
