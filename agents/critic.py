"""The critic: every claim re-measured by fresh experiments, with controls, CIs and Holm.

The critic does not read a claim's text; it measures its score (`agents.claims`) on prompts
never used to find it (a fresh seed of the task generator, or perturbations of the user's
prompts), with:

1. **replication** — the claimed score with the claim's own method, and a bootstrap 95% CI
   over prompts (`tools.stats.ratio_bootstrap_ci`: every score is a ratio of means);
2. **a second method**, so the finding does not hang on one choice:

   ===============  ===========================================================
   kind             second method
   ===============  ===========================================================
   set claims       the other ablation (mean for resample, resample for mean)
   direct, path     path patching in the other direction (denoising for noising)
   routing          patching in the other direction (noising for denoising)
   steering         the direction re-estimated on the fresh prompts themselves
   ===============  ===========================================================

3. **controls** — ``n_controls`` random component sets of the same size (for routing: other
   positions of the same layer; for steering: random directions of the same norm), scored
   the same way; the claim must beat every one. Component controls are drawn from the
   components that *no* claim of the run names (``named``, filled by trusted code from the
   run's claims, never by a brain) when enough remain: a control is something the
   investigation says does not matter, so "beats every control" asks whether the claimed
   components matter more than the unexplained rest — not whether a single component beats
   another the run itself claims (on the planted organism three random single components include
   mlp.0 or mlp.2, which outrank mlp.3, 30% of the time);
4. **a p-value** — one-sided shifted bootstrap of the score (the ratio of means, resampled as
   for the CI) against the threshold; `holm_adjust` corrects the p-values of all claims of a
   run together.

Verdict (`verdict_for`): **supported** when the replication's CI lies wholly above the
threshold, the second method's estimate is above it too, every control is beaten, and the
Holm-adjusted p-value is below alpha; **refuted** when the replication CI lies wholly below the
threshold; **inconclusive** otherwise (the report shows every number, the second method's CI
included). The test of the claim is the replication's, and its p-value is the one Holm corrects;
the second method is a check that the size does not hang on one choice of method, so it has to
agree (its estimate clears the prediction), not pass a second, uncorrected significance test of
its own. Requiring its whole CI too let the noisier method decide: on gemma-3-270m the second
method's CI was a median 2.7 times as wide as the replication's for circuit claims and 4.5 times
for single components (the claims of four benchmark evals), so circuits and components clear of
the prediction by replication, with a mean-ablation estimate above it, were left inconclusive,
and circuits were grown until the spread shrank.

Every experiment goes through ``run.experiment`` (the workspace's cache), so re-testing a claim
after a crash pays nothing twice. Within an investigation the ablations of all claims share the
clean run of the fresh prompts, their corrupted run or means, and the everything-ablated baseline
(`tools.experiments.memo`): a set claim's five ablations then forward the claimed set and the
controls, not five copies of the same three runs.

The random draws (control sets, random directions, bootstrap resamples) for a claim come from
`critic_seed`: a hash of the run's seed and what the claim says, not of its place among the
run's claims. A verdict then depends on the claim, the fresh prompts and the run's seed only:
claiming something else beside it, or in another order, does not redraw its controls, and
examining the same claim again draws the same ones (no seed to shop for).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from agents.claims import AnyClaim, DirectClaim, PathClaim, RoutingClaim, SetClaim, SteeringClaim
from agents.positions import scope_positions
from tools.components import parse_component
from tools.errors import UserInputError
from tools.experiments import (
    AblationSpec,
    ActivationPatchingSpec,
    PatchSweep,
    PathPatchingSpec,
    PromptPairs,
    SteeringSpec,
)
from tools.experiments.ablation import AblationResult, universe_components
from tools.experiments.steering import MeanDifferenceDirection
from tools.stats import (
    Interval,
    Verdict,
    decide,
    holm,
    random_component_sets,
    ratio_bootstrap_ci,
    ratio_bootstrap_pvalue,
)

if TYPE_CHECKING:
    from memory.runstore import Run
    from tools.loading import LoadedModel

Terms = tuple[np.ndarray, np.ndarray]
"""Per-prompt numerator and denominator whose means' ratio is a score."""


class ClaimTest(BaseModel):
    """What the critic measured for one claim, with the evidence keys of every experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    claim: AnyClaim
    replication: Interval
    """The claimed score on fresh prompts, with the claim's own method."""
    second_ablation: Interval
    """The same score by the second method (see the module docstring)."""
    second_method: str
    controls: tuple[float, ...]
    """The score of each control (random sets of equal size, other positions, random directions)."""
    control_kind: str
    p_value: float
    adjusted_p: float | None = None
    """Holm-adjusted across the run's claims (`holm_adjust`); None until adjusted."""
    n: int
    evidence: tuple[str, ...]
    """Experiment keys: replication, second method, then the controls."""

    @property
    def beats_controls(self) -> bool:
        return all(self.replication.estimate > c for c in self.controls)


@dataclass(frozen=True)
class _Measured:
    main: Terms
    second: Terms
    second_method: str
    controls: list[float]
    control_kind: str
    evidence: list[str]


def critic_seed(run_seed: int, claim: AnyClaim) -> int:
    """The seed of the critic's random draws for ``claim`` in a run with seed ``run_seed``: the
    first four bytes of a SHA-256 of both (the claim as JSON, without its id, which names it but
    does not change what is tested). Below 2**32, like a user's seed, so the seeds derived from
    it (`tools.tasks.base.MAX_SEED`) fit 64 bits."""
    body = claim.model_dump(mode="json", exclude={"id"})
    text = json.dumps([run_seed, type(claim).__name__, body], sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def examine_claim(run: "Run", model: "LoadedModel", claim: AnyClaim, prompts: PromptPairs, *,
                  n_controls: int = 3, seed: int = 0, n_resamples: int = 2000,
                  named: Sequence[str] = ()) -> ClaimTest:
    """Run the critic's experiments for ``claim`` on ``prompts`` (fresh ones: the caller draws
    them from a seed never used to find the claim) and return the measurements. ``named``: the
    components the run's claims name, kept out of the controls (see the module docstring)."""
    if not claim.components and not isinstance(claim, (RoutingClaim, SteeringClaim)):
        raise UserInputError(f"claim {claim.id}: names no components to test")
    if not prompts.has_corrupted:
        raise UserInputError(f"claim {claim.id}: the critic's experiments compare clean and corrupted "
                             "runs, so it needs corrupted prompts; give a task or corrupted prompts")
    measure: Callable[..., _Measured] = _MEASURES[type(claim)]
    m = measure(run, model, claim, prompts, n_controls=n_controls, seed=seed, named=frozenset(named))
    numerator, denominator = m.main
    replication = ratio_bootstrap_ci(numerator, denominator, seed=seed, n_resamples=n_resamples)
    second = ratio_bootstrap_ci(*m.second, seed=seed, n_resamples=n_resamples)
    p_value = ratio_bootstrap_pvalue(numerator, denominator, threshold=claim.threshold, seed=seed,
                                     n_resamples=n_resamples)
    return ClaimTest(claim=claim, replication=replication, second_ablation=second,
                     second_method=m.second_method, controls=tuple(m.controls), control_kind=m.control_kind,
                     p_value=p_value, n=replication.n, evidence=tuple(m.evidence))


def holm_adjust(tests: Sequence[ClaimTest]) -> list[ClaimTest]:
    """The tests with Holm-adjusted p-values over all of them (one run's claims together)."""
    adjusted = holm([t.p_value for t in tests])
    return [t.model_copy(update={"adjusted_p": p}) for t, p in zip(tests, adjusted)]


def verdict_for(test: ClaimTest, *, alpha: float = 0.05) -> Verdict:
    """supported / refuted / inconclusive by the rule in the module docstring."""
    if test.adjusted_p is None:
        raise UserInputError(f"claim {test.claim.id}: adjust the p-values across the run's claims "
                             "(holm_adjust) before deciding")
    bound, p = test.claim.threshold, test.adjusted_p
    # the replication decides as any one-sided prediction does (`tools.stats.decide`; a p-value
    # that could not be computed supports nothing); the second method and the controls can only
    # hold a "supported" back
    verdict = decide(test.replication, predicted_at_least=bound, adjusted_p=p if p == p else 1.0, alpha=alpha)
    if verdict == "supported" and not (test.second_ablation.estimate > bound and test.beats_controls):
        return "inconclusive"
    return verdict


# -- set claims: ablation --------------------------------------------------------------------


def _measure_set(run: "Run", model: "LoadedModel", claim: SetClaim, prompts: PromptPairs, *,
                 n_controls: int, seed: int, named: frozenset[str] = frozenset()) -> _Measured:
    mode = "keep" if claim.kind == "faithfulness" else "ablate"
    positions = claim.positions
    if positions is None and claim.scope == "changed_onward":
        positions = scope_positions(model, prompts)

    def measure(components: Sequence[str], method: str) -> AblationResult:
        spec = AblationSpec(prompts=prompts, components=tuple(components), method=method, mode=mode,
                            universe=claim.universe, positions=positions)
        return run.experiment(model, spec)

    other = "resample" if claim.method == "mean" else "mean"
    main = measure(claim.components, claim.method)
    second = measure(claim.components, other)
    pool = [str(c) for c in universe_components(claim.universe, model.adapter.n_layers, model.adapter.n_heads)]
    # the claimed set as the ablation read it (``attn.L`` is its heads): ablated, or kept
    claimed = set(main.ablated) if mode == "ablate" else set(pool) - set(main.ablated)
    sets = control_sets(pool, claimed, n_controls, seed=seed, avoid=named)
    controls = [measure(s, claim.method) for s in sets]
    return _Measured(main=_ablation_terms(main, claim.kind), second=_ablation_terms(second, claim.kind),
                     second_method=f"{other} ablation",
                     controls=[_ratio(_ablation_terms(c, claim.kind)) for c in controls],
                     control_kind=f"random sets of {len(claimed)} from the {'+'.join(claim.universe)} universe"
                                  + controls_outside(pool, claimed, named),
                     evidence=[main.key, second.key, *(c.key for c in controls)])


def control_sets(pool: Sequence[str], claimed: set[str], k: int, *, seed: int,
                 avoid: Sequence[str] | frozenset[str] = ()) -> list[list[str]]:
    """``k`` random sets of ``len(claimed)`` components: disjoint from the claimed set and from
    ``avoid`` (what other claims name) when the pool allows it, else disjoint from the claimed
    set, else drawn from the whole pool (a large circuit against random sets of its size that
    overlap it), never the claimed set itself."""
    size = len(claimed)
    if _avoids(pool, claimed, avoid):
        return random_component_sets(pool, size, k, exclude=sorted((claimed | set(avoid)) & set(pool)), seed=seed)
    if len(set(pool) - claimed) >= size:
        return random_component_sets(pool, size, k, exclude=sorted(claimed), seed=seed)
    drawn = random_component_sets(pool, size, k + 1, seed=seed)
    return [s for s in drawn if set(s) != claimed][:k]


def _avoids(pool: Sequence[str], claimed: set[str], avoid: Sequence[str] | frozenset[str]) -> bool:
    """Whether `control_sets` draws outside ``avoid`` too: it names something beyond the claimed
    set, and enough of the pool remains outside both."""
    outside = claimed | set(avoid)
    return bool(outside - claimed) and len(set(pool) - outside) >= len(claimed)


def controls_outside(pool: Sequence[str], claimed: set[str], named: Sequence[str] | frozenset[str]) -> str:
    """How the controls were drawn, in words (`control_sets`' first case, or nothing)."""
    return ", outside every claim's components" if _avoids(pool, claimed, named) else ""


def _ablation_terms(result: AblationResult, kind: str) -> Terms:
    t = {k: v.double().numpy() for k, v in result.tensors.items()}
    clean, ablated, everything = t["clean_logit_diff"], t["ablated_logit_diff"], t["everything_ablated_logit_diff"]
    if kind == "necessity":
        numerator = clean - ablated
    elif kind == "opposition":
        numerator = ablated - clean
    else:  # faithfulness
        numerator = ablated - everything
    return numerator, clean - everything


# -- direct and path claims: path patching -----------------------------------------------------


def _measure_paths(run: "Run", model: "LoadedModel", claim: DirectClaim | PathClaim, prompts: PromptPairs, *,
                   n_controls: int, seed: int, named: frozenset[str] = frozenset()) -> _Measured:
    receivers = ("logits",) if isinstance(claim, DirectClaim) else claim.receivers
    if isinstance(claim, DirectClaim):
        pool = [str(c) for c in universe_components(("head", "mlp"), model.adapter.n_layers, model.adapter.n_heads)]
    else:
        first = min(parse_component(r.rsplit(".", 1)[0]).layer for r in receivers)
        pool = [f"head.{layer}.{h}" for layer in range(first) for h in range(model.adapter.n_heads)]
    # the second method's spec first: it checks that every sender is before every receiver
    denoising = PathPatchingSpec(prompts=prompts, receivers=receivers, senders=(),
                                 sender_sets=(claim.components,), mode="denoising")
    sets = control_sets(pool, set(claim.components), n_controls, seed=seed, avoid=named)
    main = run.experiment(model, PathPatchingSpec(prompts=prompts, receivers=receivers, senders=(),
                                                  sender_sets=(claim.components, *map(tuple, sets))))
    second = run.experiment(model, denoising)
    controls = [_ratio(_path_terms(main, i, "noising")) for i in range(1, 1 + len(sets))]
    return _Measured(main=_path_terms(main, 0, "noising"), second=_path_terms(second, 0, "denoising"),
                     second_method="denoising path patching", controls=controls,
                     control_kind=f"random sets of {len(claim.components)} senders"
                                  + controls_outside(pool, set(claim.components), named),
                     evidence=[main.key, second.key])


def _path_terms(result, index: int, mode: str) -> Terms:
    t = result.tensors
    clean, corrupted = t["clean_logit_diff"].double().numpy(), t["corrupted_logit_diff"].double().numpy()
    patched = t["logit_diff.sets"][index].double().numpy()
    numerator = clean - patched if mode == "noising" else patched - corrupted
    return numerator, clean - corrupted


# -- routing claims: residual patching -----------------------------------------------------------


def _measure_routing(run: "Run", model: "LoadedModel", claim: RoutingClaim, prompts: PromptPairs, *,
                     n_controls: int, seed: int, named: frozenset[str] = frozenset()) -> _Measured:
    from tools.experiments.prompts import tokenize_prompts

    shortest = int(tokenize_prompts(model, prompts, need_corrupted=True, aligned=True).lengths.min())
    others = [p for p in range(-shortest + 1, 0) if p != claim.position]  # never the first token
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(others, size=min(n_controls, len(others)), replace=False).tolist())
    positions = (claim.position, *chosen)
    sweep = (PatchSweep(site="resid_pre", per_position=True),)
    main = run.experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=sweep, layers=(claim.layer,),
                                                        positions=positions))
    second = run.experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=sweep, layers=(claim.layer,),
                                                          positions=(claim.position,), mode="noising"))
    return _Measured(main=_resid_terms(main, 0, "denoising"), second=_resid_terms(second, 0, "noising"),
                     second_method="noising (corrupted into clean)",
                     controls=[_ratio(_resid_terms(main, i, "denoising")) for i in range(1, len(positions))],
                     control_kind=f"other positions {', '.join(map(str, chosen))} of the same layer",
                     evidence=[main.key, second.key])


def _resid_terms(result, index: int, mode: str) -> Terms:
    t = result.tensors
    clean, corrupted = t["clean_logit_diff"].double().numpy(), t["corrupted_logit_diff"].double().numpy()
    patched = t["logit_diff.resid_pre_by_pos"][0, index].double().numpy()
    numerator = patched - corrupted if mode == "denoising" else clean - patched
    return numerator, clean - corrupted


# -- steering claims --------------------------------------------------------------------------


def _measure_steering(run: "Run", model: "LoadedModel", claim: SteeringClaim, prompts: PromptPairs, *,
                      n_controls: int, seed: int, named: frozenset[str] = frozenset()) -> _Measured:
    def steer(direction: MeanDifferenceDirection, control_seed: int):
        return run.experiment(model, SteeringSpec(prompts=prompts, direction=direction, site=claim.site,
                                                  positions=(claim.position,), alphas=(-1.0,),
                                                  control=True, control_seed=control_seed))

    from tools.experiments.prompts import resolve_prompts

    items = resolve_prompts(claim.estimated_on, model.tokenizer)
    discovered = MeanDifferenceDirection(site=claim.site, position=claim.position,
                                         positive=tuple(i.clean for i in items),
                                         negative=tuple(i.corrupted for i in items))
    runs = [steer(discovered, seed * 1000 + i) for i in range(max(1, n_controls))]
    second = steer(MeanDifferenceDirection(site=claim.site, position=claim.position), seed * 1000)
    main = runs[0]
    controls = [_ratio(_steer_terms(r, "control_logit_diff")) for r in runs]
    return _Measured(main=_steer_terms(main, "logit_diff"), second=_steer_terms(second, "logit_diff"),
                     second_method="direction re-estimated on the fresh prompts",
                     controls=controls[:n_controls], control_kind="random directions of the same norm",
                     evidence=[main.key, second.key, *(r.key for r in runs[1:])])


def _steer_terms(result, name: str) -> Terms:
    baseline = result.tensors["baseline_logit_diff"].double().numpy()
    steered = result.tensors[name][0].double().numpy()
    return baseline - steered, baseline


def _ratio(terms: Terms) -> float:
    numerator, denominator = terms
    return float(numerator.mean() / denominator.mean())


_MEASURES = {SetClaim: _measure_set, DirectClaim: _measure_paths, PathClaim: _measure_paths,
             RoutingClaim: _measure_routing, SteeringClaim: _measure_steering}

__all__ = ["ClaimTest", "SetClaim", "examine_claim", "holm_adjust", "verdict_for"]
