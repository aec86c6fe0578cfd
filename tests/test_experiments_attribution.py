"""Attribution patching: against an independent autograd reference, invariants, and the IOI check.

The reference (`reference_attribution`) runs the plain Hugging Face model one unpadded
prompt at a time, with torch hooks that add ``ε_c · (source − base)`` at every attributed
cell ``c`` (a head slice, a position, a whole site) and differentiates the model's own
logit difference with respect to the ``ε``s at 0: that derivative is, by definition, the
first-order effect that attribution patching estimates. No nnsight and no code of
`tools.experiments.attribution_patching` is involved.
"""

from __future__ import annotations

import math

import pytest
import torch

from evals.attribution_vs_activation import spearman
from tests._experiment_models import EXPERIMENT_FAMILIES, tiny_loaded, word_pairs, uneven_pairs
from tests.test_adapters import tiny_model, tiny_tokenizer
from tools.adapters import adapter_for
from tools.errors import SpecError
from tools.experiments import ActivationPatchingSpec, PatchSweep, PromptPairs, run_activation_patching
from tools.experiments.attribution_patching import (
    AttributionPatchingResult,
    AttributionPatchingSpec,
    run_attribution_patching,
)
from tools.loading import wrap_model

SWEEPS = (
    PatchSweep(site="head"), PatchSweep(site="head", per_position=True), PatchSweep(site="attn"),
    PatchSweep(site="mlp"), PatchSweep(site="resid_pre", per_position=True),
    PatchSweep(site="resid_post"),
)
POSITIONS = (1, -1)


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def loaded(request):
    return tiny_loaded(request.param)


# -- the independent reference --------------------------------------------------------------


def _module(model, kind: str, layer: int | None = None) -> torch.nn.Module:
    paths = model.adapter.paths
    if kind == "embed":
        return model.hf_model.get_submodule(paths.embed)
    block = f"{paths.blocks}.{layer}"
    path = {"resid_pre": block, "resid_post": block, "head": f"{block}.{paths.o_proj}",
            "attn": f"{block}.{paths.post_attn_norm or paths.attn}",
            "mlp": f"{block}.{paths.post_mlp_norm or paths.mlp}"}[kind]
    return model.hf_model.get_submodule(path)


def _hook(model, kind: str, layer: int | None, edit) -> torch.utils.hooks.RemovableHandle:
    """Hook ``edit(value) -> value`` onto a site (block / o_proj inputs, other outputs)."""
    module = _module(model, kind, layer)
    if kind in ("resid_pre", "head"):
        def pre(_, args, kwargs):
            if args:
                return (edit(args[0]), *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=edit(kwargs["hidden_states"]))
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)
    return module.register_forward_hook(post)


def _run(model, ids: torch.Tensor, hooks: list[tuple[str, int | None, object]]) -> torch.Tensor:
    handles = [_hook(model, kind, layer, edit) for kind, layer, edit in hooks]
    try:
        return model.hf_model(ids[None]).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()


def _capture(model, ids: torch.Tensor, sites: list[tuple[str, int | None]]) -> dict:
    values = {}

    def keep(site):
        def edit(value):
            values[site] = value.detach().clone()
            return value
        return edit

    with torch.no_grad():
        _run(model, ids, [(kind, layer, keep((kind, layer))) for kind, layer in sites])
    return values


def reference_attribution(model, pairs: PromptPairs, cells: list[tuple], *, mode: str = "denoising",
                          steps: int | None = None) -> torch.Tensor:
    """``d logit_diff / d ε_c`` at ``ε = 0`` per cell and prompt ``[cell, prompt]``.

    A cell is ``(kind, layer, head or None, position or None)``. With ``steps``, the
    derivative is averaged over the midpoints of the straight path between the base and
    source token embeddings (integrated gradients on the input embeddings).
    """
    d_head = model.adapter.d_head
    sites = sorted({(kind, layer) for kind, layer, _, _ in cells}) + [("embed", None)]
    out = []
    for i, (clean, corrupted) in enumerate(zip(pairs.clean, pairs.corrupted)):
        base_text, source_text = (corrupted, clean) if mode == "denoising" else (clean, corrupted)
        base_ids, source_ids = (torch.tensor(model.tokenizer(t)["input_ids"])
                                for t in (base_text, source_text))
        answer, foil = (model.tokenizer.convert_tokens_to_ids(w.strip())
                        for w in (pairs.answer[i], pairs.foil[i]))
        base, source = _capture(model, base_ids, sites), _capture(model, source_ids, sites)
        n = len(base_ids)
        deltas = []
        for kind, layer, head, position in cells:
            mask = torch.zeros_like(base[(kind, layer)][0])
            rows = slice(None) if position is None else [position % n]
            features = slice(None) if head is None else slice(head * d_head, (head + 1) * d_head)
            mask[rows, features] = 1
            deltas.append((source[(kind, layer)] - base[(kind, layer)]) * mask)
        alphas = [None] if steps is None else [(j + 0.5) / steps for j in range(steps)]
        total = torch.zeros(len(cells))
        for alpha in alphas:
            eps = torch.zeros(len(cells), requires_grad=True)

            def add(site):
                def edit(value):
                    for c, (kind, layer, _, _) in enumerate(cells):
                        if (kind, layer) == site:
                            value = value + eps[c] * deltas[c]
                    return value
                return edit

            hooks = [(kind, layer, add((kind, layer))) for kind, layer in sites[:-1]]
            if alpha is not None:
                e0, e1 = base[("embed", None)], source[("embed", None)]
                hooks.insert(0, ("embed", None, lambda _v, e0=e0, e1=e1, a=alpha: e0 + a * (e1 - e0)))
            logits = _run(model, base_ids, hooks)
            total += torch.autograd.grad(logits[answer] - logits[foil], eps)[0]
        out.append(total / len(alphas))
    return torch.stack(out, dim=1)


def _cells(result: AttributionPatchingResult) -> tuple[list[tuple], torch.Tensor]:
    """Every cell of every sweep and its per-prompt attribution ``[cell, prompt]``."""
    cells, values = [], []
    for sweep in result.sweeps:
        tensor = result.tensors[f"attribution.{sweep.name}"]
        kind = sweep.site
        for li, layer in enumerate(sweep.layers):
            for hi, head in enumerate(sweep.heads or [None]):
                for pi, position in enumerate(sweep.positions or [None]):
                    index = (li,) + ((hi,) if sweep.heads else ()) + ((pi,) if sweep.per_position else ())
                    cells.append((kind, layer, head, position))
                    values.append(tensor[index])
    return cells, torch.stack(values)


# -- agreement with the reference -------------------------------------------------------------


@pytest.mark.parametrize(("method", "mode"), [("gradient", "denoising"), ("gradient", "noising"),
                                              ("integrated_gradients", "denoising")])
def test_attribution_is_the_derivative_of_a_scaled_patch(loaded, method: str, mode: str) -> None:
    pairs = word_pairs(n=3, length=[5, 6, 4], seed=7)
    steps = 3 if method == "integrated_gradients" else None
    spec = AttributionPatchingSpec(prompts=pairs, method=method, ig_steps=steps, mode=mode,
                                   sweeps=SWEEPS, positions=POSITIONS)
    result = run_attribution_patching(loaded, spec, batch_size=4)  # splits prompts and steps
    cells, ours = _cells(result)
    expected = reference_attribution(loaded, pairs, cells, mode=mode, steps=steps)
    assert expected.abs().max() > 1e-2
    assert torch.allclose(ours, expected, atol=1e-4, rtol=1e-4), (ours - expected).abs().max()
    # and the normalisation: activation patching's scale, from the real clean / corrupted runs
    clean, corrupted = result.clean_logit_diff, result.corrupted_logit_diff
    base = corrupted if mode == "denoising" else clean
    effect = result.tensors["effect.head"]
    expected_effect = (base + result.tensors["attribution.head"].mean(-1) - corrupted) / (clean - corrupted)
    assert torch.allclose(effect, expected_effect, atol=1e-6)
    assert result.steps == (3 if steps else 1)


def test_shapes_names_and_top(loaded) -> None:
    spec = AttributionPatchingSpec(prompts=word_pairs(n=2, length=5, seed=8),
                                   sweeps=SWEEPS + (PatchSweep(site="attn", per_position=True),))
    result = run_attribution_patching(loaded, spec)
    n_layers, n_heads = loaded.adapter.n_layers, loaded.adapter.n_heads
    expected = {"head": (n_layers, n_heads), "head_by_pos": (n_layers, n_heads, 5),
                "attn": (n_layers,), "mlp": (n_layers,), "resid_pre_by_pos": (n_layers, 5),
                "resid_post": (n_layers,), "attn_by_pos": (n_layers, 5)}
    for name, shape in expected.items():
        assert result.tensors[f"effect.{name}"].shape == shape
        assert result.tensors[f"attribution.{name}"].shape == shape + (2,)
        assert torch.isfinite(result.tensors[f"effect.{name}"]).all()
    assert [s.name for s in result.sweeps] == [s.name for s in spec.sweeps]
    assert result.sweeps[1].axes == ("layer", "head", "position")
    # summed over positions == the sum of the per-position terms
    by_pos = result.tensors["attribution.head_by_pos"].sum(dim=2)
    assert torch.allclose(by_pos, result.tensors["attribution.head"], atol=1e-5)
    top = result.top
    assert len(top) == 10 and all(abs(a.effect) >= abs(b.effect) for a, b in zip(top, top[1:]))
    largest = max(float(result.tensors[f"effect.{s.name}"].abs().max()) for s in result.sweeps)
    assert abs(top[0].effect) == pytest.approx(largest)


def test_no_parameter_gradients_are_left_behind(loaded) -> None:
    spec = AttributionPatchingSpec(prompts=word_pairs(n=2, seed=9), method="integrated_gradients")
    run_attribution_patching(loaded, spec)
    assert all(p.grad is None for p in loaded.hf_model.parameters())


# -- invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients"])
def test_clean_equal_to_corrupted_gives_zero_attribution_everywhere(loaded, method: str) -> None:
    spec = AttributionPatchingSpec(prompts=word_pairs(n=2, length=5, same=True, seed=10),
                                   method=method, sweeps=SWEEPS)
    result = run_attribution_patching(loaded, spec)
    assert result.clean_logit_diff == result.corrupted_logit_diff
    assert not result.normalisable and result.top == () and result.embedding_effect is None
    for name, values in result.tensors.items():
        if name.startswith("attribution."):
            assert torch.equal(values, torch.zeros_like(values)), name
        if name.startswith("effect."):
            assert torch.isnan(values).all(), name


@pytest.mark.parametrize("family", EXPERIMENT_FAMILIES)
def test_where_the_metric_is_linear_attribution_is_activation_patching(family: str) -> None:
    """Without the final norm, the logit difference is linear in the last block's output and
    (the last thing added to it) the last MLP's output: the first-order estimate is exact.
    Denoising on two families, noising on the other two."""
    hf = tiny_model(family)
    hf.set_submodule(adapter_for(hf.config).paths.final_norm, torch.nn.Identity())
    model = wrap_model(hf, tiny_tokenizer(), model_id=f"tiny-{family}-no-final-norm")
    last = model.adapter.n_layers - 1
    pairs = word_pairs(n=3, length=6, seed=11)
    sweeps = (PatchSweep(site="mlp"), PatchSweep(site="resid_post"))
    mode = "denoising" if family in ("gpt2", "llama") else "noising"
    patched = run_activation_patching(model, ActivationPatchingSpec(
        prompts=pairs, mode=mode, sweeps=sweeps, layers=(0, last)))
    for method in ("gradient", "integrated_gradients"):
        estimated = run_attribution_patching(model, AttributionPatchingSpec(
            prompts=pairs, mode=mode, method=method, sweeps=sweeps, layers=(0, last)))
        for name in ("effect.mlp", "effect.resid_post"):
            exact, ours = patched.tensors[name][1], estimated.tensors[name][1]
            assert abs(float(ours - exact)) <= 1e-4, (method, name, float(ours), float(exact))
        # not vacuous: at layer 0 the metric is not linear in the MLP output, and they differ
        if method == "gradient":
            assert abs(float(estimated.tensors["effect.mlp"][0] - patched.tensors["effect.mlp"][0])) > 1e-3


def test_integrated_gradients_converge_on_the_whole_embedding_patch(loaded) -> None:
    """Completeness: along the embedding path, the embedding's attribution integrates to the
    full effect, which activation patching of ``resid_pre.0`` (every position) measures."""
    pairs = word_pairs(n=3, length=6, seed=12)
    exact = run_activation_patching(loaded, ActivationPatchingSpec(
        prompts=pairs, sweeps=[PatchSweep(site="resid_pre")], layers=(0,)))
    assert exact.tensors["effect.resid_pre"][0] == pytest.approx(1.0, abs=1e-4)

    def error(**options) -> float:
        """|estimated − exact| change of the mean logit difference for the whole embedding patch."""
        result = run_attribution_patching(loaded, AttributionPatchingSpec(
            prompts=pairs, sweeps=[PatchSweep(site="resid_pre")], layers=(0,), **options))
        # the embedding and resid_pre.0 differ by position embeddings only: the same patch
        assert float(result.tensors["attribution.resid_pre"].mean()) == pytest.approx(
            float(result.tensors["attribution.embed"].mean()), abs=1e-5)
        exact_change = result.clean_logit_diff - result.corrupted_logit_diff
        return abs(float(result.tensors["attribution.embed"].mean()) - exact_change)

    gradient = error()
    ig = [error(method="integrated_gradients", ig_steps=k) for k in (8, 32)]
    assert gradient > 1e-2  # the model is not linear along this path
    assert ig[0] > ig[1] or ig[1] < 1e-5
    assert ig[1] < 1e-2 and ig[1] < gradient / 10


def test_integrated_gradients_noising_mirrors_denoising(loaded) -> None:
    """Midpoints are symmetric, so the noising path meets the same points: effects are 1 − d."""
    pairs = word_pairs(n=2, length=5, seed=13)
    results = [run_attribution_patching(loaded, AttributionPatchingSpec(
        prompts=pairs, method="integrated_gradients", ig_steps=4, mode=mode, sweeps=SWEEPS,
        positions=POSITIONS)) for mode in ("denoising", "noising")]
    for sweep in SWEEPS:
        denoising, noising = (r.tensors[f"effect.{sweep.name}"] for r in results)
        assert torch.allclose(noising, 1 - denoising, atol=1e-4), sweep.name


def test_batch_size_never_changes_the_numbers() -> None:
    model = tiny_loaded("llama")
    spec = AttributionPatchingSpec(prompts=word_pairs(n=3, length=[4, 6, 3], seed=14),
                                   method="integrated_gradients", ig_steps=3, sweeps=SWEEPS,
                                   positions=(0, -1))
    big, small = (run_attribution_patching(model, spec, batch_size=b) for b in (64, 2))
    assert big.tensors.keys() == small.tensors.keys()
    for name in big.tensors:
        assert torch.allclose(big.tensors[name], small.tensors[name], atol=1e-5), name


def test_result_round_trip(tmp_path) -> None:
    model = tiny_loaded("gpt2")
    result = run_attribution_patching(model, AttributionPatchingSpec(prompts=word_pairs(seed=15)))
    again = AttributionPatchingResult.load(result.save(tmp_path))
    assert again == result
    assert AttributionPatchingSpec.model_validate_json(result.spec.model_dump_json()) == result.spec


# -- bad specs: SpecError naming the field, before any forward pass ----------------------------




@pytest.mark.parametrize(
    ("options", "field"),
    [
        (dict(positions=(6,)), "positions[0]"),
        (dict(positions=(-7,)), "positions[0]"),
        (dict(prompts=word_pairs(length=[4, 5])), "positions"),
        (dict(prompts=uneven_pairs()), "prompts.corrupted[1]"),
        (dict(layers=(0, 2)), "layers[1]"),
        (dict(heads=(4,)), "heads[0]"),
    ],
)
def test_model_dependent_mistakes_raise_before_any_forward(no_forward, options, field: str) -> None:
    spec = AttributionPatchingSpec(**{"prompts": word_pairs(), **options})
    with pytest.raises(SpecError) as error:
        run_attribution_patching(no_forward, spec)
    assert error.value.field == field


def test_the_forward_guard_is_real(no_forward) -> None:
    with pytest.raises(AssertionError, match="forward pass"):
        run_attribution_patching(no_forward, AttributionPatchingSpec(prompts=word_pairs()))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (dict(method="integrated_gradients", ig_steps=0), "ig_steps"),
        (dict(method="integrated_gradients", ig_steps=-3), "ig_steps"),
        (dict(method="integrated_gradients", ig_steps=10_000), "ig_steps"),
        (dict(ig_steps=5), "ig_steps"),
        (dict(sweeps=()), "sweeps"),
        (dict(sweeps=(PatchSweep(site="mlp"), PatchSweep(site="mlp"))), "sweeps"),
        (dict(sweeps=({"site": "embed"},)), "sweeps[0].site"),
        (dict(prompts=word_pairs().model_copy(update={"corrupted": ()})), "prompts.corrupted"),
    ],
)
def test_spec_mistakes_raise_when_the_spec_is_built(options, field: str) -> None:
    with pytest.raises(SpecError) as error:
        AttributionPatchingSpec(**{"prompts": word_pairs(), **options})
    assert error.value.field == field


def test_ig_steps_default_and_json() -> None:
    spec = AttributionPatchingSpec.model_validate_json(
        '{"kind": "attribution_patching", "method": "integrated_gradients", '
        '"prompts": {"task": "ioi", "n": 4}}')
    assert spec.steps == 5 and AttributionPatchingSpec(prompts=word_pairs()).steps == 1


# -- the acceptance check: attribution ranks heads like activation patching on IOI -------------


def test_spearman_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(30, generator=rng)
    y = x + torch.randn(30, generator=rng)
    y[3] = y[4]  # a tie
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-9)
    assert spearman(x, x) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, torch.ones(30)))


@pytest.fixture(scope="module")
def organism():
    from tools.loading import load_model

    return load_model("organism-default")


def test_attribution_ranks_ioi_heads_like_activation_patching(organism) -> None:
    from evals.attribution_vs_activation import compare_head_effects
    from tools.tasks import get_task

    items = get_task("ioi").generate(32, split="heldout", seed=0, tokenizer=organism.tokenizer)
    for item in items:  # positions are compared one to one
        assert len(organism.tokenizer(item.clean)["input_ids"]) == len(
            organism.tokenizer(item.corrupted)["input_ids"])
    comparison = compare_head_effects(organism, n_prompts=32, seed=0)
    assert comparison.n_heads == 16 and comparison.activation_patching.normalisable
    for method, rho in comparison.spearman.items():
        print(f"\nSpearman(attribution [{method}], activation patching), 16 IOI heads: {rho:.3f}")
    assert set(comparison.spearman) == {"gradient", "integrated_gradients"}
    assert all(rho >= 0.8 for rho in comparison.spearman.values()), comparison.spearman
