"""The critic's experiments for a claim about a set of components, and its verdict rule.

A worker's claim about a component set carries a pre-registered prediction: *ablating the set
removes at least ``threshold`` of the behaviour* (necessity) or *the set alone keeps at least
``threshold`` of it* (faithfulness). The critic does not read the claim's text; it measures,
on prompts never used to find the set (a fresh seed of the task generator):

1. **replication** — the claimed score with the claim's own ablation (``method``: the one the
   set was found with), and a bootstrap 95% CI over prompts (`tools.stats.ratio_bootstrap_ci`:
   scores are ratios of means);
2. **a second ablation type** — the same score with the other of mean and resample ablation,
   so the finding does not hang on one choice of "removed";
3. **a control** — ``n_controls`` random sets of the same size drawn from the other components
   of the universe, with the claim's ablation; the claimed set must beat every one of them;
4. **a p-value** — one-sided shifted bootstrap of the per-prompt score against the threshold;
   `holm_adjust` corrects the p-values of all claims of a run together.

Verdict (`verdict_for`): **supported** when both ablation types put their whole CI above the
threshold, the set beats every control, and the Holm-adjusted p-value is below alpha;
**refuted** when the replication CI lies wholly below the threshold; **inconclusive** otherwise
(for instance a circuit faithful under resample ablation but not under mean ablation: the
report shows both numbers).
Every experiment goes through ``run.experiment`` (the workspace's cache), so re-testing a claim
after a crash pays nothing twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from tools.errors import UserInputError
from tools.experiments.ablation import AblationResult, AblationSpec, universe_components
from tools.experiments.prompts import PromptPairs
from tools.stats import Interval, Verdict, bootstrap_pvalue, holm, random_component_sets, ratio_bootstrap_ci

if TYPE_CHECKING:
    from memory.runstore import Run
    from tools.loading import LoadedModel

ClaimKind = Literal["necessity", "faithfulness"]


class SetClaim(BaseModel):
    """A claim that a set of components is necessary for, or sufficient to keep, a behaviour."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    components: tuple[str, ...]
    kind: ClaimKind
    threshold: float
    """The pre-registered prediction: the score is at least this (a fraction of the behaviour)."""
    method: Literal["mean", "resample"] = "mean"
    """The ablation the set was found with; the critic replicates with it and checks the other."""
    universe: tuple[Literal["head", "mlp"], ...] = ("head", "mlp")
    """What takes part in the ablations (`AblationSpec.universe`): ``("head",)`` keeps every MLP
    intact, the usual convention for attention circuits such as IOI. Controls are drawn from it."""


class ClaimTest(BaseModel):
    """What the critic measured for one claim, with the evidence keys of every experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    claim: SetClaim
    replication: Interval
    """The claimed score on fresh prompts, with the claim's ablation."""
    second_ablation: Interval
    """The same score with the other ablation (resample for mean, mean for resample)."""
    controls: tuple[float, ...]
    """The score of each random set of equal size (the claim's ablation, same prompts)."""
    p_value: float
    adjusted_p: float | None = None
    """Holm-adjusted across the run's claims (`holm_adjust`); None until adjusted."""
    n: int
    evidence: tuple[str, ...]
    """Experiment keys: replication, second ablation, then each control."""

    @property
    def beats_controls(self) -> bool:
        return all(self.replication.estimate > c for c in self.controls)


def examine_claim(run: "Run", model: "LoadedModel", claim: SetClaim, prompts: PromptPairs, *,
               n_controls: int = 3, seed: int = 0, n_resamples: int = 2000) -> ClaimTest:
    """Run the critic's experiments for ``claim`` on ``prompts`` (fresh ones: the caller draws
    them from a seed never used to find the set) and return the measurements."""
    if not claim.components:
        raise UserInputError(f"claim {claim.id}: names no components to test")
    if not prompts.has_corrupted:
        raise UserInputError(f"claim {claim.id}: resample ablation needs corrupted prompts; "
                             "give a task or corrupted prompts")
    mode = "ablate" if claim.kind == "necessity" else "keep"

    def measure(components: Sequence[str], method: str) -> AblationResult:
        spec = AblationSpec(prompts=prompts, components=tuple(components), method=method, mode=mode,
                            universe=claim.universe)
        return run.experiment(model, spec)

    other = "resample" if claim.method == "mean" else "mean"
    main = measure(claim.components, claim.method)
    second = measure(claim.components, other)
    pool = [str(c) for c in universe_components(claim.universe, model.adapter.n_layers, model.adapter.n_heads)]
    # the claimed set as the ablation read it (``attn.L`` is its heads): ablated, or kept
    claimed = set(main.ablated) if mode == "ablate" else set(pool) - set(main.ablated)
    sets = random_component_sets(pool, len(claimed), n_controls, exclude=sorted(claimed), seed=seed)
    controls = [measure(s, claim.method) for s in sets]
    numerator, denominator = _score_terms(main, claim.kind)
    replication = ratio_bootstrap_ci(numerator, denominator, seed=seed, n_resamples=n_resamples)
    second_interval = ratio_bootstrap_ci(*_score_terms(second, claim.kind), seed=seed, n_resamples=n_resamples)
    per_prompt = numerator / denominator.mean()
    p_value = bootstrap_pvalue(per_prompt, threshold=claim.threshold, alternative="greater",
                               seed=seed, n_resamples=n_resamples)
    return ClaimTest(claim=claim, replication=replication, second_ablation=second_interval,
                     controls=tuple(_score(c, claim.kind) for c in controls), p_value=p_value,
                     n=replication.n, evidence=(main.key, second.key, *(c.key for c in controls)))


def holm_adjust(tests: Sequence[ClaimTest]) -> list[ClaimTest]:
    """The tests with Holm-adjusted p-values over all of them (one run's claims together)."""
    adjusted = holm([t.p_value for t in tests])
    return [t.model_copy(update={"adjusted_p": p}) for t, p in zip(tests, adjusted)]


def verdict_for(test: ClaimTest, *, alpha: float = 0.05) -> Verdict:
    """supported / refuted / inconclusive by the rule in the module docstring."""
    if test.adjusted_p is None:
        raise UserInputError(f"claim {test.claim.id}: adjust the p-values across the run's claims "
                             "(holm_adjust) before deciding")
    bound = test.claim.threshold
    if test.replication.high < bound:
        return "refuted"
    if (test.replication.low > bound and test.second_ablation.low > bound and test.beats_controls
            and test.adjusted_p < alpha):
        return "supported"
    return "inconclusive"


def _score_terms(result: AblationResult, kind: ClaimKind) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt numerator and denominator whose means give the result's score."""
    t = {k: v.double().numpy() for k, v in result.tensors.items()}
    clean, ablated, everything = t["clean_logit_diff"], t["ablated_logit_diff"], t["everything_ablated_logit_diff"]
    numerator = clean - ablated if kind == "necessity" else ablated - everything
    return numerator, clean - everything


def _score(result: AblationResult, kind: ClaimKind) -> float:
    numerator, denominator = _score_terms(result, kind)
    return float(numerator.mean() / denominator.mean())

