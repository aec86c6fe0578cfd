"""Experiment specs and results: validation before any forward pass, JSON and disk round-trips."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from tests._experiment_models import tiny_loaded, word_pairs
from tools.errors import SpecError, TokenizationError, UserInputError
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
    tokenize_prompts,
)
from tools.experiments.prompts import resolve_prompts
from tools.loading import load_model
from tools.tasks import TASK_NAMES, get_task
from tools.tasks.base import answer_token_id


@pytest.fixture(scope="module")
def gpt2():
    return tiny_loaded("gpt2")


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


# -- tokenize_prompts against a per-prompt reference --------------------------------------------


def _reference_tokenize(model, pairs: PromptPairs, *, need_corrupted: bool = False,
                        aligned: bool = False):
    """`tokenize_prompts` the obvious way: one tokenizer call per text, `answer_token_id` per answer."""
    tok = model.tokenizer
    if need_corrupted and not pairs.has_corrupted:
        raise SpecError("prompts.corrupted", "this experiment compares clean and corrupted runs; "
                        "give one corrupted prompt per clean prompt (or a task)")
    items = resolve_prompts(pairs, tok)

    def encode(text: str, field: str) -> list[int]:
        ids = list(tok(text, add_special_tokens=True)["input_ids"])
        if not ids:
            raise SpecError(field, f"{text!r} tokenises to no tokens")
        return ids

    clean, answers, foils = [], [], []
    for i, item in enumerate(items):
        clean.append(encode(item.clean, f"prompts.clean[{i}]"))
        for field, text, out in (("answer", item.answer, answers), ("foil", item.foil, foils)):
            try:
                out.append(answer_token_id(tok, item.clean, text))
            except TokenizationError as error:
                raise SpecError(f"prompts.{field}[{i}]", str(error)) from None
    corrupted = None
    if pairs.has_corrupted:
        corrupted = [encode(item.corrupted, f"prompts.corrupted[{i}]") for i, item in enumerate(items)]
        for i, (c, x) in enumerate(zip(clean, corrupted)):
            if aligned and len(c) != len(x):
                raise SpecError(
                    f"prompts.corrupted[{i}]",
                    f"has {len(x)} tokens but its clean prompt has {len(c)}; patching compares "
                    "positions one to one, so each pair must tokenise to the same length")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def padded(rows):
        ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            for j, token in enumerate(row):  # right padding: real tokens first
                ids[i, j] = token
        return ids, torch.tensor([len(r) for r in rows])

    clean_ids, lengths = padded(clean)
    corrupted_ids, corrupted_lengths = padded(corrupted) if corrupted is not None else (None, None)
    return dict(clean=clean_ids, lengths=lengths, answer=torch.tensor(answers),
                foil=torch.tensor(foils), corrupted=corrupted_ids,
                corrupted_lengths=corrupted_lengths, texts=tuple(items))


def _outcome(run):
    """What a tokenisation gives: its fields, or the SpecError's field and message."""
    try:
        out = run()
    except SpecError as error:
        return ("SpecError", error.field, str(error))
    if not isinstance(out, dict):
        out = {name: getattr(out, name) for name in ("clean", "lengths", "answer", "foil",
                                                     "corrupted", "corrupted_lengths", "texts")}
    return out


def _assert_same(ours, reference) -> None:
    if isinstance(reference, tuple) or isinstance(ours, tuple):
        assert ours == reference
        return
    assert ours["texts"] == reference["texts"]
    for name in ("clean", "lengths", "answer", "foil", "corrupted", "corrupted_lengths"):
        a, b = ours[name], reference[name]
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype == torch.long and a.device.type == "cpu", name
        assert a.shape == b.shape and torch.equal(a, b), name


def _variants(base: PromptPairs, blank_tokenises_to_nothing: bool) -> list[tuple[PromptPairs, dict]]:
    """``base`` (explicit lists, aligned pairs), and edits of it that each break one check."""

    def edit(name: str, i: int, value: str) -> PromptPairs:
        values = list(getattr(base, name))
        values[i] = value
        return base.model_copy(update={name: tuple(values)})

    flag_sets = [dict(), dict(need_corrupted=True), dict(need_corrupted=True, aligned=True)]
    cases = [(base, flags) for flags in flag_sets]
    cases += [(base.model_copy(update={"corrupted": ()}), flags) for flags in flag_sets]
    cases += [
        (edit("answer", 1, base.answer[1] + base.answer[1]), {}),  # two tokens
        (edit("foil", 2, " qqzzxxjj"), {}),  # unknown word / several pieces
        (edit("answer", 0, base.answer[0].strip()), {}),  # no leading space: merges with the prompt
        (edit("foil", len(base.clean) - 1, base.foil[-1] + "s"), {}),
        (edit("clean", 1, base.clean[1] + " é ✓ 日本"), {}),
        (edit("corrupted", 1, base.corrupted[1] + base.answer[1]), dict(aligned=True)),
        (edit("corrupted", 1, base.corrupted[1] + base.answer[1]), dict(aligned=False)),
    ]
    if blank_tokenises_to_nothing:
        cases += [(edit("clean", 2, " "), {}), (edit("corrupted", 2, " "), dict(aligned=True))]
    return cases


def _check_against_reference(model, base: PromptPairs, blank_tokenises_to_nothing: bool) -> None:
    batch = tokenize_prompts(model, base, need_corrupted=True, aligned=True)
    assert int(batch.lengths.min()) < int(batch.lengths.max()), "the base set must need padding"
    outcomes = []
    for pairs, flags in _variants(base, blank_tokenises_to_nothing):
        ours = _outcome(lambda: tokenize_prompts(model, pairs, **flags))
        _assert_same(ours, _outcome(lambda: _reference_tokenize(model, pairs, **flags)))
        outcomes.append(ours if isinstance(ours, tuple) else "ok")
    # the variants reach both success and several distinct errors, so the comparison means something
    errors = {o[1] for o in outcomes if isinstance(o, tuple)}
    assert "ok" in outcomes and len(errors) >= 3, outcomes


def _ioi_pairs(model, n: int = 32) -> PromptPairs:
    items = get_task("ioi").generate(n, split="heldout", seed=0, tokenizer=model.tokenizer)
    return PromptPairs(clean=[i.clean for i in items], corrupted=[i.corrupted for i in items],
                       answer=[i.answer for i in items], foil=[i.foil for i in items])


def test_tokenize_prompts_matches_per_prompt_reference_tiny(gpt2) -> None:
    base = word_pairs(n=5, length=[3, 6, 4, 5, 2])
    _check_against_reference(gpt2, base, blank_tokenises_to_nothing=True)


def test_tokenize_prompts_matches_per_prompt_reference_organism() -> None:
    model = load_model("organism-default")
    _check_against_reference(model, _ioi_pairs(model), blank_tokenises_to_nothing=False)
    generated = PromptPairs(task="ioi", n=7, split="train", seed=3)
    for flags in (dict(), dict(need_corrupted=True, aligned=True)):
        _assert_same(_outcome(lambda: tokenize_prompts(model, generated, **flags)),
                     _outcome(lambda: _reference_tokenize(model, generated, **flags)))


@pytest.mark.slow
def test_tokenize_prompts_matches_per_prompt_reference_gemma() -> None:
    from transformers import AutoTokenizer

    folder = Path.home() / ".cache" / "circuitsleuth" / "gemma-3-270m"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("gemma-3-270m is not in the local cache")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    # tokenize_prompts needs only the tokenizer and the device, not gemma's weights
    model = SimpleNamespace(tokenizer=tokenizer, device=torch.device("cpu"))
    _check_against_reference(model, _ioi_pairs(model), blank_tokenises_to_nothing=False)
