"""The training-time hook: `CanaryCallback` inside a real ``transformers.Trainer`` on an organism.

The overhead of each save's canaries, as a fraction of the wall time of the training steps
since the previous save, is printed (``-s`` shows it), never asserted.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from agents.canaries import CanaryCallback, Canary
from tools.experiments import PromptPairs

CANARIES = [Canary(name=name, prompts=PromptPairs(task=name, n=16, split="heldout", seed=1))
            for name in ("ioi", "induction")]


def _dataset(tokenizer, n: int = 48, length: int = 32):
    """``n`` blocks of ``length`` tokens of the organism's own training corpus."""
    from evals.organisms.recipe.corpus import SentenceSampler
    from evals.organisms.recipe.train import make_batch

    ids = make_batch(SentenceSampler(0, pool_size=200), tokenizer, n, length)
    rows = []
    for row in ids:
        labels = row.clone()
        labels[row == tokenizer.pad_token_id] = -100
        rows.append({"input_ids": row, "attention_mask": (row != tokenizer.pad_token_id).long(), "labels": labels})
    return rows


def _train(tmp_path, lr: float, workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from tools.loading import resolve_model_source

    torch.manual_seed(0)
    source, _ = resolve_model_source("organism-default")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    callback = CanaryCallback(tokenizer, workspace=str(workspace), name=f"test lr={lr}", canaries=CANARIES)
    args = TrainingArguments(output_dir=str(tmp_path / f"out-{lr}"), max_steps=6, save_steps=2, save_strategy="steps",
                             per_device_train_batch_size=8, learning_rate=lr, lr_scheduler_type="constant",
                             warmup_steps=0, weight_decay=0.0, report_to=[], use_cpu=True, logging_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=0, save_only_model=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(tokenizer), processing_class=tokenizer,
                      callbacks=[callback])
    trainer.train()
    return callback, trainer


def _overheads(callback) -> str:
    return ", ".join(f"step {o['step']}: {o['canaries_s']:.2f} s of canaries / {o['training_s']:.2f} s of training "
                     f"({o['fraction']:.0%})" for o in callback.overheads)


def test_callback_in_a_trainer_stores_fingerprints_and_warns_only_when_something_moves(tmp_path, caplog):
    workspace = tmp_path / "ws"
    with caplog.at_level(logging.WARNING, logger="agents.canaries"):
        still, _ = _train(tmp_path, 0.0, workspace)
    quiet = [r for r in caplog.records if r.name == "agents.canaries"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agents.canaries"):
        moving, trainer = _train(tmp_path, 3e-2, workspace)
    loud = [r.getMessage() for r in caplog.records if r.name == "agents.canaries"]
    print(f"\ncanary overhead per save (lr 0): {_overheads(still)}\ncanary overhead per save (lr 3e-2): "
          f"{_overheads(moving)}")

    # the callback fired at every save, on the trainer's own model, and stored every reading
    assert [o["step"] for o in still.overheads] == [2, 4, 6] == [o["step"] for o in moving.overheads]
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    store = RunStore(Workspace.open(workspace))
    for callback in (still, moving):
        run = store.open(callback.monitor.run_id)
        record = run.investigation()
        assert run.record.settings["kind"] == "watch" and record["source"] == "training"
        assert [c["step"] for c in record["checkpoints"]] == [2, 4, 6]
        keys = [k for c in record["checkpoints"] for pair in c["evidence"].values() for k in pair]
        assert len(set(keys)) == len(keys) or callback is still  # lr 0: the same weights, the same results
        assert set(keys) <= set(run.experiment_keys())
        for key in keys:
            assert (ws_cache := workspace / "cache" / "experiments" / f"{key}.json").is_file(), ws_cache
    # with the learning rate at 0 nothing moves: the same weights at every save, no warning
    hashes = {c["weights_hash"] for c in store.open(still.monitor.run_id).investigation()["checkpoints"]}
    assert len(hashes) == 1
    assert quiet == []
    fingerprints = [r.fingerprint for r in still.monitor.reports[0].readings]
    assert fingerprints == [r.fingerprint for r in still.monitor.reports[-1].readings]
    # with a large learning rate the canaries move, and the warnings say which and why
    assert len({c["weights_hash"] for c in store.open(moving.monitor.run_id).investigation()["checkpoints"]}) == 3
    assert loud, "no warning although the weights moved by a large learning rate"
    assert all("canary 'ioi'" in m or "canary 'induction'" in m for m in loud)
    assert any("moved" in m or "shifted" in m for m in loud)
    assert sum(len(r.warnings) for r in moving.monitor.reports) == len(loud)
    # the model is left in training mode with no gradient from the canaries
    assert trainer.model.training
    # the stored run renders as a watch report (timeline per canary)
    from agents.report.render import render

    html = render(store.open(moving.monitor.run_id), "html")
    assert "Timeline: ioi" in html and "Timeline: induction" in html and "<script" not in html
    assert moving.report and open(moving.report["html"]).read() == html  # written when training ended
    assert store.open(moving.monitor.run_id).record.status == "answered"


def test_run_canaries_in_a_plain_loop_reads_the_previous_save_from_the_workspace(tmp_path):
    """The plain function keeps no state: the second call compares with the first through the store."""
    from agents.canaries import run_canaries
    from tools.loading import load_model

    loaded = load_model("organism-default")
    model, tokenizer = loaded.hf_model, loaded.tokenizer
    first = run_canaries(model, tokenizer, 10, workspace=tmp_path / "ws", canaries=CANARIES[:1], name="loop")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # a drastic change: the behaviour must move
    second = run_canaries(model, tokenizer, 20, workspace=tmp_path / "ws", run_id=first.run_id, canaries=CANARIES[:1],
                          name="loop")
    assert first.warnings == () and second.warnings
    assert second.run_id == first.run_id
    record = json.loads((tmp_path / "ws" / "runs" / first.run_id / "investigation.json").read_text())
    assert [c["step"] for c in record["checkpoints"]] == [10, 20]
    assert second.readings[0].logit_diff != first.readings[0].logit_diff


@pytest.mark.parametrize("bad", ["missing", "unknown", "twice", "not-a-list"])
def test_bad_behaviours_files_are_one_clear_error(tmp_path, bad):
    from agents.canaries import load_canaries
    from tools.errors import UserInputError
    from tools.loading import load_model

    tokenizer = load_model("organism-default").tokenizer
    path = tmp_path / "b.yaml"
    if bad != "missing":
        path.write_text({"unknown": "[induction, telepathy]", "twice": "[ioi, ioi]",
                         "not-a-list": "behaviours: 3"}[bad])
    with pytest.raises(UserInputError) as error:
        load_canaries(path, tokenizer)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
