"""The shipped organisms: ordinary HF folders, small, with a ground truth that is true of the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ORGANISMS = Path(__file__).resolve().parents[1] / "evals" / "organisms"


@pytest.mark.parametrize("name", ["default", "planted"])
def test_folder_is_an_ordinary_hf_model_under_20_mb(name):
    folder = ORGANISMS / name
    for f in ("config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"):
        assert (folder / f).is_file(), f
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert size <= 20 * 1024 * 1024


@pytest.mark.parametrize("name", ["default", "planted"])
def test_loads_with_nnsight_language_model(name):
    import warnings

    import nnsight

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = nnsight.LanguageModel(str(ORGANISMS / name), dispatch=True)
    with torch.no_grad(), lm.trace("When Mary and John went to the store, John gave a drink to"):
        logits = lm.output.logits.save()
    assert lm.tokenizer.decode(logits[0, -1].argmax()).strip() == "Mary"


def test_planted_differs_from_default_in_exactly_the_named_component():
    truth = json.loads((ORGANISMS / "planted" / "ground_truth.json").read_text())
    base = load_file(ORGANISMS / "default" / "model.safetensors")
    planted = load_file(ORGANISMS / "planted" / "model.safetensors")
    assert base.keys() == planted.keys()
    changed = {k for k in base if not torch.equal(base[k], planted[k])}
    assert changed, "the planted organism equals the default one"
    assert all(k.startswith(truth["module"] + ".") for k in changed), changed
    assert truth["component"] == "mlp.2" and truth["module"] == "transformer.h.2.mlp"


def test_training_is_deterministic_for_a_seed(tmp_path):
    """Two short runs with the same seed give bitwise-equal weights (the basis of reproducing the
    shipped organism from its recipe)."""
    from evals.organisms.recipe.train import train_default

    a = train_default(tmp_path / "a", seed=7, steps=6, batch=4, eval_every=10**9, eval_n=4, pool_size=200)
    b = train_default(tmp_path / "b", seed=7, steps=6, batch=4, eval_every=10**9, eval_n=4, pool_size=200)
    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["heldout"] == b["heldout"]
