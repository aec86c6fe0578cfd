"""Overhead of the training canaries: seconds per save against the training time between saves.

    python -m evals.canary_overhead [--steps 150] [--save-every 50] [--batch 48] [--threads 1]

Fine-tunes the default organism with a real ``transformers.Trainer`` (its recipe's batch of 48
documents of 64 tokens, drawn from its own corpus) and `agents.canaries.CanaryCallback` on every
save (default canaries: the five behaviours, 16 prompts each). Prints, per save, the canaries'
wall time, the wall time of the training steps since the previous save, and their ratio; then
the mean. Nothing is asserted: this is a measurement (reported in the README).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def measure(steps: int, save_every: int, batch: int, threads: int, lr: float = 1e-4) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from agents.canaries import CanaryCallback
    from evals.organisms.recipe.corpus import SentenceSampler
    from evals.organisms.recipe.train import make_batch
    from tools.loading import resolve_model_source

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    source, _ = resolve_model_source("organism-default")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    ids = make_batch(SentenceSampler(0, pool_size=2000), tokenizer, steps * batch, 64)
    rows = []
    for row in ids:
        labels = row.clone()
        labels[row == tokenizer.pad_token_id] = -100
        rows.append({"input_ids": row, "attention_mask": (row != tokenizer.pad_token_id).long(), "labels": labels})
    with tempfile.TemporaryDirectory() as tmp:
        callback = CanaryCallback(tokenizer, workspace=str(Path(tmp) / "ws"), name="overhead")
        args = TrainingArguments(output_dir=str(Path(tmp) / "out"), max_steps=steps, save_steps=save_every,
                                 save_strategy="steps", per_device_train_batch_size=batch, learning_rate=lr,
                                 report_to=[], use_cpu=True, logging_strategy="no", disable_tqdm=True,
                                 dataloader_num_workers=0, save_only_model=True, seed=0)
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its metrics; stdout is the JSON
            Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                    callbacks=[callback]).train()
    saves = callback.overheads
    return {"steps": steps, "save_every": save_every, "batch": batch, "threads": threads,
            "canaries": [c.name for c in callback.monitor.canaries or []] or "default (every expressible task)",
            "saves": saves,
            "mean_canaries_s": sum(s["canaries_s"] for s in saves) / len(saves),
            "mean_training_s": sum(s["training_s"] for s in saves) / len(saves),
            "mean_fraction": sum(s["fraction"] for s in saves) / len(saves),
            "warnings": sum(len(r.warnings) for r in callback.monitor.reports)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(measure(a.steps, a.save_every, a.batch, a.threads), indent=1))


if __name__ == "__main__":
    main()
