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


def assert_sweeps_match_naive(result, naive_logit_diff) -> int:
    """Every cell of every sweep of ``result`` equals a naive one-patch run; returns the count."""
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
    return checked


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

    checked = assert_sweeps_match_naive(result, naive_logit_diff)
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


@pytest.mark.parametrize("mode", ["denoising", "noising"])
def test_head_sweep_reuses_base_attention_and_last_position_mlp(loaded, mode: str) -> None:
    """A head sweep's first patched block does not rerun its attention, the last block's MLP
    sees one position per row, and every head's numbers still equal naive patching."""
    adapter = loaded.adapter
    last_block = adapter.n_layers - 1
    pairs = word_pairs(n=3, length=[4, 6, 5], seed=7)
    prompts = tokenize_prompts(loaded, pairs, need_corrupted=True, aligned=True)
    base, source = (prompts.corrupted, prompts.clean) if mode == "denoising" else (prompts.clean, prompts.corrupted)
    # count each attention's query projection (its first weight layer) and the positions the
    # last MLP computes (hooks on the MLP module itself see what nnsight replaced)
    qkv_calls = [0] * adapter.n_layers
    mlp_widths: list[int] = []
    blocks = loaded.hf_model.get_submodule(adapter.paths.blocks)

    def first_weight_layer(module):
        return next(m for m in module.modules() if getattr(m, "weight", None) is not None)

    hooks = [first_weight_layer(blocks[i].get_submodule(adapter.paths.attn)).register_forward_hook(
        lambda *_, i=i: qkv_calls.__setitem__(i, qkv_calls[i] + 1)) for i in range(adapter.n_layers)]
    hooks.append(first_weight_layer(blocks[last_block].get_submodule(adapter.paths.mlp)).register_forward_hook(
        lambda module, args, output: mlp_widths.append(args[0].shape[1])))
    try:
        spec = ActivationPatchingSpec(prompts=pairs, mode=mode, layers=(last_block,),
                                      sweeps=[PatchSweep(site="head")])
        result = run_activation_patching(loaded, spec, batch_size=1000)
    finally:
        for hook in hooks:
            hook.remove()
    # the two reference runs only: the one patched pass skips the whole patched block's attention
    assert qkv_calls[last_block] == 2
    width = prompts.corrupted.shape[1]
    assert mlp_widths == [width, width, 1]
    answer_foil = prompts.readout_ids
    for h in range(adapter.n_heads):
        logits = naive_patch(loaded, base, source, prompts.lengths, [Patch(Component("head", last_block, h))])
        picked = logits.gather(1, answer_foil)
        expected = picked[:, 0] - picked[:, 1]
        assert torch.allclose(result.tensors["logit_diff.head"][0, h], expected, atol=ATOL), h


def test_attention_reuse_and_last_position_mlp_change_no_number(loaded) -> None:
    """`run_patched_variants` with and without the base run's attention cache (and with a
    last-block MLP patch, which turns off the last-position MLP) gives the same logits."""
    adapter = loaded.adapter
    n_layers = adapter.n_layers
    pairs = word_pairs(n=3, length=[5, 4, 6], seed=8)
    prompts = tokenize_prompts(loaded, pairs, need_corrupted=True, aligned=True)
    variants = [(Patch(Component("head", l, h)),) for l in range(n_layers) for h in range(adapter.n_heads)]
    variants += [(Patch(Component("head", 0, 1), (-1,)), Patch(Component("mlp", n_layers - 1))),
                 (Patch(Component("head", 1, 0), (0, -2)),)]
    from tools.experiments.patching import site_keys

    keys = [("resid_post", l) for l in range(n_layers)]
    keys += [("z", l) for l in range(n_layers)]
    base, _ = cache_run(loaded, prompts.corrupted, prompts.last, keys)
    source, _ = cache_run(loaded, prompts.clean, prompts.last, site_keys(variants))
    resid = {l: base[("resid_post", l)] for l in range(n_layers)}
    attention = {l: base[("z", l)] for l in range(n_layers)}
    fast = run_patched_variants(loaded, prompts.corrupted, prompts.lengths, source, variants,
                                base_resid_post=resid, base_attention=attention, batch_size=6)
    plain = run_patched_variants(loaded, prompts.corrupted, prompts.lengths, source, variants,
                                 batch_size=3)
    assert (fast - plain).abs().max() <= ATOL
    for variant, logits in zip(variants[-2:], fast[-2:]):
        expected = naive_patch(loaded, prompts.corrupted, prompts.clean, prompts.lengths, list(variant))
        assert (logits - expected).abs().max() <= ATOL


def _pairs_sharing_a_prefix(shared: int, seed: int) -> PromptPairs:
    """Word prompts whose corrupted version changes only the word after the first ``shared``."""
    pairs = word_pairs(n=3, length=[shared + 2, shared + 3, shared + 1], seed=seed)
    corrupted = []
    for clean in pairs.clean:
        words = clean.split()
        words[shared] = "w61" if words[shared] != "w61" else "w60"
        corrupted.append(" ".join(words))
    return PromptPairs(clean=pairs.clean, corrupted=tuple(corrupted), answer=pairs.answer, foil=pairs.foil)


@pytest.mark.parametrize("mode", ["denoising", "noising"])
def test_shared_prefix_runs_mlps_on_later_positions_only_and_equals_naive(loaded, mode: str) -> None:
    """Clean and corrupted prompts equal up to word 3: every sweep and set still equals naive
    patching, and the patched passes' MLPs before the last block see only the later positions."""
    from tools.experiments.patching import shared_prefix_length

    pairs = _pairs_sharing_a_prefix(3, seed=9)
    prompts = tokenize_prompts(loaded, pairs, need_corrupted=True, aligned=True)
    width = prompts.clean.shape[1]
    prefix = shared_prefix_length(prompts.corrupted, prompts.clean)
    assert 3 <= prefix < width and not torch.equal(prompts.clean, prompts.corrupted)
    adapter = loaded.adapter
    # positions each call of block 0's MLP computes (read from its first weight layer: hooks on
    # the MLP module itself see the arguments and output nnsight replaced)
    widths: list[int] = []
    block0_mlp = loaded.hf_model.get_submodule(adapter.paths.blocks)[0].get_submodule(adapter.paths.mlp)
    first_layer = next(m for m in block0_mlp.modules() if getattr(m, "weight", None) is not None)
    hook = first_layer.register_forward_hook(lambda module, args, output: widths.append(args[0].shape[1]))
    spec = ActivationPatchingSpec(prompts=pairs, mode=mode, sweeps=ALL_SWEEPS, positions=(0, -1),
                                  component_sets=[("head.0.1", "mlp.1"), ("embed", "head.1.0")])
    try:
        result = run_activation_patching(loaded, spec, batch_size=6)
    finally:
        hook.remove()
    assert widths[:2] == [width, width]  # the two reference runs
    assert width - prefix in widths[2:] and set(widths[2:]) <= {width, width - prefix}
    base, source = (prompts.corrupted, prompts.clean) if mode == "denoising" else (prompts.clean, prompts.corrupted)

    def naive_logit_diff(patches) -> torch.Tensor:
        picked = naive_patch(loaded, base, source, prompts.lengths, patches).gather(1, prompts.readout_ids)
        return picked[:, 0] - picked[:, 1]

    assert_sweeps_match_naive(result, naive_logit_diff)
    for i, components in enumerate(spec.component_sets):
        expected = naive_logit_diff([Patch(parse_component(c)) for c in components])
        assert torch.allclose(result.tensors["logit_diff.sets"][i], expected, atol=ATOL)


def test_a_shared_run_widens_to_the_sites_asked_and_reads_back_bit_identical_values(loaded) -> None:
    """Under a memo, one prompt batch asked for different site sets runs at most twice: the
    second run saves every site (it fits the budget) and later asks read it back; every value
    equals a run without the memo bit for bit. With a budget too small for every site, the
    second run saves only the union of what was asked."""
    from tools.experiments.memo import SharedRuns, sharing_runs
    from tools.experiments.patching import all_sites

    n_layers = loaded.adapter.n_layers
    prompts = tokenize_prompts(loaded, word_pairs(n=3, length=[5, 6, 5], seed=21), need_corrupted=True)
    asks = [{("resid_pre", 0), ("resid_post", 1)}, {("z", 0), ("mlp", 1)}, {("attn", 1), ("embed", -1)},
            {("resid_pre", 0), ("z", 1)}]

    def ask_all() -> tuple[list, int, int]:
        calls, rows = loaded.forwards.mark()
        out = [cache_run(loaded, prompts.clean, prompts.last, keys) for keys in asks]
        return out, loaded.forwards.calls - calls, loaded.forwards.rows - rows

    alone, calls_alone, _ = ask_all()
    assert calls_alone == len(asks)
    memo = SharedRuns()
    with sharing_runs(memo):
        together, calls_shared, rows_shared = ask_all()
    assert calls_shared == 2 and rows_shared == 2 * 3
    held = next(iter(memo._items.values()))[0]
    assert set(held[0]) == all_sites(n_layers)
    for (cache_a, final_a), (cache_b, final_b), keys in zip(alone, together, asks):
        assert set(cache_a) == set(cache_b) == keys
        assert torch.equal(final_a, final_b)
        for key in keys:
            assert torch.equal(cache_a[key], cache_b[key]), key

    small = SharedRuns(max_bytes=1)  # nothing fits: every ask runs, and only what it asks
    with sharing_runs(small):
        _, calls_small, _ = ask_all()
    assert calls_small == len(asks) and len(small) == 0
    tight = SharedRuns(max_bytes=4 * sum(v.untyped_storage().nbytes() for v in held[0].values()) // 5)
    with sharing_runs(tight):  # room for the union of the asks, not for every site times four
        ask_all()
    kept = next(iter(tight._items.values()))[0]
    assert set(kept[0]) == set().union(*asks)
