"""Activation patching: invariants, and the batched/skipping routine against a naive one."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests._experiment_models import EXPERIMENT_FAMILIES, hf_last_logits, tiny_loaded, word_pairs
from tools.components import Component, parse_component
from tools.experiments import (
    ActivationPatchingSpec,
    Patch,
    PatchSweep,
    PromptPairs,
    cache_run,
    run_activation_patching,
    run_patched_variants,
    tokenize_prompts,
)

ATOL = 1e-5
ALL_SWEEPS = tuple(PatchSweep(site=s, per_position=p) for s, p in itertools.product(
    ["resid_pre", "resid_post", "attn", "mlp", "head"], [False, True]))
_ORDER = {"embed": 0, "resid_pre": 1, "head": 2, "attn": 3, "mlp": 4, "resid_post": 5}


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def loaded(request):
    return tiny_loaded(request.param)


def _every(kind: str, model) -> tuple[Component, ...]:
    adapter = model.adapter
    if kind == "head":
        return tuple(Component("head", l, h) for l in range(adapter.n_layers) for h in range(adapter.n_heads))
    return tuple(Component(kind, l) for l in range(adapter.n_layers))


def naive_patch(model, base_ids, source_ids, lengths, patches) -> torch.Tensor:
    """Last-token logits of one variant, the slow obvious way: adapter.read / adapter.write."""
    adapter, lm = model.adapter, model.lm
    patches = sorted(patches, key=lambda p: (p.component.layer if p.component.layer is not None else -1,
                                             _ORDER[p.component.kind]))
    sources = []
    with lm.trace(source_ids):
        for patch in patches:
            sources.append(adapter.read(lm, patch.component).save())
    with lm.trace(base_ids):
        for patch, source in zip(patches, sources):
            value = adapter.read(lm, patch.component).clone()
            if patch.positions is None:
                value = source
            else:
                for row, length in enumerate(lengths.tolist()):
                    for p in patch.positions:
                        at = p if p >= 0 else length + p
                        value[row, at] = source[row, at]
            adapter.write(lm, patch.component, value)
        logits = lm.output.logits.save()
    return logits[torch.arange(len(lengths)), lengths - 1].detach()


def test_patching_every_clean_activation_reproduces_the_clean_logits(loaded) -> None:
    pairs = word_pairs(n=3, length=[5, 6, 4], seed=1)
    prompts = tokenize_prompts(loaded, pairs, need_corrupted=True, aligned=True)
    n_layers = loaded.adapter.n_layers
    variants = [
        tuple(Patch(c) for c in (Component("embed"),) + _every("attn", loaded) + _every("mlp", loaded)),
        tuple(Patch(c) for c in (Component("embed"),) + _every("head", loaded) + _every("mlp", loaded)),
        tuple(Patch(c) for c in _every("resid_pre", loaded)),
        (Patch(Component("resid_post", n_layers - 1)),),
        (Patch(Component("resid_pre", 0)),),
    ]
    keys = {("resid_post", l) for l in range(n_layers)}
    base, _ = cache_run(loaded, prompts.corrupted, prompts.last, keys)
    from tools.experiments.patching import site_keys

    source, _ = cache_run(loaded, prompts.clean, prompts.last, site_keys(variants))
    logits = run_patched_variants(
        loaded, prompts.corrupted, prompts.lengths, source, variants,
        base_resid_post={l: base[("resid_post", l)] for l in range(n_layers)}, batch_size=7)
    clean = hf_last_logits(loaded, pairs)
    corrupted = hf_last_logits(loaded, pairs, corrupted=True)
    assert (clean - corrupted).abs().max() > 1e-2
    for variant_logits in logits:
        assert (variant_logits - clean).abs().max() <= ATOL

    sets = [tuple(str(p.component) for p in v) for v in variants]
    result = run_activation_patching(loaded, ActivationPatchingSpec(prompts=pairs, sweeps=(),
                                                                    component_sets=sets))
    assert result.normalisable
    for effect in result.component_sets:
        assert effect.effect == pytest.approx(1.0, abs=1e-4)


def test_clean_equal_to_corrupted_gives_no_effect_anywhere(loaded) -> None:
    pairs = word_pairs(n=2, length=5, same=True, seed=2)
    spec = ActivationPatchingSpec(prompts=pairs, sweeps=ALL_SWEEPS,
                                  component_sets=[("embed", "head.1.0", "mlp.0")])
    result = run_activation_patching(loaded, spec)
    assert result.clean_logit_diff == result.corrupted_logit_diff
    assert not result.normalisable and result.top == ()
    unpatched = result.tensors["corrupted_logit_diff"]
    for name, values in result.tensors.items():
        if name.startswith("logit_diff."):
            assert (values - unpatched).abs().max() <= ATOL, name
        if name.startswith("effect."):
            assert torch.isnan(values).all(), name
    assert result.component_sets[0].effect is None


@pytest.mark.parametrize("mode", ["denoising", "noising"])
def test_whole_residual_stream_patch_is_the_source_run(loaded, mode: str) -> None:
    spec = ActivationPatchingSpec(prompts=word_pairs(seed=4), mode=mode,
                                  sweeps=[PatchSweep(site="resid_pre"), PatchSweep(site="resid_post")])
    result = run_activation_patching(loaded, spec)
    expected = 1.0 if mode == "denoising" else 0.0
    for name in ("effect.resid_pre", "effect.resid_post"):
        assert torch.allclose(result.tensors[name], torch.full((2,), expected), atol=1e-4)
    assert result.tensors["effect.resid_pre"][0].item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("mode", ["denoising", "noising"])
def test_batched_skipping_patching_equals_naive_patching(loaded, mode: str) -> None:
    pairs = word_pairs(n=3, length=[4, 6, 5], seed=5)
    spec = ActivationPatchingSpec(prompts=pairs, mode=mode, sweeps=ALL_SWEEPS, positions=(0, -1, -2),
                                  component_sets=[("head.0.1", "head.0.3", "mlp.1"), ("embed", "attn.1")])
    result = run_activation_patching(loaded, spec, batch_size=8)
    prompts = tokenize_prompts(loaded, pairs, need_corrupted=True, aligned=True)
    base, source = (prompts.corrupted, prompts.clean) if mode == "denoising" else (prompts.clean, prompts.corrupted)
    answer_foil = prompts.readout_ids

    def naive_logit_diff(patches) -> torch.Tensor:
        logits = naive_patch(loaded, base, source, prompts.lengths, patches)
        picked = logits.gather(1, answer_foil)
        return picked[:, 0] - picked[:, 1]

    checked = 0
    for sweep in result.sweeps:
        values = result.tensors[f"logit_diff.{sweep.name}"]
        for li, layer in enumerate(sweep.layers):
            for hi, head in enumerate(sweep.heads or [None]):
                name = f"head.{layer}.{head}" if head is not None else f"{sweep.site}.{layer}"
                for pi, position in enumerate(sweep.positions or [None]):
                    index = (li, hi) if sweep.heads else (li,)
                    index += (pi,) if sweep.per_position else ()
                    positions = None if position is None else (position,)
                    expected = naive_logit_diff([Patch(parse_component(name), positions)])
                    assert torch.allclose(values[index], expected, atol=ATOL), (sweep.name, index)
                    checked += 1
    for i, components in enumerate(spec.component_sets):
        expected = naive_logit_diff([Patch(parse_component(c)) for c in components])
        assert torch.allclose(result.tensors["logit_diff.sets"][i], expected, atol=ATOL)
    assert checked == (2 + 2 + 2 + 2 + 8) * 4  # per cell: all positions, then 3 single ones
    # normalisation: 0 = corrupted, 1 = clean
    effect = result.tensors["effect.head"]
    means = result.tensors["logit_diff.head"].mean(-1)
    clean, corrupted = result.clean_logit_diff, result.corrupted_logit_diff
    assert torch.allclose(effect, (means - corrupted) / (clean - corrupted), atol=1e-6)
    top = result.top[0]
    assert abs(top.effect) == max(abs(e.effect) for e in result.top)
    assert not math.isnan(top.effect)


def test_blocks_before_the_first_patched_layer_do_not_run() -> None:
    model = tiny_loaded("gpt2")
    calls = [0, 0]
    # count what runs *inside* each block (a skipped block still passes its own pre-hooks)
    hooks = [block.attn.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, block in enumerate(model.hf_model.transformer.h)]
    try:
        spec = ActivationPatchingSpec(prompts=word_pairs(), layers=(1,),
                                      sweeps=[PatchSweep(site="mlp"), PatchSweep(site="head")])
        run_activation_patching(model, spec, batch_size=100)
    finally:
        for hook in hooks:
            hook.remove()
    # block 0: only the clean and corrupted reference runs; block 1: those and one batched pass
    assert calls == [2, 3]


def test_patching_on_generated_task_prompts() -> None:
    """IOI prompts of two templates (15 and 19 tokens) through a tokenizer that expresses them."""
    from evals.organisms.recipe.corpus import vocabulary_text
    from evals.organisms.recipe.tokenizer import build_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from tools.loading import wrap_model

    tokenizer = build_tokenizer(vocabulary_text(0))
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=64,
                                    vocab_size=len(tokenizer)))
    model = wrap_model(hf, tokenizer, model_id="tiny-ioi")
    pairs = PromptPairs(task="ioi", n=8, seed=0)
    spec = ActivationPatchingSpec(prompts=pairs, positions=(-1, -3),
                                  sweeps=[PatchSweep(site="resid_pre"),
                                          PatchSweep(site="head", per_position=True)])
    result = run_activation_patching(model, spec)
    lengths = {len(tokenizer(p.clean)["input_ids"]) for p in tokenize_prompts(model, pairs).texts}
    assert len(lengths) > 1
    assert result.provenance.seed == 0
    assert torch.allclose(result.tensors["effect.resid_pre"], torch.ones(2), atol=1e-4)
    assert result.tensor_shapes["effect.head_by_pos"] == (2, 2, 2)
