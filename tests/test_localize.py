"""Ranking components and growing a faithful circuit, on the default organism's IOI behaviour."""

from __future__ import annotations

import pytest

from agents.localize import component_effects, grow_circuit, rank_components
from memory.runstore import RunStore
from memory.workspace import Workspace
from tools.errors import UserInputError
from tools.experiments import AblationSpec, PromptPairs
from tools.loading import load_model

PROMPTS = PromptPairs(task="ioi", n=48, seed=0, split="train")


@pytest.fixture(scope="module")
def organism():
    return load_model("organism-default")


@pytest.fixture
def run(tmp_path):
    with Workspace.open(tmp_path / "ws", writer=True) as ws:
        yield RunStore(ws).create("ioi", "organism-default")


def test_exact_and_attribution_rankings_agree_on_the_top_components(organism, run):
    exact = rank_components(run, organism, PROMPTS)
    estimate = rank_components(run, organism, PROMPTS, exact_budget=0, confirm_top=6)
    n = organism.adapter.n_layers
    assert exact.method == "activation_patching" and len(exact.effects) == n * organism.adapter.n_heads + n
    assert estimate.method == "attribution_patching" and len(estimate.confirmed) == 6
    assert [abs(e) for _, e in exact.effects] == sorted((abs(e) for _, e in exact.effects), reverse=True)
    # the confirmed effects are activation patching of those components alone: equal to the sweep's
    exact_effects = dict(exact.effects)
    for component, effect in estimate.confirmed:
        assert effect == pytest.approx(exact_effects[component], abs=1e-4)
    # attribution's top 4 are among activation patching's top 6 (first-order estimates, same scale)
    assert set(estimate.order[:4]) <= set(exact.order[:6])


def test_the_ranking_also_measures_what_each_component_removes_from_the_clean_run(organism, run):
    """Noising shares, checked against other tools: a resample ablation of the component alone
    at every position (the corrupted value in the clean run) and the behaviour experiment's
    clean and corrupted logit differences."""
    from tools.experiments import BehaviourExperimentSpec

    exact = rank_components(run, organism, PROMPTS)
    removes = dict(exact.removes)
    assert set(removes) == set(exact.order) and len(exact.evidence) == 2
    assert [abs(e) for _, e in exact.removes] == sorted((abs(e) for _, e in exact.removes), reverse=True)
    behaviour = run.experiment(organism, BehaviourExperimentSpec(prompts=PROMPTS))
    gap = behaviour.logit_diff - behaviour.corrupted_logit_diff
    for component in [*exact.order[:3], exact.order[-1]]:
        alone = run.experiment(organism, AblationSpec(prompts=PROMPTS, components=(component,), mode="ablate",
                                                      method="resample"))
        assert (alone.clean_logit_diff - alone.ablated_logit_diff) / gap == pytest.approx(removes[component], abs=1e-3)
    assert exact.necessary and all(abs(removes[c]) >= 0.01 for c in exact.necessary)
    assert set(exact.necessary) < set(exact.order)  # not everything is clear of zero
    # the attribution ranking confirms its noising candidates by activation patching: the same shares
    estimate = rank_components(run, organism, PROMPTS, exact_budget=0, confirm_top=6)
    assert estimate.removes and len(estimate.evidence) == 4
    assert estimate.necessary and set(estimate.necessary) <= set(exact.order)
    for component in estimate.necessary:
        assert abs(removes[component]) >= 0.01
    # asked for one direction, it measures one
    one = rank_components(run, organism, PROMPTS, noising=False)
    assert one.removes == () and one.necessary == () and one.effects == exact.effects


def test_the_grown_circuit_is_the_smallest_prefix_reaching_the_target(organism, run):
    heads = [c for c in rank_components(run, organism, PROMPTS, universe=("head",)).order]
    assert all(c.startswith("head.") for c in heads)
    found = grow_circuit(run, organism, PROMPTS, heads, target=0.8, universe=("head",), methods=("resample",))
    assert found.reached and found.faithfulness >= 0.8
    sizes = [size for size, _ in found.tried]
    assert sizes == list(range(1, len(found.components) + 1))
    assert all(f < 0.8 for _, f in found.tried[:-1])
    # recompute the reported faithfulness independently through the registry
    check = run.experiment(organism, AblationSpec(prompts=PROMPTS, components=found.components, mode="keep",
                                                  method="resample", universe=("head",)))
    assert check.faithfulness == pytest.approx(found.faithfulness)
    assert found.evidence[-1] == check.key


def test_a_circuit_must_reach_the_target_under_every_method(organism, run):
    """Both ablations, restricted to the positions from the first changed token: the circuit is
    the first prefix whose smaller faithfulness reaches the target."""
    from agents.positions import scope_positions

    order = rank_components(run, organism, PROMPTS).order
    positions = scope_positions(organism, PROMPTS)
    assert positions == (-5, -4, -3, -2, -1)  # IOI's corruption changes the second subject, 5 from the end
    both = grow_circuit(run, organism, PROMPTS, order, target=0.8, positions=positions)
    assert both.reached and set(both.by_method) == {"resample", "mean"}
    assert min(both.by_method.values()) == pytest.approx(both.faithfulness) and both.faithfulness >= 0.8
    resample_only = grow_circuit(run, organism, PROMPTS, order, target=0.8, positions=positions,
                                 methods=("resample",))
    assert len(resample_only.components) <= len(both.components)
    for size, value in both.tried[:-1]:
        assert value < 0.8
    assert len(both.evidence) == 2 * len(both.tried)


def test_a_long_ranking_is_searched_by_doubling_and_bisection(organism, run):
    order = rank_components(run, organism, PROMPTS).order
    linear = grow_circuit(run, organism, PROMPTS, order, target=0.8, methods=("resample",))
    bisected = grow_circuit(run, organism, PROMPTS, order, target=0.8, methods=("resample",), linear_limit=4)
    sizes = [s for s, _ in bisected.tried]
    assert sizes[:3] == [1, 2, 4] and len(sizes) < len(linear.tried) + 2
    # on this ranking faithfulness grows monotonically, so bisection finds the same circuit
    assert bisected.components == linear.components


def test_the_search_stops_when_the_budget_says_so(organism, run):
    order = rank_components(run, organism, PROMPTS).order
    calls = []
    found = grow_circuit(run, organism, PROMPTS, order, target=0.999, methods=("resample",),
                         should_stop=lambda: calls.append(1) or len(calls) >= 2)
    assert len(found.tried) == 2 and not found.reached


def test_a_target_never_reached_returns_the_best_prefix(organism, run):
    order = ["head.2.0", "head.2.2", "head.2.3"]  # small effects on IOI
    found = grow_circuit(run, organism, PROMPTS, order, target=0.99, universe=("head",), methods=("mean",))
    assert not found.reached and len(found.tried) == 3
    assert found.faithfulness == max(f for _, f in found.tried)
    with pytest.raises(UserInputError, match="no components"):
        grow_circuit(run, organism, PROMPTS, [])
    for room in (0, -3):  # no room is a mistake, not an empty search (which had nothing to return)
        with pytest.raises(UserInputError, match=f"room for at least one component, not max_size {room}"):
            grow_circuit(run, organism, PROMPTS, order, max_size=room)


def test_a_circuit_job_asks_for_room_for_at_least_one_component():
    from pydantic import ValidationError

    from agents.steps import JOB

    assert JOB.validate_python({"step": "circuit", "order": ["mlp.0"], "max_size": 1}).max_size == 1
    for room in (0, -3):
        with pytest.raises(ValidationError, match="greater than or equal to 1"):
            JOB.validate_python({"step": "circuit", "order": ["mlp.0"], "max_size": room})


def test_effects_need_a_component_sweep(organism, run):
    from tools.experiments import ActivationPatchingSpec, PatchSweep

    result = run.experiment(organism, ActivationPatchingSpec(prompts=PROMPTS,
                                                             sweeps=(PatchSweep(site="resid_pre"),)))
    with pytest.raises(UserInputError, match="no head or mlp sweep"):
        component_effects(result)
