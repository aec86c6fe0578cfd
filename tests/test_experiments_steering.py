"""Steering against plain Hugging Face runs with a hand-written hook, and its invariants.

The reference for every steered number is an ordinary forward (or ``generate``) of an
independent copy of the weights, one unpadded prompt at a time, with a PyTorch hook that
adds ``α·v`` at the site — no nnsight, no batching, no skipped blocks.
"""

from __future__ import annotations

import pytest
import torch

from tests._experiment_models import EXPERIMENT_FAMILIES, hf_last_logits, tiny_loaded, token_ids, word_pairs
from tests.test_adapters import tiny_model
from tools.components import parse_component
from tools.errors import SpecError
from tools.experiments.prompts import PromptPairs
from tools.experiments.steering import (
    ComponentOutputDirection,
    MeanDifferenceDirection,
    SteeringResult,
    SteeringSpec,
    UnembeddingDirection,
    run_steering,
)
from tools.loading import load_model

ATOL = 1e-5


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def loaded(family):
    return tiny_loaded(family)


@pytest.fixture(scope="module")
def fresh(family):
    """The same weights as ``loaded``, never wrapped by nnsight."""
    return tiny_model(family)


@pytest.fixture(scope="module")
def pairs():
    """Clean and corrupted prompts of different lengths (padding is exercised)."""
    return word_pairs(n=3, length=[4, 7, 5], seed=5)


@pytest.fixture(scope="module")
def organism():
    return load_model("organism-default")


def _ids(model, text: str) -> torch.Tensor:
    return torch.tensor([model.tokenizer(text)["input_ids"]])


def _add_hook(hf, adapter, site: str, vector: torch.Tensor, positions):
    """Register a hook adding ``vector`` at ``site`` (every position when ``positions`` is
    None, else those of the unpadded prompt); returns its handle."""
    component = parse_component(site)
    block = hf.get_submodule(adapter.paths.blocks)[component.layer]

    def add(x: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(x)
        columns = slice(None) if positions is None else [p % x.shape[1] for p in positions]
        delta[:, columns] = vector.to(x.dtype)
        return x + delta

    if component.kind == "resid_pre":
        def pre(module, args, kwargs):
            if args:
                return (add(args[0]), *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=add(kwargs["hidden_states"]))
        return block.register_forward_pre_hook(pre, with_kwargs=True)
    paths = adapter.paths
    if component.kind == "resid_post":
        target = block
    elif component.kind == "attn":  # what attention adds: after Gemma's post-attention norm
        target = block.get_submodule(paths.post_attn_norm or paths.attn)
    else:
        target = block.get_submodule(paths.post_mlp_norm or paths.mlp)

    def post(module, args, out):
        return (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out)
    return target.register_forward_hook(post)


def _hooked_logit_diffs(model, hf, pairs, site, vector, positions) -> torch.Tensor:
    answer, foil = token_ids(model, pairs.answer), token_ids(model, pairs.foil)
    handle = _add_hook(hf, model.adapter, site, vector, positions)
    try:
        out = []
        for i, text in enumerate(pairs.clean):
            with torch.no_grad():
                logits = hf(_ids(model, text)).logits[0, -1]
            out.append(logits[answer[i]] - logits[foil[i]])
        return torch.stack(out)
    finally:
        handle.remove()


# -- invariants --------------------------------------------------------------------------------


def test_alpha_zero_changes_nothing(loaded, pairs) -> None:
    spec = SteeringSpec(prompts=pairs, direction=MeanDifferenceDirection(site="resid_pre.1"),
                        site="resid_pre.1", alphas=(-2.0, 0.0, 1.5))
    result = run_steering(loaded, spec, batch_size=4)
    baseline = result.tensors["baseline_logit_diff"]
    assert (result.tensors["logit_diff"][1] - baseline).abs().max() <= 1e-6
    assert (result.tensors["control_logit_diff"][1] - baseline).abs().max() <= 1e-6
    logits = hf_last_logits(loaded, pairs)
    rows = torch.arange(len(pairs.clean))
    plain = logits[rows, token_ids(loaded, pairs.answer)] - logits[rows, token_ids(loaded, pairs.foil)]
    assert (baseline - plain).abs().max() <= ATOL
    # and steering does something at α != 0
    assert (result.tensors["logit_diff"][0] - baseline).abs().max() > 1e-3


@pytest.mark.parametrize(("site", "positions"), [
    ("resid_pre.1", (-1, 0)), ("attn.0", None), ("mlp.1", (-1,)), ("resid_post.0", (1,)),
])
def test_steered_logits_match_a_plain_hook(loaded, fresh, pairs, site, positions) -> None:
    alphas = (1.5, -3.0)
    spec = SteeringSpec(prompts=pairs, direction=MeanDifferenceDirection(site="resid_post.0"),
                        site=site, positions=positions, alphas=alphas, control=False)
    result = run_steering(loaded, spec, batch_size=3)  # one variant per pass: chunking exercised
    v = result.tensors["direction"]
    for a, alpha in enumerate(alphas):
        expected = _hooked_logit_diffs(loaded, fresh, pairs, site, alpha * v, positions)
        assert (result.tensors["logit_diff"][a] - expected).abs().max() <= ATOL


def test_control_is_a_seeded_random_direction_of_the_same_norm(pairs) -> None:
    model = tiny_loaded("gpt2")
    spec = SteeringSpec(prompts=pairs, direction=MeanDifferenceDirection(site="resid_pre.1"),
                        site="resid_pre.1", alphas=(1.0,))
    result = run_steering(model, spec)
    v, r = result.tensors["direction"], result.tensors["control_direction"]
    assert float(r.norm()) == pytest.approx(float(v.norm()), rel=1e-6)
    assert result.direction_norm == pytest.approx(float(v.norm())) == pytest.approx(result.raw_direction_norm)
    assert abs(float(torch.nn.functional.cosine_similarity(v, r, dim=0))) < 0.9
    again = run_steering(model, spec)
    other = run_steering(model, spec.model_copy(update={"control_seed": 1}))
    assert torch.equal(again.tensors["control_direction"], r)
    assert not torch.allclose(other.tensors["control_direction"], r)
    unit = run_steering(model, spec.model_copy(update={"normalise": True}))
    assert float(unit.tensors["direction"].norm()) == pytest.approx(1.0, rel=1e-6)
    assert float(unit.tensors["control_direction"].norm()) == pytest.approx(1.0, rel=1e-6)
    assert unit.raw_direction_norm == pytest.approx(float(v.norm()), rel=1e-6)
    assert torch.allclose(unit.tensors["direction"] * unit.raw_direction_norm, v, atol=1e-6)


# -- directions against hand computations ------------------------------------------------------------


def test_mean_difference_equals_a_hand_computation(loaded, fresh, pairs) -> None:
    position = -1
    spec = SteeringSpec(prompts=pairs, direction=MeanDifferenceDirection(site="resid_pre.1"),
                        site="resid_pre.1", alphas=(1.0,), control=False)
    result = run_steering(loaded, spec)

    def mean_resid_pre_1(texts):
        rows = []
        for text in texts:
            with torch.no_grad():
                hidden = fresh(_ids(loaded, text), output_hidden_states=True).hidden_states
            rows.append(hidden[1][0, position])  # hidden_states[L] enters block L
        return torch.stack(rows).mean(0)

    expected = mean_resid_pre_1(pairs.clean) - mean_resid_pre_1(pairs.corrupted)
    assert (result.tensors["direction"] - expected).abs().max() <= ATOL
    position = 2  # and another position, on sets of the direction's own
    own_sets = SteeringSpec(
        prompts=pairs, site="resid_pre.1", alphas=(1.0,), control=False,
        direction=MeanDifferenceDirection(site="resid_pre.1", position=position,
                                          positive=pairs.corrupted[:2], negative=pairs.clean[1:]))
    result = run_steering(loaded, own_sets)
    expected = mean_resid_pre_1(pairs.corrupted[:2]) - mean_resid_pre_1(pairs.clean[1:])
    assert (result.tensors["direction"] - expected).abs().max() <= ATOL


def test_component_output_direction_equals_a_hand_computation(pairs) -> None:
    model, fresh = tiny_loaded("gpt2"), tiny_model("gpt2")
    spec = SteeringSpec(prompts=pairs, direction=ComponentOutputDirection(component="head.1.2"),
                        site="resid_pre.1", alphas=(1.0,), control=False)
    result = run_steering(model, spec)
    attn = fresh.transformer.h[1].attn
    d_head = 32 // 4
    writes = []
    for text in pairs.clean:
        seen = {}
        handle = attn.c_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0]))
        try:
            with torch.no_grad():
                fresh(_ids(model, text))
        finally:
            handle.remove()
        z_head = seen["z"][0, -1, 2 * d_head:3 * d_head]
        writes.append(z_head @ attn.c_proj.weight[2 * d_head:3 * d_head])  # Conv1D: [in, out]
    assert (result.tensors["direction"] - torch.stack(writes).mean(0)).abs().max() <= ATOL

    gemma, gemma_fresh = tiny_loaded("gemma3"), tiny_model("gemma3")
    spec = SteeringSpec(prompts=pairs, direction=ComponentOutputDirection(component="mlp.1", position=1),
                        site="resid_pre.1", alphas=(1.0,), control=False)
    result = run_steering(gemma, spec)
    outputs = []
    norm = gemma_fresh.model.layers[1].post_feedforward_layernorm  # Gemma 3 writes the normed MLP out
    for text in pairs.clean:
        seen = {}
        handle = norm.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))
        try:
            with torch.no_grad():
                gemma_fresh(_ids(gemma, text))
        finally:
            handle.remove()
        outputs.append(seen["out"][0, 1])
    assert (result.tensors["direction"] - torch.stack(outputs).mean(0)).abs().max() <= ATOL


# -- dose-response ---------------------------------------------------------------------------------


def _shared_readout(texts, answer: str, foil: str) -> PromptPairs:
    return PromptPairs(clean=tuple(texts), answer=(answer,) * len(texts), foil=(foil,) * len(texts))


def _assert_monotone(result: SteeringResult) -> None:
    per_prompt = result.tensors["logit_diff"]  # [alpha, prompt]
    steps = per_prompt[1:] - per_prompt[:-1]
    assert (steps > -1e-5).all(), per_prompt
    assert (per_prompt[-1] - per_prompt[0] > 0.5).all(), per_prompt  # and it really moves


def test_unembedding_direction_raises_the_logit_difference_monotonically(loaded) -> None:
    """w ⊙ (W_U[a] − W_U[f]) added to the final residual: through the final norm the logit
    difference is |v|·cos(angle between v and the normed stream) + const, which grows with α."""
    pairs = _shared_readout(["w5 w9 w7", "w3 w4 w8 w3 w1 w2", "w6 w6"], " w10", " w40")
    alphas = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    spec = SteeringSpec(prompts=pairs, direction=UnembeddingDirection(), positions=(-1,),
                        site=f"resid_post.{loaded.adapter.n_layers - 1}", alphas=alphas)
    assert not loaded.adapter.final_logit_softcap  # soft-capping is not monotone in the difference
    _assert_monotone(run_steering(loaded, spec))


def test_unembedding_dose_response_on_the_default_organism(organism) -> None:
    from tools.tasks import get_task

    items = get_task("facts").generate(6, seed=0, tokenizer=organism.tokenizer)
    pairs = _shared_readout([item.clean for item in items], " Paris", " Rome")
    spec = SteeringSpec(prompts=pairs, direction=UnembeddingDirection(), positions=(-1,),
                        site="resid_post.3", alphas=(-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
                        normalise=True)
    result = run_steering(organism, spec)
    _assert_monotone(result)
    assert result.logit_diff[3] == pytest.approx(result.baseline_logit_diff, abs=1e-6)


# -- generation --------------------------------------------------------------------------------------


def _hf_greedy(model, hf, text: str, n: int) -> list[int]:
    ids = _ids(model, text)
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=n, do_sample=False,
                          pad_token_id=model.tokenizer.pad_token_id or 0)
    new = out[0, ids.shape[1]:].tolist()
    eos = hf.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    for i, token in enumerate(new):
        if token in eos:
            return new[: i + 1]
    return new


def _ours(result: SteeringResult, direction: int, alpha: int, prompt: int) -> list[int]:
    return [int(t) for t in result.tensors["generated_ids"][direction, alpha, prompt] if t >= 0]


def test_alpha_zero_generation_equals_plain_greedy_generation(organism) -> None:
    from tools.tasks import get_task

    items = get_task("ioi").generate(3, seed=0, tokenizer=organism.tokenizer)
    pairs = PromptPairs(clean=tuple(i.clean for i in items), corrupted=tuple(i.corrupted for i in items),
                        answer=tuple(i.answer for i in items), foil=tuple(i.foil for i in items))
    spec = SteeringSpec(prompts=pairs, direction=MeanDifferenceDirection(site="resid_pre.2"),
                        site="resid_pre.2", alphas=(0.0, 4.0), generate=8, generate_prompts=3)
    result = run_steering(organism, spec)
    assert result.tensors["generated_ids"].shape == (2, 2, 3, 8)
    for p, text in enumerate(pairs.clean):
        expected = _hf_greedy(organism, organism.hf_model, text, 8)
        assert _ours(result, 0, 0, p) == expected
        assert _ours(result, 1, 0, p) == expected  # the control at α = 0 too
    texts = [g.text for g in result.generations if g.direction == "steering" and g.alpha == 0.0]
    assert texts == [organism.tokenizer.decode(_ours(result, 0, 0, p)) for p in range(3)]


@pytest.mark.parametrize("family_name", ["gpt2", "llama"])
def test_steered_generation_matches_hf_generate_with_a_hook(family_name, pairs) -> None:
    """Every position steered: HF's cached generation with the hook adds α·v to each new
    token too, so it must agree with our step-by-step rerun."""
    model, fresh = tiny_loaded(family_name), tiny_model(family_name)
    spec = SteeringSpec(prompts=pairs, direction=MeanDifferenceDirection(site="resid_pre.1"),
                        site="resid_pre.1", alphas=(0.0, 3.0), control=False, generate=5)
    result = run_steering(model, spec, batch_size=4)
    v = result.tensors["direction"]
    handle = _add_hook(fresh, model.adapter, "resid_pre.1", 3.0 * v, None)
    try:
        for p, text in enumerate(pairs.clean):
            assert _ours(result, 0, 1, p) == _hf_greedy(model, fresh, text, 5)
    finally:
        handle.remove()
    for p, text in enumerate(pairs.clean):
        assert _ours(result, 0, 0, p) == _hf_greedy(model, fresh, text, 5)


# -- specs -------------------------------------------------------------------------------------------



_MD = MeanDifferenceDirection(site="resid_pre.1")


@pytest.mark.parametrize(("changes", "field"), [
    (dict(site="resid_pre.2"), "site"),
    (dict(site="mlp.7"), "site"),
    (dict(positions=(4,)), "positions[0]"),
    (dict(positions=(-5,)), "positions[0]"),
    (dict(direction=MeanDifferenceDirection(site="head.1.4")), "direction.site"),
    (dict(direction=MeanDifferenceDirection(site="resid_post.1", position=4)), "direction.position"),
    (dict(direction=MeanDifferenceDirection(site="resid_pre.0", positive=("w1 w2 w3 w4 w5",),
                                            negative=("w1",), position=-2)), "direction.position"),
    (dict(direction=ComponentOutputDirection(component="attn.2")), "direction.component"),
    (dict(generate=70), "generate"),
])
def test_bad_specs_fail_before_any_forward_pass(no_forward, changes, field) -> None:
    pairs = word_pairs(n=2, length=[4, 6], seed=1)
    spec = SteeringSpec(**{**dict(prompts=pairs, direction=_MD, site="resid_pre.1", alphas=(1.0,)),
                           **changes})
    with pytest.raises(SpecError) as error:
        run_steering(no_forward, spec)
    assert error.value.field == field


@pytest.mark.parametrize(("make", "field"), [
    (lambda p: SteeringSpec(prompts=p, direction=_MD, site="head.1.0"), "site"),
    (lambda p: SteeringSpec(prompts=p, direction=_MD, site="resid_mid.1"), "site"),
    (lambda p: SteeringSpec(prompts=p, direction=_MD, site="mlp.1", alphas=()), "alphas"),
    (lambda p: SteeringSpec(prompts=p, direction=_MD, site="mlp.1", alphas=(1.0, 1.0)), "alphas"),
    (lambda p: SteeringSpec(prompts=p, direction=_MD, site="mlp.1", alphas=(float("nan"),)),
     "alphas[0]"),
    (lambda p: SteeringSpec(prompts=p, direction=_MD, site="mlp.1", generate=-1), "generate"),
    (lambda p: SteeringSpec(prompts=p.model_copy(update={"corrupted": ()}), direction=_MD,
                            site="mlp.1"), "prompts.corrupted"),
    (lambda p: MeanDifferenceDirection(site="resid_pre.1", positive=("w1",)), "direction.negative"),
    (lambda p: MeanDifferenceDirection(site="bogus.1"), "direction.site"),
    (lambda p: ComponentOutputDirection(component="head.1"), "direction.component"),
])
def test_structural_mistakes_fail_when_the_spec_is_built(make, field) -> None:
    with pytest.raises(SpecError) as error:
        make(word_pairs(n=2, length=4))
    assert error.value.field == field


def test_spec_json_and_result_disk_round_trip(tmp_path, pairs) -> None:
    spec = SteeringSpec(prompts=pairs, direction=ComponentOutputDirection(component="head.0.1"),
                        site="mlp.0", positions=(-1,), alphas=(0.0, 2.0), generate=2)
    assert SteeringSpec.model_validate_json(spec.model_dump_json()) == spec
    result = run_steering(tiny_loaded("gpt2"), spec)
    assert SteeringResult.load(result.save(tmp_path)) == result
