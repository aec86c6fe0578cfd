"""Ablation: score invariants, and every method against plain torch hooks on the HF model.

The reference computation never touches nnsight or the adapter: it runs ``model.hf_model``
one unpadded prompt at a time, with forward hooks on the attention output projection
(whose input is the concatenated heads, ``z``) and on the module whose output the MLP adds
to the residual stream — module paths written out per family below.
"""

from __future__ import annotations

import pytest
import torch

from tests._experiment_models import EXPERIMENT_FAMILIES, tiny_loaded, token_ids, word_pairs, uneven_pairs
from tools.errors import SpecError, UserInputError
from tools.experiments import PromptPairs
from tools.experiments.ablation import AblationResult, AblationSpec, run_ablation

ATOL = 1e-5
N_LAYERS, N_HEADS = 2, 4

# (o_proj, module whose output is the MLP's write to the residual), per family
SITES = {
    "gpt2": ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp"),
    "gpt_neox": ("gpt_neox.layers.{}.attention.dense", "gpt_neox.layers.{}.mlp"),
    "llama": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp"),
    "gemma3": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.post_feedforward_layernorm"),
}
EVERY_COMPONENT = tuple(f"attn.{l}" for l in range(N_LAYERS)) + tuple(f"mlp.{l}" for l in range(N_LAYERS))


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def family(request):
    return request.param, tiny_loaded(request.param)


# -- the hand-written reference ---------------------------------------------------------------


def _hooked(model, family: str, text: str, replace=None, capture=None) -> torch.Tensor:
    """Last-token logits of one prompt through plain HF, with torch hooks.

    ``replace(site, layer, value[pos, features]) -> value`` rewrites ``z`` (site "z") or the
    MLP write (site "mlp"); ``capture`` (a dict) receives them unchanged instead.
    """
    o_proj, mlp = SITES[family]
    handles = []

    def on_z(layer):
        def hook(module, args):
            z = args[0][0]
            if capture is not None:
                capture[("z", layer)] = z.detach().clone()
                return None
            return (replace("z", layer, z.clone())[None],) + tuple(args[1:])
        return hook

    def on_mlp(layer):
        def hook(module, args, output):
            if capture is not None:
                capture[("mlp", layer)] = output[0].detach().clone()
                return None
            return replace("mlp", layer, output[0].clone())[None]
        return hook

    for layer in range(N_LAYERS) if replace is not None or capture is not None else ():
        module = model.hf_model.get_submodule
        handles.append(module(o_proj.format(layer)).register_forward_pre_hook(on_z(layer)))
        handles.append(module(mlp.format(layer)).register_forward_hook(on_mlp(layer)))
    try:
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            return model.hf_model(ids).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()


def _logit_diffs(model, pairs: PromptPairs, rows: list[torch.Tensor]) -> torch.Tensor:
    logits = torch.stack(rows)
    answer, foil = token_ids(model, pairs.answer), token_ids(model, pairs.foil)
    index = torch.arange(len(rows))
    return logits[index, answer] - logits[index, foil]


def _at(positions, length: int) -> list[int]:
    return list(range(length)) if positions is None else [p % length for p in positions]


def _replacer(heads, mlps, positions, value_of):
    """A ``replace`` that sets the listed heads' slices and MLPs, at ``positions``, to
    ``value_of(site, layer, pos, current value there)``."""
    d_head = None

    def replace(site, layer, value):
        nonlocal d_head
        for p in _at(positions, value.shape[0]):
            new = value_of(site, layer, p, value[p])
            if site == "z":
                d_head = value.shape[-1] // N_HEADS
                for l, h in heads:
                    if l == layer:
                        value[p, h * d_head:(h + 1) * d_head] = new[h * d_head:(h + 1) * d_head]
            elif layer in mlps:
                value[p] = new
        return value

    return replace


# -- invariants of the scores -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_faithfulness_and_necessity_end_points(family, method: str) -> None:
    _, model = family
    pairs = word_pairs(n=3, length=[5, 6, 5], seed=11)

    def run(components, mode):
        return run_ablation(model, AblationSpec(prompts=pairs, components=components, method=method,
                                                mode=mode), batch_size=7)

    full = run(EVERY_COMPONENT, "keep")
    none = run((), "keep")
    assert full.normalisable and abs(full.clean_logit_diff - full.everything_ablated_logit_diff) > 1e-2
    assert full.ablated == () and full.n_universe == N_LAYERS * (N_HEADS + 1)
    assert full.faithfulness == 1.0
    assert torch.equal(full.tensors["ablated_logit_diff"], full.tensors["clean_logit_diff"])
    assert none.faithfulness == 0.0
    assert torch.equal(none.tensors["ablated_logit_diff"], none.tensors["everything_ablated_logit_diff"])
    assert len(none.ablated) == none.n_universe
    assert run(EVERY_COMPONENT, "ablate").necessity == 1.0
    assert run((), "ablate").necessity == 0.0
    # keeping a set is ablating its complement; the baseline does not depend on the set
    kept = run(("head.0.1", "attn.1", "mlp.0"), "keep")
    removed = run(("head.0.0", "head.0.2", "head.0.3", "mlp.1"), "ablate")
    assert kept.ablated == removed.ablated
    assert torch.allclose(kept.tensors["ablated_logit_diff"], removed.tensors["ablated_logit_diff"],
                          atol=1e-6)
    baseline = none.everything_ablated_logit_diff
    assert kept.everything_ablated_logit_diff == pytest.approx(baseline, abs=1e-6)
    base = kept.everything_ablated_logit_diff
    expected = (kept.ablated_logit_diff - base) / (kept.clean_logit_diff - base)
    assert kept.faithfulness == pytest.approx(expected, abs=1e-9)
    assert removed.necessity == pytest.approx(1 - expected, abs=1e-6)


# -- each method against torch hooks ------------------------------------------------------------


@pytest.mark.parametrize("positions", [None, (0, -1)])
def test_zero_ablating_a_head_equals_a_torch_hook(family, positions) -> None:
    name, model = family
    pairs = word_pairs(n=3, length=[5, 6, 4], seed=3)
    spec = AblationSpec(prompts=pairs, components=("head.1.2", "head.0.0"), method="zero",
                        positions=positions)
    result = run_ablation(model, spec)
    zero = lambda site, layer, p, current: torch.zeros_like(current)  # noqa: E731
    expected = _logit_diffs(model, pairs, [
        _hooked(model, name, text, _replacer([(1, 2), (0, 0)], [], positions, zero))
        for text in pairs.clean])
    clean = _logit_diffs(model, pairs, [_hooked(model, name, text) for text in pairs.clean])
    assert (expected - clean).abs().max() > 1e-3
    assert torch.allclose(result.tensors["ablated_logit_diff"], expected, atol=ATOL)
    assert torch.allclose(result.tensors["clean_logit_diff"], clean, atol=ATOL)
    # the baseline: every head's z and every MLP write zeroed
    everything = _replacer([(l, h) for l in range(N_LAYERS) for h in range(N_HEADS)],
                           set(range(N_LAYERS)), positions, zero)
    baseline = _logit_diffs(model, pairs, [_hooked(model, name, t, everything) for t in pairs.clean])
    assert torch.allclose(result.tensors["everything_ablated_logit_diff"], baseline, atol=ATOL)


@pytest.mark.parametrize("mean_over", ["prompts", "prompts_and_positions"])
def test_mean_ablation_equals_means_taken_by_torch_hooks(family, mean_over: str) -> None:
    name, model = family
    pairs = word_pairs(n=2, length=5, seed=5)
    reference = word_pairs(n=3, length=5 if mean_over == "prompts" else [4, 7, 5], seed=6)
    spec = AblationSpec(prompts=pairs, components=("head.0.3", "mlp.0", "head.1.1"), method="mean",
                        reference=reference, mean_over=mean_over)
    result = run_ablation(model, spec, batch_size=2)
    assert result.mean_over == mean_over
    captures = []
    for text in reference.clean:
        captures.append({})
        _hooked(model, name, text, capture=captures[-1])
    if mean_over == "prompts":
        means = {key: torch.stack([c[key] for c in captures]).mean(0) for key in captures[0]}
        value_of = lambda site, layer, p, current: means[(site, layer)][p]  # noqa: E731
    else:
        means = {key: torch.cat([c[key] for c in captures]).mean(0) for key in captures[0]}
        value_of = lambda site, layer, p, current: means[(site, layer)]  # noqa: E731
    replace = _replacer([(0, 3), (1, 1)], {0}, None, value_of)
    expected = _logit_diffs(model, pairs, [_hooked(model, name, t, replace) for t in pairs.clean])
    assert (expected - result.tensors["clean_logit_diff"]).abs().max() > 1e-3
    assert torch.allclose(result.tensors["ablated_logit_diff"], expected, atol=ATOL)


def test_a_mean_counted_from_the_end_equals_means_taken_by_torch_hooks(family) -> None:
    """Prompts of different lengths, ablated at their last 3 positions: each position gets the
    reference prompts' mean at the same offset from their end."""
    name, model = family
    pairs = word_pairs(n=3, length=[5, 7, 6], seed=15)
    reference = word_pairs(n=3, length=[4, 8, 6], seed=16)
    spec = AblationSpec(prompts=pairs, components=("head.0.1", "mlp.0", "head.1.3"), method="mean",
                        reference=reference, positions=(-3, -2, -1))
    result = run_ablation(model, spec, batch_size=2)
    assert result.mean_over == "prompts_from_end"  # "auto": the lengths differ, positions count from the end
    captures = []
    for text in reference.clean:
        captures.append({})
        _hooked(model, name, text, capture=captures[-1])
    means = {key: torch.stack([c[key][-3:] for c in captures]).mean(0) for key in captures[0]}
    expected = []
    for text in pairs.clean:
        length = len(model.tokenizer(text)["input_ids"])

        def value_of(site, layer, p, current, length=length):
            return means[(site, layer)][p - (length - 3)]

        expected.append(_hooked(model, name, text, _replacer([(0, 1), (1, 3)], {0}, (-3, -2, -1), value_of)))
    expected = _logit_diffs(model, pairs, expected)
    assert (expected - result.tensors["clean_logit_diff"]).abs().max() > 1e-3
    assert torch.allclose(result.tensors["ablated_logit_diff"], expected, atol=ATOL)


def test_mean_ablation_over_the_prompt_itself_is_identity(family) -> None:
    _, model = family
    pairs = word_pairs(n=1, length=6, seed=8)
    own = PromptPairs(clean=pairs.clean, answer=pairs.answer, foil=pairs.foil)
    spec = AblationSpec(prompts=pairs, components=EVERY_COMPONENT, method="mean", reference=own)
    result = run_ablation(model, spec)
    assert result.mean_over == "prompts" and len(result.ablated) == result.n_universe
    clean = result.tensors["clean_logit_diff"]
    assert torch.allclose(result.tensors["ablated_logit_diff"], clean, atol=ATOL)
    zeroed = run_ablation(model, spec.model_copy(update={"method": "zero", "reference": None}))
    assert (zeroed.tensors["ablated_logit_diff"] - zeroed.tensors["clean_logit_diff"]).abs().max() > 1e-3


def test_resample_ablation_takes_the_paired_corrupted_value(family) -> None:
    name, model = family
    pairs = word_pairs(n=3, length=[5, 6, 4], seed=9)
    spec = AblationSpec(prompts=pairs, components=("head.0.2", "mlp.1"), method="resample")
    result = run_ablation(model, spec)
    expected = []
    for clean, corrupted in zip(pairs.clean, pairs.corrupted):
        capture = {}
        _hooked(model, name, corrupted, capture=capture)
        replace = _replacer([(0, 2)], {1}, None,
                            lambda site, layer, p, current: capture[(site, layer)][p])
        expected.append(_hooked(model, name, clean, replace))
    expected = _logit_diffs(model, pairs, expected)
    assert (expected - result.tensors["clean_logit_diff"]).abs().max() > 1e-3
    assert torch.allclose(result.tensors["ablated_logit_diff"], expected, atol=ATOL)


def test_resample_with_clean_equal_to_corrupted_changes_nothing(family) -> None:
    _, model = family
    spec = AblationSpec(prompts=word_pairs(n=3, length=[5, 6, 4], same=True, seed=10),
                        components=EVERY_COMPONENT, method="resample")
    result = run_ablation(model, spec)
    clean = result.tensors["clean_logit_diff"]
    assert torch.allclose(result.tensors["ablated_logit_diff"], clean, atol=ATOL)
    assert torch.allclose(result.tensors["everything_ablated_logit_diff"], clean, atol=ATOL)
    assert not result.normalisable and result.necessity is None


def test_heads_only_universe_never_touches_the_mlps() -> None:
    model = tiny_loaded("gpt2")
    pairs = word_pairs(n=2, seed=12)
    heads_only = run_ablation(model, AblationSpec(prompts=pairs, method="zero", mode="keep",
                                                  universe=("head",)))
    every_head = run_ablation(model, AblationSpec(prompts=pairs, method="zero",
                                                  components=("attn.0", "attn.1")))
    assert heads_only.n_universe == N_LAYERS * N_HEADS
    assert heads_only.ablated == every_head.ablated
    assert torch.allclose(heads_only.tensors["ablated_logit_diff"],
                          every_head.tensors["ablated_logit_diff"], atol=1e-6)
    assert heads_only.faithfulness == 0.0 and every_head.necessity is not None


def test_spec_and_result_round_trip(tmp_path) -> None:
    spec = AblationSpec(prompts=word_pairs(n=2, seed=13), components=("head.1.0", "mlp.0"),
                        mode="keep", reference=word_pairs(n=1, seed=14), positions=(-1,))
    assert AblationSpec.model_validate_json(spec.model_dump_json()) == spec
    result = run_ablation(tiny_loaded("gpt2"), spec)
    assert AblationResult.load(result.save(tmp_path)) == result


# -- bad specs ---------------------------------------------------------------------------------


def _field(error: pytest.ExceptionInfo) -> str:
    assert isinstance(error.value, SpecError) and isinstance(error.value, UserInputError)
    assert str(error.value).startswith(error.value.field)
    return error.value.field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(components=("head.0.1", "hed.1.0")), "components[1]"),
        (dict(components=("resid_pre.0",)), "components[0]"),
        (dict(components=("embed",)), "components[0]"),
        (dict(components=("mlp.0", "mlp.0")), "components"),
        (dict(components=("mlp.0",), universe=("head",)), "components[0]"),
        (dict(universe=()), "universe"),
        (dict(method="zero", reference=word_pairs(n=1)), "reference"),
        (dict(method="resample", mean_over="prompts"), "mean_over"),
        (dict(reference={"clean": []}), "reference.clean"),
        (dict(reference={"task": "ioi", "n": 0}), "reference.n"),
        (dict(prompts={"clean": []}), "prompts.clean"),
        (dict(method="resample", prompts=PromptPairs(clean=["w1 w2"], answer=[" w3"], foil=[" w4"])),
         "prompts.corrupted"),
    ],
)
def test_bad_specs_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(SpecError) as error:
        AblationSpec(**{"prompts": word_pairs(), **changes})
    assert _field(error) == field




@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(components=("head.0.1", "head.2.0")), "components[1]"),
        (dict(components=("head.0.4",)), "components[0]"),
        (dict(components=("attn.2",)), "components[0]"),
        (dict(components=("mlp.5",), mode="keep"), "components[0]"),
        (dict(positions=(6,)), "positions[0]"),
        (dict(positions=(-7,)), "positions[0]"),
        (dict(method="resample", prompts=uneven_pairs()), "prompts.corrupted[1]"),
        (dict(mean_over="prompts", reference=word_pairs(n=2, length=[6, 5])), "reference.clean[1]"),
        (dict(mean_over="prompts", prompts=uneven_pairs()), "prompts.corrupted[1]"),
        (dict(mean_over="prompts", prompts=word_pairs(n=2, length=[6, 5])), "mean_over"),
        (dict(reference=word_pairs().model_copy(update={"clean": ("w1", "w2", " ")})),
         "reference.clean[2]"),
    ],
)
def test_model_dependent_mistakes_raise_before_any_forward(no_forward, changes: dict, field: str) -> None:
    spec = AblationSpec(**{"prompts": word_pairs(), "components": ("head.0.1",), **changes})
    with pytest.raises(SpecError) as error:
        run_ablation(no_forward, spec)
    assert _field(error) == field


def test_the_forward_guard_is_real(no_forward) -> None:
    with pytest.raises(AssertionError, match="forward pass"):
        run_ablation(no_forward, AblationSpec(prompts=word_pairs(), components=("head.0.1",)))


# -- runs shared between ablations ----------------------------------------------------------------


@pytest.mark.parametrize("method,mode,positions", [("resample", "ablate", None), ("mean", "keep", (-2, -1)),
                                                   ("zero", "ablate", (-1,))])
def test_shared_runs_change_no_number_and_save_the_repeated_forwards(family, method, mode, positions) -> None:
    """The critic's pattern — a claimed set, then other sets of the same prompts — scored with
    the clean, source and baseline runs shared gives bit-identical results for fewer rows."""
    from tools.experiments.memo import SharedRuns, sharing_runs

    _, model = family
    pairs = word_pairs(n=4, length=[5, 6, 5, 6], seed=13)
    sets = [("head.0.1", "mlp.1"), ("head.1.2", "head.0.3"), ("mlp.0", "head.1.0"), ("attn.1",), ()]

    def score_all() -> tuple[list[AblationResult], int]:
        rows = model.forwards.rows
        out = [run_ablation(model, AblationSpec(prompts=pairs, components=s, method=method, mode=mode,
                                                positions=positions)) for s in sets]
        return out, model.forwards.rows - rows

    alone, rows_alone = score_all()
    memo = SharedRuns()
    with sharing_runs(memo):
        together, rows_shared = score_all()
    again, rows_after = score_all()  # the memo is off again outside the block
    assert rows_after == rows_alone
    for a, b, c in zip(alone, together, again):
        for name in ("clean_logit_diff", "ablated_logit_diff", "everything_ablated_logit_diff"):
            assert torch.equal(a.tensors[name], b.tensors[name]) and torch.equal(a.tensors[name], c.tensors[name])
        assert (a.necessity, a.faithfulness) == (b.necessity, b.faithfulness)
    # unshared, each ablation runs clean, source (not for zero) and baseline again; shared, once.
    # The set itself runs unless it is empty (ablating nothing / keeping everything ablated)
    per_source = 0 if method == "zero" else 4
    n_runs = sum(1 for s in sets if s)
    assert rows_alone == len(sets) * (4 + per_source + 4) + n_runs * 4
    assert rows_shared == 4 + per_source + 4 + n_runs * 4
    assert memo.hits == 2 * (len(sets) - 1) + (len(sets) - 1) * (method != "zero")


def test_a_memo_keeps_within_its_budget_and_drops_the_oldest_first() -> None:
    from tools.experiments.memo import SharedRuns

    memo = SharedRuns(max_bytes=100)
    calls = []

    def make(n):
        calls.append(n)
        return torch.zeros(n, dtype=torch.uint8)

    memo.get("a", lambda: make(40)), memo.get("b", lambda: make(40))
    memo.get("a", lambda: make(40))  # a is now the most recently used
    memo.get("c", lambda: make(40))  # 120 bytes: b goes
    memo.get("big", lambda: make(200))  # larger than the budget: computed, never kept
    assert calls == [40, 40, 40, 200] and memo.bytes == 80 and len(memo) == 2
    memo.get("a", lambda: make(40)), memo.get("c", lambda: make(40))
    memo.get("b", lambda: make(40))
    assert calls == [40, 40, 40, 200, 40] and memo.hits == 3
