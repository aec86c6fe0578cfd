"""Claims a worker makes, as typed, pre-registered predictions the critic can test.

Every claim names its components and a ``threshold``: the prediction is that a score measured
on prompts never used to find the claim is *at least* the threshold. The score is always a
ratio of means over prompts (a fraction of the behaviour: 0 = nothing, 1 = all of it), so
one bootstrap and one verdict rule serve every kind:

===============  ===============================================================================
kind             score (measured by the critic, `agents.critic`)
===============  ===============================================================================
``necessity``    ablating the components removes this fraction of the logit difference
``opposition``   ablating the components *adds* this fraction (they work against the answer)
``faithfulness`` ablating everything else keeps this fraction
``direct``       the components' direct paths to the logits carry this fraction (path patching)
``path``         the senders' paths into the receivers' q/k/v inputs carry this fraction
``routing``      restoring the residual stream at one layer and position restores this fraction
``steering``     subtracting the clean − corrupted direction at a site removes this fraction
===============  ===============================================================================

Each kind also says what its *second method* is (the other ablation, the other patching
direction, the direction re-estimated on the fresh prompts) and what its *controls* are
(random components of the same number, other positions, random directions of the same norm):
see `agents.critic`. Claims are pure data: a brain writes them, trusted code measures them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from tools.experiments.prompts import PromptPairs

Scope = Literal["all", "changed_onward"]
"""Where ablations act: every position, or the positions from the first token at which a
clean prompt and its corrupted twin differ to the end (earlier positions are identical in the
two runs of a causal model, so only a mean ablation would change them)."""


class _Claim(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    components: tuple[str, ...]
    threshold: float
    """The pre-registered prediction: the score on fresh prompts is at least this."""


class SetClaim(_Claim):
    """A component set is necessary for the behaviour, keeps it on its own, or works against it
    (``opposition``: ablating the set raises the logit difference, as a negative name mover's
    removal does in IOI)."""

    kind: Literal["necessity", "faithfulness", "opposition"]
    method: Literal["mean", "resample"] = "resample"
    """The ablation the set was found with; the critic replicates with it and checks the other."""
    universe: tuple[Literal["head", "mlp"], ...] = ("head", "mlp")
    """What takes part in the ablations; controls are drawn from it."""
    scope: Scope = "changed_onward"
    positions: tuple[int, ...] | None = None
    """Ablate only at these positions (negative: from the end), e.g. ``(-1,)`` for what a head
    does at the final token; None: the ``scope``."""


class DirectClaim(_Claim):
    """The components write the answer: their direct paths to the logits carry the behaviour."""

    kind: Literal["direct"] = "direct"


class PathClaim(_Claim):
    """The senders' effect reaches the receivers through their query, key or value input."""

    kind: Literal["path"] = "path"
    receivers: tuple[str, ...]
    """``head.L.H.q`` / ``.k`` / ``.v`` inputs."""


class RoutingClaim(_Claim):
    """At ``layer``, the information that decides the answer sits at ``position``."""

    kind: Literal["routing"] = "routing"
    layer: int
    position: int
    """Negative: counted from each prompt's end (-1 is the last token)."""


class SteeringClaim(_Claim):
    """Subtracting the mean clean − corrupted difference at a site removes the behaviour."""

    kind: Literal["steering"] = "steering"
    site: str
    """``resid_pre.L``."""
    position: int = -1
    estimated_on: PromptPairs
    """The discovery prompts the direction was estimated on (their clean minus their corrupted
    prompts); the critic applies this direction to fresh prompts."""


AnyClaim = Annotated[Union[SetClaim, DirectClaim, PathClaim, RoutingClaim, SteeringClaim],
                     Field(discriminator="kind")]


class ProposedClaim(BaseModel):
    """A claim as a worker proposes it: the statement in words and the testable claim."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statement: str
    claim: AnyClaim
    role: str = ""
    """What part of the explanation it is (``circuit``, ``writers``, ``readers``, ``routing``,
    ``steering``, ``top``), used to compose the answer."""


def describe_prediction(claim: BaseModel) -> str:
    """The pre-registered prediction in a few words (stored with the claim and reported)."""
    c = claim
    words = {
        "necessity": "share of the logit difference removed by ablating the set",
        "faithfulness": "share kept when everything else is ablated",
        "opposition": "share of the logit difference added by ablating the set",
        "direct": "share carried by the direct paths to the logits (path patching)",
        "path": f"share carried by the paths into {', '.join(getattr(c, 'receivers', ()))}",
        "routing": f"share restored by patching resid_pre.{getattr(c, 'layer', '')} at position "
                   f"{getattr(c, 'position', '')}",
        "steering": f"share removed by subtracting the direction at {getattr(c, 'site', '')}",
    }[c.kind]
    method = f", {c.method} ablation" if isinstance(c, SetClaim) else ""
    return f"{words} >= {c.threshold:g} on fresh prompts{method}"
