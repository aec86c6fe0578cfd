"""Experiment specs and results: validation before any forward pass, JSON and disk round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests._experiment_models import tiny_loaded, word_pairs
from tools.errors import SpecError, UserInputError
from tools.experiments import (
    ActivationPatchingSpec,
    BehaviourExperimentSpec,
    BehaviourResult,
    DirectLogitAttributionSpec,
    LogitLensSpec,
    PatchSweep,
    PromptPairs,
    load_result,
    parse_spec,
    run_activation_patching,
    run_behaviour,
    run_experiment,
)
from tools.tasks import TASK_NAMES


@pytest.fixture(scope="module")
def gpt2():
    return tiny_loaded("gpt2")


@pytest.fixture
def no_forward(gpt2):
    """The tiny GPT-2, with any forward pass failing the test."""

    def refuse(module, args, kwargs):
        raise AssertionError("the model ran a forward pass")

    handle = gpt2.hf_model.register_forward_pre_hook(refuse, with_kwargs=True)
    try:
        yield gpt2
    finally:
        handle.remove()


def _field(error: pytest.ExceptionInfo) -> str:
    assert isinstance(error.value, SpecError) and isinstance(error.value, UserInputError)
    assert str(error.value).startswith(error.value.field)
    return error.value.field


# -- structural mistakes: caught when the spec is built ----------------------------------------


@pytest.mark.parametrize(
    ("prompts", "field"),
    [
        (dict(), "prompts.clean"),
        (dict(clean=["w1"], answer=[" w2"], foil=[]), "prompts.foil"),
        (dict(clean=["w1", "w2"], answer=[" w2"], foil=[" w3"]), "prompts.answer"),
        (dict(clean=["w1"], answer=[" w2"], foil=[" w3"], corrupted=["w4", "w5"]), "prompts.corrupted"),
        (dict(clean=["w1", ""], answer=[" w2"] * 2, foil=[" w3"] * 2), "prompts.clean[1]"),
        (dict(task="no_such_task", n=3), "prompts.task"),
        (dict(task="ioi", n=0), "prompts.n"),
        (dict(task="ioi", n=2, clean=["w1"]), "prompts.clean"),
    ],
)
def test_bad_prompt_sets_name_the_field(prompts: dict, field: str) -> None:
    with pytest.raises(SpecError) as error:
        BehaviourExperimentSpec(prompts=prompts)
    assert _field(error) == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(sweeps=[{"site": "resid_mid"}]), "sweeps[0].site"),
        (dict(sweeps=[{"site": "head"}, {"site": "neuron", "per_position": True}]), "sweeps[1].site"),
        (dict(sweeps=[], component_sets=[("head.0.1", "hed.0.2")]), "component_sets[0][1]"),
        (dict(component_sets=[()]), "component_sets[0]"),
        (dict(sweeps=[]), "sweeps"),
        (dict(sweeps=[{"site": "mlp"}, {"site": "mlp"}]), "sweeps"),
    ],
)
def test_bad_patching_specs_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(SpecError) as error:
        ActivationPatchingSpec(prompts=word_pairs(), **changes)
    assert _field(error) == field


def test_patching_needs_corrupted_prompts() -> None:
    pairs = PromptPairs(clean=["w1 w2"], answer=[" w3"], foil=[" w4"])
    with pytest.raises(SpecError) as error:
        ActivationPatchingSpec(prompts=pairs)
    assert _field(error) == "prompts.corrupted"


def test_unknown_kind() -> None:
    with pytest.raises(SpecError) as error:
        parse_spec({"kind": "telepathy", "prompts": word_pairs().model_dump()})
    assert _field(error) == "kind"


# -- mistakes that need the model: caught before its first forward pass ------------------------


def _uneven() -> PromptPairs:
    pairs = word_pairs(n=2)
    return pairs.model_copy(update={"corrupted": (pairs.corrupted[0], pairs.corrupted[1] + " w5")})


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ActivationPatchingSpec(prompts=word_pairs(), layers=(0, 2)), "layers[1]"),
        (lambda: ActivationPatchingSpec(prompts=word_pairs(), heads=(4,)), "heads[0]"),
        (lambda: ActivationPatchingSpec(prompts=word_pairs(), positions=(6,)), "positions[0]"),
        (lambda: ActivationPatchingSpec(prompts=word_pairs(), positions=(-7,)), "positions[0]"),
        (lambda: ActivationPatchingSpec(prompts=word_pairs(length=[4, 5])), "positions"),
        (lambda: ActivationPatchingSpec(prompts=_uneven()), "prompts.corrupted[1]"),
        (lambda: ActivationPatchingSpec(prompts=word_pairs(), component_sets=[("mlp.0", "head.2.0")]),
         "component_sets[0][1]"),
        (lambda: ActivationPatchingSpec(prompts=word_pairs(), component_sets=[("head.1.9",)]),
         "component_sets[0][0]"),
        (lambda: BehaviourExperimentSpec(prompts=word_pairs().model_copy(
            update={"answer": (" w1 w2", " w1", " w1")})), "prompts.answer[0]"),
        (lambda: LogitLensSpec(prompts=word_pairs().model_copy(
            update={"foil": (" w1", " w1", " nonword")})), "prompts.foil[2]"),
    ],
)
def test_model_dependent_mistakes_raise_before_any_forward(no_forward, make, field: str) -> None:
    spec = make()
    with pytest.raises(SpecError) as error:
        run_experiment(no_forward, spec)
    assert _field(error) == field


def test_the_forward_guard_is_real(no_forward) -> None:
    with pytest.raises(AssertionError, match="forward pass"):
        run_behaviour(no_forward, BehaviourExperimentSpec(prompts=word_pairs()))


def test_variable_length_prompts_are_fine_with_positions_from_the_end(gpt2) -> None:
    spec = ActivationPatchingSpec(prompts=word_pairs(length=[4, 6, 5]), positions=(0, -1),
                                  sweeps=[PatchSweep(site="resid_pre", per_position=True)])
    result = run_activation_patching(gpt2, spec)
    assert result.tensor_shapes["effect.resid_pre_by_pos"] == (2, 2)


# -- round-trips ------------------------------------------------------------------------------

_words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                 max_size=12)
_components = st.one_of(
    st.just("embed"),
    st.builds(lambda k, l: f"{k}.{l}", st.sampled_from(["resid_pre", "resid_post", "attn", "mlp"]),
              st.integers(0, 40)),
    st.builds(lambda l, h: f"head.{l}.{h}", st.integers(0, 40), st.integers(0, 40)),
)


@st.composite
def _prompt_pairs(draw) -> PromptPairs:
    if draw(st.booleans()):
        return PromptPairs(task=draw(st.sampled_from(TASK_NAMES)), n=draw(st.integers(1, 500)),
                           split=draw(st.sampled_from(["train", "heldout"])),
                           seed=draw(st.integers(-2**31, 2**31)))
    n = draw(st.integers(1, 4))
    lists = {name: draw(st.lists(_words, min_size=n, max_size=n))
             for name in ("clean", "answer", "foil")}
    corrupted = draw(st.one_of(st.just([]), st.lists(_words, min_size=n, max_size=n)))
    return PromptPairs(corrupted=corrupted, **lists)


@st.composite
def _specs(draw):
    prompts = draw(_prompt_pairs())
    kind = draw(st.sampled_from([BehaviourExperimentSpec, LogitLensSpec, DirectLogitAttributionSpec,
                                 ActivationPatchingSpec]))
    if kind is not ActivationPatchingSpec:
        return kind(prompts=prompts)
    if not prompts.has_corrupted:
        prompts = prompts.model_copy(update={"corrupted": prompts.clean})
    sweeps = draw(st.lists(st.builds(PatchSweep, site=st.sampled_from(
        ["resid_pre", "resid_post", "attn", "mlp", "head"]), per_position=st.booleans()),
        max_size=4, unique_by=lambda s: s.name))
    sets = draw(st.lists(st.lists(_components, min_size=1, max_size=4).map(tuple),
                         min_size=0 if sweeps else 1, max_size=3))
    optional_ints = lambda: st.one_of(st.none(), st.lists(st.integers(-50, 50), min_size=1,
                                                          max_size=5, unique=True).map(tuple))
    return ActivationPatchingSpec(
        prompts=prompts, mode=draw(st.sampled_from(["denoising", "noising"])), sweeps=sweeps,
        component_sets=sets, layers=draw(optional_ints()), heads=draw(optional_ints()),
        positions=draw(optional_ints()),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs())
def test_spec_json_round_trip(spec) -> None:
    text = spec.model_dump_json()
    again = parse_spec(text)
    assert again == spec and type(again) is type(spec)
    assert parse_spec(json.loads(text)) == spec
    assert again.cache_key("abc") == spec.cache_key("abc") != spec.cache_key("abd")


def test_result_save_and_load(gpt2, tmp_path) -> None:
    spec = BehaviourExperimentSpec(prompts=word_pairs())
    result = run_behaviour(gpt2, spec)
    assert result.tensor_file is None and set(result.tensors) == {
        "logit_diff", "answer_prob", "correct", "corrupted_logit_diff"}
    path = result.save(tmp_path)
    assert path.name == f"{result.key}.json"
    assert (tmp_path / f"{result.key}.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{result.key}.json", f"{result.key}.safetensors"])
    data = json.loads(path.read_text())
    assert "tensors" not in data and data["tensor_shapes"]["logit_diff"] == [3]
    assert data["provenance"]["weights_hash"] == gpt2.weights_hash
    assert set(data["provenance"]["versions"]) == {"torch", "nnsight", "transformers", "circuitsleuth"}
    loaded = load_result(path)
    assert type(loaded) is BehaviourResult and loaded.tensor_file == path.with_suffix(".safetensors").name
    assert loaded == result
    assert BehaviourResult.load(path) == result
    assert result.key == spec.cache_key(gpt2.weights_hash)
    assert run_behaviour(gpt2, spec) == result  # pure and deterministic
