"""The run's answer in words: the supported claims, in explanatory order, with their numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from agents.llm.fence import md_escape, untrusted_md

if TYPE_CHECKING:
    from memory.records import Claim

ROLE_ORDER = ("writers", "top", "readers", "routing", "circuit", "individual", "opposition", "steering")
"""How the answer is told: what writes the answer, what it depends on most, how the model tells
the answer from the foil, where the information flows, the whole circuit, what else matters on
its own, what works against the answer, a causal direction."""


def ordered(claims: Sequence["Claim"]) -> list["Claim"]:
    """Claims in the order of `ROLE_ORDER` (then as made)."""
    rank = {role: i for i, role in enumerate(ROLE_ORDER)}
    return sorted(claims, key=lambda c: rank.get(c.details.get("role", ""), len(rank)))


def compose_answer(claims: Sequence["Claim"], tokens: dict[str, dict] | None = None) -> str:
    """The answer in one paragraph: what the supported claims say, in explanatory order, each
    clause with the number the critic measured on fresh prompts and the claim it rests on;
    then what was not established. ``tokens`` (position -> the first prompt's token, from the
    lens step) names the token at a routing claim's position."""
    claims = ordered(claims)
    supported = [c for c in claims if c.verdict == "supported"]
    if not claims:
        return "No claim was made."
    if not supported:
        return ("No claim survived the critic's tests; see the claims table for what was measured "
                f"({len(claims)} claims: " + ", ".join(f"{c.id} {c.verdict}" for c in claims) + ").")
    sentences = [_clause(c, tokens or {}) for c in supported]
    rest = [c for c in claims if c.verdict != "supported"]
    if rest:
        sentences.append("Not established: " + "; ".join(
            f"{c.id} ({c.verdict}, measured {_number(c.effect)} against a prediction of "
            f"{c.details.get('threshold', 0):.2f})" for c in rest) + ".")
    return " ".join(sentences)


def _measured(c: "Claim") -> str:
    return f"{_number(c.effect)} (95% CI {_number(c.ci_low)}–{_number(c.ci_high)})"


def _clause(c: "Claim", tokens: dict[str, dict]) -> str:
    """One sentence for a supported claim, from its typed fields (the statement for others)."""
    d = c.details
    spec = d.get("claim") or {}
    kind, role = d.get("kind"), d.get("role")
    names = ", ".join(c.components)
    plural = len(c.components) > 1
    if role == "llm":
        return f"{md_escape(c.statement)} [{c.id}: measured {_number(c.effect)} on fresh prompts]"
    if kind == "direct":
        return (f"The answer is written by {names}: {'their direct paths' if plural else 'its direct path'} to the "
                f"logits carry {_measured(c)} of the logit difference on fresh prompts [{c.id}].")
    if kind == "path":
        receivers = ", ".join(spec.get("receivers") or ())
        return (f"{names} {'attend' if plural else 'attends'} from the final token to the tokens the corruption "
                f"changes and {'pass' if plural else 'passes'} that into {receivers or 'a later head'} "
                f"(that path carries {_measured(c)}) [{c.id}].")
    if kind == "routing":
        position, layer = spec.get("position"), spec.get("layer")
        token = tokens.get(str(position))
        where = f"position {position}" + (f" ({untrusted_md(repr(token['token']))})" if token else "")
        if position == -1:
            return (f"It reaches the final token before layer {layer}: restoring the residual stream there restores "
                    f"{_measured(c)} [{c.id}].")
        return (f"The deciding information enters at {where}: restoring the residual stream there before layer "
                f"{layer} restores {_measured(c)} [{c.id}].")
    if kind == "faithfulness":
        return (f"The circuit {names} ({len(c.components)} components) keeps {_measured(c)} of the logit difference "
                f"when every other head and MLP is ablated [{c.id}].")
    if kind == "necessity" and role == "circuit":
        return f"Ablating the circuit's {len(c.components)} components removes {_measured(c)} [{c.id}]."
    if kind == "necessity" and role == "individual":
        return (f"{names} also {'matter' if plural else 'matters'} on {'their' if plural else 'its'} own, though "
                f"the circuit search did not need {'them' if plural else 'it'}: ablating {'them' if plural else 'it'} "
                f"alone removes {_measured(c)} [{c.id}].")
    if kind == "opposition":
        return (f"{names} {'work' if plural else 'works'} against the answer: ablating {'them' if plural else 'it'} "
                f"adds {_measured(c)} of the logit difference [{c.id}].")
    if kind == "necessity" and role == "readers":
        return (f"{names} {'attend' if plural else 'attends'} from the final token to the tokens the corruption "
                f"changes; ablating {'them' if plural else 'it'} there removes {_measured(c)} [{c.id}].")
    if kind == "necessity":
        return (f"{names} {'are' if plural else 'is'} necessary: ablating {'them' if plural else 'it'} removes "
                f"{_measured(c)} [{c.id}].")
    if kind == "steering":
        return (f"Subtracting the clean − corrupted direction at {spec.get('site', 'the residual stream')} removes "
                f"{_measured(c)} of the logit difference, more than random directions of the same norm [{c.id}].")
    return f"{c.statement} [{c.id}: measured {_number(c.effect)} on fresh prompts]"


def no_behaviour_answer(confirm: dict[str, Any]) -> str:
    """The answer when the model does not show the behaviour (from the `confirm` readout)."""
    return (f"The model does not show the behaviour: it prefers the answer to the foil on "
            f"{confirm['prefers_answer']:.0%} of the prompts (mean logit difference {confirm['logit_diff']:.2f}, "
            f"top-1 accuracy {confirm['accuracy']:.2f}); there is no mechanism to localise.")


def _number(value: float | None) -> str:
    return "nothing" if value is None else f"{value:.2f}"
