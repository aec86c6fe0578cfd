"""The critic's claim test on the planted organism, whose trigger mechanism is known: mlp.2."""

from __future__ import annotations

import pytest

from agents.critic import SetClaim, examine_claim, holm_adjust, verdict_for
from memory.runstore import RunStore
from memory.workspace import Workspace
from tools.errors import UserInputError
from tools.experiments.prompts import PromptPairs
from tools.loading import load_model
from tools.tasks.declared import declared_tasks


@pytest.fixture(scope="module")
def planted():
    return load_model("organism-planted")


def _trigger_prompts(model, n: int, seed: int) -> PromptPairs:
    from pathlib import Path

    task = declared_tasks(Path(model.source))["trigger"]
    items = task.generate(n, split="heldout", seed=seed, tokenizer=model.tokenizer)
    return PromptPairs(clean=[i.clean for i in items], corrupted=[i.corrupted for i in items],
                       answer=[i.answer for i in items], foil=[i.foil for i in items])


@pytest.fixture
def run(tmp_path):
    with Workspace.open(tmp_path / "ws", writer=True) as ws:
        yield RunStore(ws).create("why does the trigger produce banana?", "organism-planted")


def test_the_planted_component_is_supported_and_a_wrong_one_is_refuted(planted, run):
    fresh = _trigger_prompts(planted, 40, seed=101)  # never used to find anything
    claims = [SetClaim(id="c1", components=("mlp.2",), kind="necessity", threshold=0.5),
              SetClaim(id="c2", components=("head.3.1",), kind="necessity", threshold=0.5),
              SetClaim(id="c3", components=("mlp.2",), kind="faithfulness", threshold=0.99)]
    tests = holm_adjust([examine_claim(run, planted, c, fresh, seed=1) for c in claims])
    verdicts = {t.claim.id: verdict_for(t) for t in tests}
    supported, wrong, overclaimed = tests
    assert verdicts["c1"] == "supported", supported
    assert supported.replication.low > 0.5 and supported.second_ablation.low > 0.5 and supported.beats_controls
    assert verdicts["c2"] == "refuted", wrong
    assert verdicts["c3"] != "supported", overclaimed  # mlp.2 alone does not keep everything
    assert all(t.adjusted_p >= t.p_value for t in tests)
    assert len(supported.evidence) == 5 and supported.n == 40
    assert set(supported.evidence) <= set(run.experiment_keys())


def test_a_component_working_against_the_answer_is_supported_as_such_and_a_helper_refuted(planted, run):
    """On the planted organism mlp.1 pushes towards the foil (its key removes -0.25): ablating it
    adds to the logit difference. The opposition score is the necessity score's negative, the
    experiments are the same ones, and the harness's separate re-measurement agrees."""
    from agents.positions import scope_positions
    from evals.remeasure import measure_claim

    fresh = _trigger_prompts(planted, 40, seed=404)
    claims = [SetClaim(id="against", components=("mlp.1",), kind="opposition", threshold=0.1),
              SetClaim(id="helper", components=("mlp.2",), kind="opposition", threshold=0.1),
              SetClaim(id="needed", components=("mlp.1",), kind="necessity", threshold=0.1)]
    tests = holm_adjust([examine_claim(run, planted, c, fresh, seed=2, n_resamples=500) for c in claims])
    against, helper, needed = tests
    assert verdict_for(against) == "supported", against
    assert verdict_for(helper) == "refuted", helper
    assert verdict_for(needed) == "refuted", needed
    assert against.evidence[:2] == needed.evidence[:2]  # the same two ablations, read the other way
    assert against.replication.estimate == pytest.approx(-needed.replication.estimate)
    assert against.second_ablation.estimate == pytest.approx(-needed.second_ablation.estimate)
    scope = scope_positions(planted, fresh)
    assert against.replication.estimate == pytest.approx(measure_claim(planted, claims[0], fresh, scope), abs=1e-6)
    assert measure_claim(planted, claims[2], fresh, scope) == pytest.approx(-against.replication.estimate, abs=1e-6)


def test_re_examining_a_claim_pays_nothing_twice(planted, run):
    fresh = _trigger_prompts(planted, 12, seed=202)
    claim = SetClaim(id="c1", components=("mlp.2",), kind="necessity", threshold=0.5)
    first = examine_claim(run, planted, claim, fresh, seed=3, n_resamples=500)
    misses = run.record.cost.cache_misses
    again = examine_claim(run, planted, claim, fresh, seed=3, n_resamples=500)
    assert run.record.cost.cache_misses == misses == 5
    assert run.record.cost.cache_hits == 5
    assert again == first


def test_claims_share_their_clean_source_and_baseline_runs_and_score_the_same(planted, tmp_path):
    """The critic's ablations under one shared memo (as in an investigation): the same tests,
    and the claimed set and its controls are the only rows forwarded more than once."""
    from tools.experiments.memo import SharedRuns, sharing_runs

    fresh = _trigger_prompts(planted, 16, seed=303)
    claims = [SetClaim(id="c1", components=("mlp.2",), kind="necessity", threshold=0.5),
              SetClaim(id="c2", components=("mlp.0", "mlp.2"), kind="faithfulness", threshold=0.5)]

    def examine_all(folder: str) -> tuple[list, int]:
        with Workspace.open(tmp_path / folder, writer=True) as ws:
            fresh_run = RunStore(ws).create("why does the trigger produce banana?", "organism-planted")
            rows = planted.forwards.rows
            tests = [examine_claim(fresh_run, planted, c, fresh, seed=5, n_resamples=200) for c in claims]
            return tests, planted.forwards.rows - rows

    alone, rows_alone = examine_all("alone")
    with sharing_runs(SharedRuns()):
        shared, rows_shared = examine_all("shared")
    assert shared == alone
    # alone: 10 ablations, each a clean run, a source (corrupted run or means over it) and the
    # baseline besides the set. Shared: one clean and one corrupted run (the means are taken
    # over it), one everything-ablated baseline per method (both claims' modes share it), then
    # one pass per set
    assert rows_alone == 10 * 4 * 16
    assert rows_shared == (1 + 1 + 2 + 10) * 16


def test_claims_that_cannot_be_examined_say_why(planted, run):
    fresh = _trigger_prompts(planted, 4, seed=303)
    with pytest.raises(UserInputError, match="names no components"):
        examine_claim(run, planted, SetClaim(id="e", components=(), kind="necessity", threshold=0.5), fresh)
    no_corrupted = fresh.model_copy(update={"corrupted": ()})
    with pytest.raises(UserInputError, match="needs corrupted prompts"):
        examine_claim(run, planted, SetClaim(id="e", components=("mlp.2",), kind="necessity", threshold=0.5),
                      no_corrupted)
    unadjusted = examine_claim(run, planted, SetClaim(id="u", components=("mlp.2",), kind="necessity",
                                                       threshold=0.5), fresh, n_resamples=200)
    with pytest.raises(UserInputError, match="holm_adjust"):
        verdict_for(unadjusted)


def test_the_second_method_must_agree_on_the_size_not_pass_a_second_significance_test():
    """The verdict rule on the numbers alone: the replication's CI decides; the second method's
    estimate has to clear the prediction too, whatever its CI's width."""
    from agents.critic import ClaimTest
    from tools.stats import Interval

    def tested(replication, second, controls=(0.0, 0.01, 0.02), p=0.001):
        ci = lambda e, lo, hi: Interval(estimate=e, low=lo, high=hi, n=32, confidence=0.95)  # noqa: E731
        return ClaimTest(claim=SetClaim(id="c", components=("mlp.3",), kind="faithfulness", threshold=0.8),
                         replication=ci(*replication), second_ablation=ci(*second), second_method="mean ablation",
                         controls=controls, control_kind="random sets", p_value=p, adjusted_p=p, n=32, evidence=())

    # gemma-3-270m's facts circuit at seed 0: replication clear of 0.8, mean ablation's CI wide
    assert verdict_for(tested((0.895, 0.826, 0.959), (0.860, 0.743, 1.017))) == "supported"
    assert verdict_for(tested((0.895, 0.826, 0.959), (0.790, 0.700, 0.900))) == "inconclusive"  # disagrees
    assert verdict_for(tested((0.895, 0.826, 0.959), (0.860, 0.743, 1.017), controls=(0.9,))) == "inconclusive"
    assert verdict_for(tested((0.895, 0.826, 0.959), (0.860, 0.743, 1.017), p=0.06)) == "inconclusive"
    assert verdict_for(tested((0.85, 0.78, 0.92), (0.95, 0.90, 1.0))) == "inconclusive"  # replication straddles
    assert verdict_for(tested((0.70, 0.62, 0.79), (0.95, 0.90, 1.0))) == "refuted"
    # refuted whatever the p-value and the controls; a p-value that is not a number supports nothing
    assert verdict_for(tested((0.70, 0.62, 0.79), (0.5, 0.4, 0.6), controls=(0.9,), p=1.0)) == "refuted"
    assert verdict_for(tested((0.895, 0.826, 0.959), (0.860, 0.743, 1.017), p=float("nan"))) == "inconclusive"
    assert verdict_for(tested((0.70, 0.62, 0.79), (0.95, 0.90, 1.0), p=float("nan"))) == "refuted"


def test_a_circuit_faithful_under_one_ablation_only_is_inconclusive_not_supported(run):
    """IOI on the default organism, MLPs kept, ablating at every position: three heads keep the
    logit difference under resample ablation but not under mean ablation (one mean over every
    position mixes the first token's activity into every other), so the critic reports both,
    not a success."""
    model = load_model("organism-default")
    fresh = PromptPairs(task="ioi", n=48, seed=404)
    claim = SetClaim(id="h", components=("head.1.2", "head.3.0", "head.0.3"), kind="faithfulness",
                     threshold=0.8, method="resample", universe=("head",), scope="all")
    (test,) = holm_adjust([examine_claim(run, model, claim, fresh, n_resamples=500)])
    assert test.replication.low > 0.8 and test.second_ablation.high < 0.8
    assert verdict_for(test) == "inconclusive"
    methods = [run.load_experiment(key).spec.method for key in test.evidence]
    assert methods == ["resample", "mean", "resample", "resample", "resample"]
    for key in test.evidence:
        spec = run.load_experiment(key).spec
        assert spec.universe == ("head",) and all(c.startswith("head.") for c in spec.components)
    # from the first changed token on, a mean per position from the end keeps the template's
    # structure: both ablations agree and the same claim is supported
    scoped = claim.model_copy(update={"scope": "changed_onward"})
    (test,) = holm_adjust([examine_claim(run, model, scoped, fresh, n_resamples=500)])
    assert verdict_for(test) == "supported", test
    means = [run.load_experiment(k) for k in test.evidence if run.load_experiment(k).spec.method == "mean"]
    assert [m.mean_over for m in means] == ["prompts_from_end"] and means[0].spec.positions == (-5, -4, -3, -2, -1)


def test_mechanism_claims_are_replicated_with_a_second_method_and_controls(run):
    """Writers (direct paths), a path into a head's query, routing and steering, on IOI."""
    from agents.claims import DirectClaim, PathClaim, RoutingClaim, SteeringClaim

    model = load_model("organism-default")
    fresh = PromptPairs(task="ioi", n=32, seed=505)
    discovery = PromptPairs(task="ioi", n=32, seed=0, split="train")
    claims = [DirectClaim(id="w", components=("mlp.3", "head.3.0"), threshold=0.5),
              DirectClaim(id="w-wrong", components=("head.2.2",), threshold=0.2),
              PathClaim(id="p", components=("head.1.2",), receivers=("head.3.0.q",), threshold=0.1),
              RoutingClaim(id="r", components=(), layer=2, position=-1, threshold=0.75),
              RoutingClaim(id="r-wrong", components=(), layer=0, position=-1, threshold=0.5),
              SteeringClaim(id="s", components=(), threshold=0.3, site="resid_pre.2", estimated_on=discovery)]
    tests = holm_adjust([examine_claim(run, model, c, fresh, seed=i, n_resamples=500) for i, c in enumerate(claims)])
    verdicts = {t.claim.id: verdict_for(t) for t in tests}
    assert verdicts["w"] == verdicts["p"] == verdicts["r"] == "supported", tests
    assert verdicts["w-wrong"] == verdicts["r-wrong"] == "refuted"
    # the mean clean - corrupted direction cancels over IOI's random names: steering does nothing
    assert verdicts["s"] == "refuted"
    by_id = {t.claim.id: t for t in tests}
    assert by_id["w"].second_method == "denoising path patching" and len(by_id["w"].controls) == 3
    assert all(c < by_id["w"].replication.estimate for c in by_id["w"].controls)
    assert by_id["r"].control_kind.startswith("other positions") and max(by_id["r"].controls) < 0.1
    assert by_id["s"].control_kind == "random directions of the same norm"


def test_steering_along_a_consistent_direction_is_supported(planted, run):
    """The trigger's answer is always ' banana': the clean − corrupted direction is consistent."""
    from agents.claims import SteeringClaim

    discovery = _trigger_prompts(planted, 32, seed=7)
    fresh = _trigger_prompts(planted, 32, seed=808)
    claim = SteeringClaim(id="s", components=(), threshold=0.3, site="resid_pre.3", estimated_on=discovery)
    (test,) = holm_adjust([examine_claim(run, planted, claim, fresh, n_resamples=500)])
    assert verdict_for(test) == "supported", test
    assert test.second_method == "direction re-estimated on the fresh prompts"
    assert test.beats_controls and max(test.controls) < test.replication.estimate / 2


def test_controls_are_drawn_outside_every_claims_components_when_the_pool_allows():
    from agents.critic import control_sets

    pool = [f"head.0.{h}" for h in range(6)] + ["mlp.0", "mlp.1"]
    named = {"mlp.0", "mlp.1", "head.0.0"}
    for seed in range(20):
        for s in control_sets(pool, {"head.0.1"}, 3, seed=seed, avoid=named):
            assert len(s) == 1 and not set(s) & (named | {"head.0.1"})
    # too few components left outside the claims: disjoint from the claimed set only
    drawn = [set(s) for seed in range(20) for s in control_sets(pool, {"head.0.1", "head.0.2", "head.0.3"}, 3,
                                                                 seed=seed, avoid=named)]
    assert all(not s & {"head.0.1", "head.0.2", "head.0.3"} for s in drawn)
    assert any(s & named for s in drawn)
    # nothing named beyond the claim: the old draw, unchanged
    assert control_sets(pool, {"head.0.1"}, 3, seed=4, avoid={"head.0.1"}) == control_sets(pool, {"head.0.1"}, 3,
                                                                                            seed=4)


def test_a_component_is_not_judged_against_the_components_other_claims_name(planted, run):
    """mlp.3 matters less than mlp.0 and mlp.2; with them among the controls, "beats every
    control" would ask whether it is the most important component; kept out, whether it matters
    more than the rest."""
    fresh = _trigger_prompts(planted, 24, seed=303)
    claim = SetClaim(id="alone", components=("mlp.3",), kind="necessity", threshold=0.1)
    named = ("mlp.0", "mlp.1", "mlp.2", "mlp.3")
    test = examine_claim(run, planted, claim, fresh, seed=4, n_resamples=500, named=named)
    assert test.control_kind.endswith("outside every claim's components")
    drawn = [run.store.cache.get(k).spec.components for k in test.evidence[2:]]
    assert len(drawn) == 3 and all(len(c) == 1 and not set(c) & set(named) for c in drawn)
    assert test.replication.low > 0.1 and test.beats_controls


def test_a_claims_critic_seed_follows_the_claim_and_the_run_seed_not_its_place_or_name():
    """Adding, dropping or reordering other claims must not redraw a claim's controls; examining
    the same claim again must not offer a new draw (a seed to shop for)."""
    from agents.claims import DirectClaim
    from agents.critic import critic_seed

    necessary = SetClaim(id="c1", components=("mlp.2",), kind="necessity", threshold=0.5)
    seed = critic_seed(0, necessary)
    assert 0 <= seed < 2**32
    assert critic_seed(0, necessary.model_copy(update={"id": "renamed"})) == seed
    assert critic_seed(0, SetClaim(id="c1", components=("mlp.2",), kind="necessity", threshold=0.5)) == seed
    others = [critic_seed(1, necessary),
              critic_seed(0, necessary.model_copy(update={"threshold": 0.45})),
              critic_seed(0, necessary.model_copy(update={"components": ("mlp.1",)})),
              critic_seed(0, necessary.model_copy(update={"kind": "opposition"})),
              critic_seed(0, necessary.model_copy(update={"method": "mean"})),
              critic_seed(0, DirectClaim(id="c1", components=("mlp.2",), threshold=0.5))]
    assert len({seed, *others}) == 1 + len(others)


def test_an_examine_job_stored_with_the_claims_place_as_its_seed_still_loads():
    """Runs checkpointed before claim-content seeds stored ``seed``; they resume without it."""
    from pydantic import ValidationError

    from agents.steps import JOB, ExamineJob

    claim = {"id": "c1", "kind": "necessity", "components": ["mlp.2"], "threshold": 0.5}
    job = JOB.validate_python({"step": "examine", "claim": claim, "seed": 4})
    assert isinstance(job, ExamineJob) and "seed" not in job.model_dump()
    with pytest.raises(ValidationError, match="extra_forbidden"):
        JOB.validate_python({"step": "examine", "claim": claim, "sead": 4})


def test_a_path_claim_whose_sender_is_not_before_its_receiver_is_refused_in_words_before_any_forward_pass(
        planted, run):
    from agents.claims import PathClaim

    fresh = _trigger_prompts(planted, 8, seed=303)
    for senders, receiver in ((("head.3.0",), "head.0.0.q"), (("mlp.0", "head.1.2"), "head.1.0.k")):
        claim = PathClaim(id="late", components=senders, receivers=(receiver,), threshold=0.1)
        layer = receiver.split(".")[1]
        with pytest.raises(UserInputError, match=rf"sender {senders[-1]} is not before every receiver \(the "
                                                 rf"earliest receiver is in layer {layer}\)"):
            examine_claim(run, planted, claim, fresh, seed=4)
    assert run.record.cost.forward_passes == 0
