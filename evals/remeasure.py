"""Claims and circuits re-measured on an answer key's prompt set, with the claim's own method.

The critic tested each claim on a few dozen fresh prompts and decided with intervals,
controls and a correction for many claims; here the same score is measured once more, on the
key's larger held-out set, and compared with the claim's threshold (`evals.score`). Each kind
is measured the way the claim says it holds (`agents.claims`):

===============  ======================================================================
kind             score on the key's prompts
===============  ======================================================================
necessity        ablating the set (its method, its positions) removes this share
opposition       ablating the set (its method, its positions) adds this share
faithfulness     ablating everything else keeps this share
direct           noising path patching of the set into the logits: share carried
path             noising path patching of the senders into the receivers: share carried
routing          denoising the residual stream at (layer, position): share restored
steering         subtracting the direction estimated on the claim's own prompts at the
                 site: share removed
===============  ======================================================================

Written apart from `agents.critic` on purpose (the same definitions, not the same code), so a
slip in the critic's measurement shows up as a disagreement here. Experiments run directly
(no workspace cache); their forward passes are the harness's, never the agent's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

from agents.claims import AnyClaim, DirectClaim, PathClaim, RoutingClaim, SetClaim, SteeringClaim
from tools.experiments import (
    AblationSpec,
    ActivationPatchingSpec,
    PatchSweep,
    PathPatchingSpec,
    PromptPairs,
    SteeringSpec,
)
from tools.experiments.registry import run_experiment

if TYPE_CHECKING:
    from tools.loading import LoadedModel


def measure_claim(model: "LoadedModel", claim: AnyClaim, prompts: PromptPairs,
                  scope: tuple[int, ...] | None) -> float | None:
    """The claim's score on ``prompts`` (None when it is undefined there).

    ``scope``: the positions from the first token where a clean prompt and its corrupted
    twin differ to the end (`agents.positions.scope_positions` of ``prompts``), where set
    claims of scope ``changed_onward`` act."""
    if isinstance(claim, SetClaim):
        positions = claim.positions if claim.positions is not None else (
            scope if claim.scope == "changed_onward" else None)
        return measure_set(model, claim.components, prompts, kind=claim.kind, method=claim.method,
                           universe=claim.universe, positions=positions)
    if isinstance(claim, (DirectClaim, PathClaim)):
        receivers = ("logits",) if isinstance(claim, DirectClaim) else claim.receivers
        result = run_experiment(model, PathPatchingSpec(prompts=prompts, receivers=receivers, senders=(),
                                                        sender_sets=(tuple(claim.components),)))
        effect = result.sender_sets[0].effect
        return None if effect is None else result.base_effect - effect
    if isinstance(claim, RoutingClaim):
        result = run_experiment(model, ActivationPatchingSpec(
            prompts=prompts, sweeps=(PatchSweep(site="resid_pre", per_position=True),), layers=(claim.layer,),
            positions=(claim.position,)))
        if not result.normalisable:
            return None
        return float(result.tensors["effect.resid_pre_by_pos"][0, 0])
    if isinstance(claim, SteeringClaim):
        return _measure_steering(model, claim, prompts)
    raise TypeError(f"no re-measurement for claim kind {type(claim).__name__}")


def measure_set(model: "LoadedModel", components: Sequence[str], prompts: PromptPairs, *,
                kind: Literal["necessity", "faithfulness", "opposition"],
                method: Literal["mean", "resample", "zero"],
                universe: tuple[str, ...] = ("head", "mlp"), positions: tuple[int, ...] | None = None
                ) -> float | None:
    """Necessity (ablate the set), opposition (ablate it: minus its necessity) or faithfulness
    (keep only the set) on ``prompts``."""
    result = run_experiment(model, AblationSpec(prompts=prompts, components=tuple(components), method=method,
                                                mode="keep" if kind == "faithfulness" else "ablate",
                                                universe=universe, positions=positions))
    if kind == "faithfulness":
        return result.faithfulness
    if kind == "opposition":
        return None if result.necessity is None else -result.necessity
    return result.necessity


def _measure_steering(model: "LoadedModel", claim: SteeringClaim, prompts: PromptPairs) -> float | None:
    from tools.experiments.prompts import resolve_prompts
    from tools.experiments.steering import MeanDifferenceDirection

    items = resolve_prompts(claim.estimated_on, model.tokenizer)
    direction = MeanDifferenceDirection(site=claim.site, position=claim.position,
                                        positive=tuple(i.clean for i in items),
                                        negative=tuple(i.corrupted for i in items))
    result = run_experiment(model, SteeringSpec(prompts=prompts, direction=direction, site=claim.site,
                                                positions=(claim.position,), alphas=(-1.0,), control=False))
    base = result.baseline_logit_diff
    return None if abs(base) < 1e-9 else (base - result.logit_diff[0]) / base
