"""The heuristic brain: an expert's playbook for localising a behaviour, as fixed rules.

Each call to `HeuristicBrain.plan` reads what the investigation has measured so far (the
outcomes of the steps in `agents.steps`) and returns the next phase with its jobs:

1. **confirm** the behaviour on the discovery prompts; if the model does not prefer the answer
   to the foil on most of them, stop with that finding.
2. **lens**: the logit lens (from which layer the answer is decodable) and residual-stream
   patching by layer × position (where the information that decides the answer enters, and
   at which layer it reaches the final position).
3. **rank** every head and MLP by patching, in both directions: what each restores to the
   corrupted run (denoising) and what it removes from the clean run (noising); only
   *significant* components (denoising effect clear of zero) are candidates first.
4. **circuit**: the smallest prefix of that ranking that keeps the target share (80%) of the
   logit difference under both resample and mean ablation of everything else, and never more
   than half of the model's heads and MLPs (``max_share``): a set that is most of the model
   keeps the behaviour without explaining it, so past that the search reports that no sparse
   circuit reached the target.
5. **roles** of the circuit's components: direct logit attribution, direct paths to the logits
   (the *writers*), and what the final token attends to — the answer's earlier occurrence
   (*movers*) or the tokens the corruption changed (*readers*: how the model tells the answer
   from the foil).
6. **paths**: path patching from the earlier circuit components into the main writer head's
   query, key and value inputs (how the readers' information reaches it).
7. **steer** along the clean − corrupted direction where the information arrives at the final
   position.
8. **claims**, each with a pre-registered prediction, for the **critic** (`agents.critic`); if
   the circuit does not survive it, grow a larger one and test again (at most
   ``max_extensions`` times). A circuit that reached the target on the discovery prompts is
   grown with a margin: its own components first, then the other candidates that restore the
   answer, then those that work against it (`extension_candidates`); when none reached it, the
   ranking gets more room (never past ``max_share``). Besides the
   circuit, each component the noising sweep found *necessary on its own* (removing at least
   ``individual_share`` of the logit difference) that the circuit search did not need is a
   claim of its own (at most ``max_individual``): a minimal circuit can leave out components
   whose loss the model feels, and a reader needs to see them. Each component whose removal
   *raises* the logit difference by as much (it works against the answer, as IOI's negative
   name movers do) is a claim too, circuit member or not.

Thresholds of mechanism claims are pre-registered as half of what discovery measured (rounded
down to 0.05, at most 0.5): the claim is that the effect replicates at a substantial size,
not that it replicates exactly.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

from agents.claims import DirectClaim, PathClaim, ProposedClaim, RoutingClaim, SetClaim, SteeringClaim
from agents.localize import MAX_CIRCUIT_SHARE, largest_circuit
from agents.report.answer import no_behaviour_answer
from tools.components import parse_component


class HeuristicBrain:
    """The offline playbook (see the module docstring)."""

    name = "heuristic"

    def __init__(self, *, target: float = 0.8, max_circuit: int = 24, reader_attention: float = 0.2,
                 writer_share: float = 0.1, max_roles: int = 16, max_extensions: int = 2,
                 individual_share: float = 0.1, max_individual: int = 4,
                 max_share: float = MAX_CIRCUIT_SHARE) -> None:
        self.target = target
        self.max_share = max_share
        self.individual_share = individual_share
        self.max_individual = max_individual
        self.max_circuit = max_circuit
        self.reader_attention = reader_attention
        self.writer_share = writer_share
        self.max_roles = max_roles
        self.max_extensions = max_extensions

    # -- planning --------------------------------------------------------------------------------
    def plan(self, state: dict[str, Any]) -> dict[str, Any]:
        """The next phase and its jobs (and new claims or an answer), from the outcomes so far."""
        last = latest_outcomes(state)
        phase = state.get("phase") or "confirm"
        if phase == "confirm" and "confirm" not in last:
            return {"phase": "confirm", "jobs": [{"step": "confirm"}]}
        if phase == "confirm":
            c = last["confirm"]
            if not (c["logit_diff"] > 0 and c["prefers_answer"] >= 0.5):
                return {"phase": "report", "jobs": [], "answer": no_behaviour_answer(c), "answer_source": "no_behaviour"}
            return {"phase": "lens", "jobs": [{"step": "lens"}]}
        if phase == "lens":
            return {"phase": "rank", "jobs": [{"step": "rank"}]}
        if phase == "rank":
            rank = last["rank"]
            order = circuit_candidates(rank)
            return {"phase": "circuit", "hypotheses": [self._rank_hypothesis(rank)],
                    "jobs": [{"step": "circuit", "order": order, "target": self.target,
                              "max_size": self._room(rank, 1)}]}
        if phase == "circuit":
            components = last["circuit"]["components"][: self.max_roles]
            return {"phase": "roles", "jobs": [{"step": "roles", "components": components}]}
        if phase == "roles":
            receiver, senders = self._path_target(last)
            if receiver is not None:
                return {"phase": "paths", "jobs": [{"step": "paths", "senders": senders, "receiver": receiver}]}
            phase = "paths"
        if phase == "paths":
            arrival = arrival_layer(last["lens"])
            if arrival is not None and arrival > 0:
                return {"phase": "steer", "jobs": [{"step": "steer", "layer": arrival, "position": -1}]}
            phase = "steer"
        if phase == "steer":
            claims = self.claims(state, last)
            return {"phase": "critic", "claims": claims, "jobs": _examine(claims),
                    "hypotheses": [c["statement"] for c in claims[:1]]}
        if phase in ("critic", "recheck"):
            # no circuit survived the critic (or none reached the target on the discovery
            # prompts): grow a larger one, at most `max_extensions` times, then report
            claims = list(state.get("claims", []))
            faithful = [c["claim"]["id"] for c in claims if c["claim"]["id"].startswith("circuit-faithful")]
            done = bool(faithful) and state.get("verdicts", {}).get(faithful[-1]) == "supported"
            extensions = sum(1 for o in state.get("outcomes", []) if o["step"] == "circuit") - 1
            circuit = last["circuit"]
            # a circuit that reached the target but failed on fresh prompts is grown with a margin,
            # by the components that help it; when no prefix reached the target, the ranking gets
            # more room at the same target, if there is more than the last search had
            size, before = self._room(last["rank"], 2 + extensions), self._room(last["rank"], 1 + extensions)
            if not done and extensions < self.max_extensions and \
                    len(circuit["components"]) < self._largest_circuit(last["rank"]) and (faithful or size > before):
                order = (extension_candidates(last["rank"], circuit["components"]) if faithful
                         else circuit_candidates(last["rank"]))
                target = min(0.95, self.target + 0.1 * len(faithful)) if faithful else self.target
                return {"phase": "extend", "jobs": [{"step": "circuit", "order": order, "target": target,
                                                     "max_size": size}]}
            return {"phase": "report", "jobs": []}
        if phase == "extend":
            circuit = last["circuit"]
            claims = list(state.get("claims", []))
            previous = [c for c in claims if c["claim"]["id"].startswith("circuit-faithful")]
            faithful = circuit["faithfulness"] is not None and circuit["faithfulness"] >= self.target
            if not faithful or (previous and list(circuit["components"]) == list(
                    previous[-1]["claim"]["components"])):
                return {"phase": "report", "jobs": []}
            claim_id = ("circuit-faithful" if not previous else "circuit-faithful-grown" if len(previous) == 1
                        else f"circuit-faithful-grown-{len(previous)}")
            new = [self._faithful_claim(circuit, claim_id)]
            return {"phase": "recheck", "claims": claims + new, "jobs": _examine(new)}
        return {"phase": "report", "jobs": []}

    def _largest_circuit(self, rank: dict) -> int:
        """The most components a circuit may have: ``max_share`` of every head and MLP the
        ranking covers (the whole universe), at least one. The `Toolbox` holds every search to
        `largest_circuit` whatever this says."""
        return largest_circuit(len(rank["order"]), self.max_share)

    def _room(self, rank: dict, search: int) -> int:
        """The most components the ``search``-th circuit search (1: the first) may try:
        ``search`` × ``max_circuit``, within the model and `_largest_circuit`."""
        return min(len(rank["order"]), search * self.max_circuit, self._largest_circuit(rank))

    # -- the worker's interpretation: claims with pre-registered predictions ----------------------
    def claims(self, state: dict[str, Any], last: dict[str, dict]) -> list[dict[str, Any]]:
        """Claims about what the outcomes show, most explanatory first."""
        out: list[ProposedClaim] = []
        roles = last.get("roles", {}).get("roles", {})
        writers = sorted((c for c, r in roles.items() if (r.get("direct") or 0) >= self.writer_share),
                         key=lambda c: -roles[c]["direct"])[:6]
        if writers:
            share = min(1.0, sum(roles[c]["direct"] for c in writers))
            movers = [c for c in writers if (roles[c].get("to_answer") or 0) >= self.reader_attention]
            parts = ", ".join(f"{c} ({roles[c]['direct']:.2f})" for c in writers)
            # what only discovery measured is said as such: the claim's test is the direct paths
            mover_text = "".join(f" On the discovery prompts {c} attended from the final token to the answer's "
                                 f"earlier occurrence ({roles[c]['to_answer']:.2f} of its attention)." for c in movers)
            carry = ("its direct path to the output carries" if len(writers) == 1 else
                     "their direct paths to the output together carry")
            out.append(ProposedClaim(role="writers", claim=DirectClaim(
                id="writers", components=tuple(writers), threshold=preregister(share)), statement=(
                f"The answer is written into the logits by {parts}: {carry} at least "
                f"{preregister(share):.2f} of the logit difference.{mover_text}")))
        rank = last["rank"]
        top = rank["order"][0]
        out.append(ProposedClaim(role="top", claim=SetClaim(
            id="top-component", components=(top,), kind="necessity", threshold=0.25), statement=(
            f"{top} (largest patching effect, {rank['effects'][top]:.2f}) is necessary: ablating it alone "
            "removes at least a quarter of the logit difference.")))
        out += self._reader_claims(last, roles, writers)
        out += self._routing_claims(last)
        out += [ProposedClaim.model_validate(c) for c in self._circuit_claims(last["circuit"])]
        steer = last.get("steer")
        if steer and steer["removed"] is not None and steer["removed"] >= 0.3 and \
                steer["removed"] > (steer["control_removed"] or 0):
            from tools.experiments import PromptPairs

            threshold = preregister(steer["removed"])
            out.append(ProposedClaim(role="steering", claim=SteeringClaim(
                id="steering", components=(), threshold=threshold, site=steer["site"], position=steer["position"],
                estimated_on=PromptPairs.model_validate(state["discovery"])), statement=(
                f"Subtracting the mean clean − corrupted difference of the residual stream at {steer['site']} "
                f"(final token) removes at least {threshold:.2f} of the logit difference on new prompts, "
                f"more than a random direction of the same norm.")))
        out += self._individual_claims(last)
        out += self._opposition_claims(last, roles)
        return [c.model_dump(mode="json") for c in out]

    def _individual_claims(self, last: dict) -> list[ProposedClaim]:
        """Components necessary on their own (noising removes at least ``individual_share``,
        clear of zero) that the circuit and the top claim leave out: one claim each, largest
        first. The prediction is half the discovery share, and never below ``individual_share``
        (the claim is that the component matters, not merely that it does something)."""
        rank = last["rank"]
        removes = rank.get("removes") or {}
        named = {*last["circuit"]["components"], rank["order"][0]}
        picked = [c for c in rank.get("necessary") or () if c not in named
                  and (removes.get(c) or 0) >= self.individual_share][: self.max_individual]
        return [self._one_component_claim(
            c, removes[c], role="individual", kind="necessity", prefix="alone", says=lambda t: (
                f"{c} matters on its own, though the circuit search did not need it: patching its corrupted "
                f"value into the clean run removed {removes[c]:.2f} of the logit difference, and ablating it "
                f"alone removes at least {t:.2f} on new prompts.")) for c in picked]

    def _opposition_claims(self, last: dict, roles: dict) -> list[ProposedClaim]:
        """Components that work against the answer: noising them (their corrupted value in the
        clean run) *raised* the logit difference by at least ``individual_share``, clear of zero.
        One claim each, largest first, at most ``max_individual``, circuit members included (a
        circuit claim says a set keeps the behaviour, not that a member pushes the other way).
        The prediction mirrors the individual claims': ablating the component alone adds at
        least half the discovery share, and never less than ``individual_share``."""
        rank = last["rank"]
        removes = rank.get("removes") or {}
        picked = sorted((c for c in rank.get("necessary") or () if (removes.get(c) or 0) <= -self.individual_share),
                        key=lambda c: removes[c])[: self.max_individual]
        out = []
        for c in picked:
            direct = (roles.get(c) or {}).get("direct")
            towards = (f" (its direct path to the logits carried {direct:.2f} of the logit difference there)"
                       if direct is not None and direct <= -self.writer_share else "")
            out.append(self._one_component_claim(
                c, -removes[c], role="opposition", kind="opposition", prefix="against", says=lambda t: (
                    f"{c} works against the answer: patching its corrupted value into the clean run raised the "
                    f"logit difference by {-removes[c]:.2f} of it on the discovery prompts{towards}, and ablating "
                    f"it alone adds at least {t:.2f} on new prompts.")))
        return out

    def _one_component_claim(self, component: str, share: float, *, role: str,
                             kind: Literal["necessity", "opposition"], prefix: str,
                             says: Callable[[float], str]) -> ProposedClaim:
        """A claim about one component that noising found on its own (removing, or adding,
        ``share`` of the logit difference): ablating it alone moves at least half that share on
        fresh prompts, and never less than ``individual_share``. ``says`` words the statement
        from the threshold (called here, before the caller's loop moves on)."""
        threshold = max(self.individual_share, preregister(share))
        return ProposedClaim(role=role, statement=says(threshold), claim=SetClaim(
            id=f"{prefix}-{component}", components=(component,), kind=kind, threshold=threshold, method="resample"))

    def _reader_claims(self, last: dict, roles: dict, writers: list[str]) -> list[ProposedClaim]:
        """Heads that, at the final token, attend to the tokens the corruption changes (for IOI
        the repeated name) and push towards the answer: how the model tells answer from foil."""
        effects = last["rank"]["effects"]
        readers = [c for c, r in roles.items() if c.startswith("head.")
                   and (r.get("to_changed") or 0) >= self.reader_attention and effects.get(c, 0) > 0]
        if not readers:
            return []
        where = _changed_label(last["lens"])
        attention = ", ".join(f"{c} ({roles[c]['to_changed']:.2f} of its attention)" for c in readers)
        # the attention is what discovery measured (said as such); the claim's test is causal
        intro = (f"On the discovery prompts, at the final token {attention} attended to the tokens the "
                 f"corruption changes{where}, the part of the prompt that tells the answer from the foil")
        paths = last.get("paths")
        if paths:
            best_input, best = None, 0.0
            for part, carried in paths["carried"].items():
                total = sum(v for c, v in carried.items() if c in readers and v is not None and v > 0)
                if total > best:
                    best_input, best = part, total
            senders = tuple(c for c in readers if (paths["carried"].get(best_input or "q", {}).get(c) or 0) > 0.02)
            if best_input is not None and senders and best >= 0.05:
                receiver = f"{paths['receiver']}.{best_input}"
                threshold = preregister(best)
                return [ProposedClaim(role="readers", claim=PathClaim(
                    id="readers", components=senders, receivers=(receiver,), threshold=threshold), statement=(
                    f"{intro}; the path from {', '.join(senders)} into {receiver} carries at least "
                    f"{threshold:.2f} of the logit difference."))]
        threshold = preregister(sum(effects[c] for c in readers))
        return [ProposedClaim(role="readers", claim=SetClaim(
            id="readers", components=tuple(readers), kind="necessity", threshold=threshold, positions=(-1,)),
            statement=f"{intro}; ablating {'their' if len(readers) > 1 else 'its'} output there removes at "
                      f"least {threshold:.2f} of the logit difference.")]

    def _routing_claims(self, last: dict) -> list[ProposedClaim]:
        lens = last["lens"]
        positions, grid, labels = lens["positions"], lens["resid"], lens["labels"]
        out = []
        first = [(v or 0.0, p) for p, v in zip(positions, grid[0]) if p != -1]
        if first:
            effect, position = max(first)
            if effect >= 0.5:
                threshold = preregister(effect, fraction=0.75, cap=0.75)
                out.append(ProposedClaim(role="routing", claim=RoutingClaim(
                    id="routing-source", components=(), layer=0, position=position, threshold=threshold), statement=(
                    f"The information that decides the answer enters at position {position} "
                    f"({labels[str(position)]}): restoring the residual stream there before layer 0 restores at "
                    f"least {threshold:.2f} of the logit difference.")))
        arrival = arrival_layer(lens)
        if arrival is not None and arrival > 0:
            effect = grid[arrival][positions.index(-1)]
            threshold = preregister(effect, fraction=0.75, cap=0.75)
            out.append(ProposedClaim(role="routing", claim=RoutingClaim(
                id="routing-arrival", components=(), layer=arrival, position=-1, threshold=threshold), statement=(
                f"It reaches the final token between layers {arrival - 1} and {arrival}: restoring the residual "
                f"stream at the final token before layer {arrival} restores at least {threshold:.2f} of the logit "
                "difference.")))
        return out

    def _circuit_claims(self, circuit: dict) -> list[dict[str, Any]]:
        """The circuit keeps the target share (when it did on the discovery prompts), and is necessary."""
        listed = ", ".join(circuit["components"])
        out = [self._faithful_claim(circuit, "circuit-faithful")] if circuit["reached"] else []
        out.append(ProposedClaim(role="circuit", claim=SetClaim(
            id="circuit-necessary", components=tuple(circuit["components"]), kind="necessity", threshold=0.5,
            method="resample"), statement=f"Ablating {listed} removes at least half of the logit difference.")
            .model_dump(mode="json"))
        return out

    def _faithful_claim(self, circuit: dict, claim_id: str) -> dict[str, Any]:
        components = list(circuit["components"])
        measured = ", ".join(f"{m} {v:.2f}" for m, v in circuit["by_method"].items() if v is not None)
        return ProposedClaim(role="circuit", claim=SetClaim(
            id=claim_id, components=tuple(components), kind="faithfulness", threshold=self.target,
            method="resample"), statement=(
            f"The circuit {', '.join(components)} ({len(components)} components) alone keeps at least "
            f"{self.target:.0%} of the logit difference when every other head and MLP is ablated "
            f"(discovery: {measured}).")).model_dump(mode="json")

    @staticmethod
    def _rank_hypothesis(rank: dict) -> str:
        top = rank["order"][:3]
        return (f"{', '.join(top)} carry the behaviour ({len(rank['significant'])} of {len(rank['order'])} "
                "components have a patching effect clear of zero)")

    def _path_target(self, last: dict) -> tuple[str | None, list[str]]:
        """The main writer head and the circuit components before it, or (None, [])."""
        roles = last["roles"]["roles"]
        heads = [(r["direct"], c) for c, r in roles.items() if c.startswith("head.") and (r.get("direct") or 0)
                 >= self.writer_share]
        if not heads:
            return None, []
        _, receiver = max(heads)
        layer = parse_component(receiver).layer
        senders = [c for c in last["circuit"]["components"] if parse_component(c).layer < layer]
        return (receiver, senders) if senders else (None, [])


def _changed_label(lens: dict) -> str:
    """`` (in the first prompt: ' Mary' at position -5)`` for the changed positions, or ``""``."""
    changed = [f"{label.split(' (')[0]} at position {p}" + (", a repeat of an earlier token" if "repeat" in label else "")
               for p, label in lens["labels"].items() if "changed" in label]
    return f" (in the first prompt: {', '.join(changed)})" if changed else ""


def circuit_candidates(rank: dict) -> list[str]:
    """The ranking with its significant components first (pruning: they go deeper first)."""
    significant = set(rank["significant"])
    return list(rank["significant"]) + [c for c in rank["order"] if c not in significant]


def extension_candidates(rank: dict, circuit: list[str]) -> list[str]:
    """The order a circuit that reached the target on the discovery prompts but did not survive
    the critic is grown in (with a margin): its own components first, then the
    other candidates that restore the answer (denoising effect ≥ 0), then those that work
    against it, each group in `circuit_candidates` order. Kept intact, a component that pushes
    towards the foil lowers what the circuit keeps, so growing past it asks for more helpers
    than the margin needs; those whose removal raises the logit difference by at least
    ``individual_share`` get claims of their own (`_opposition_claims`)."""
    kept = list(circuit)
    members = set(kept)
    rest = [c for c in circuit_candidates(rank) if c not in members]
    effects = rank["effects"]
    # a stable sort: helpers (False) before the rest (True), each group in its own order; a NaN
    # effect is no helper
    return kept + sorted(rest, key=lambda c: not (effects.get(c) or 0.0) >= 0)


def latest_outcomes(state: dict[str, Any]) -> dict[str, dict]:
    """The latest outcome of each step (examine outcomes are many; the latest is kept here too)."""
    return {o["step"]: o for o in state.get("outcomes", [])}


def arrival_layer(lens: dict) -> int | None:
    """The first layer at which restoring the final token's residual stream restores 80%."""
    positions, grid = lens["positions"], lens["resid"]
    if -1 not in positions:
        return None
    column = [row[positions.index(-1)] for row in grid]
    for layer, value in enumerate(column):
        if value is not None and value >= 0.8:
            return layer
    return None


def preregister(observed: float, *, fraction: float = 0.5, cap: float = 0.5, floor: float = 0.05) -> float:
    """A prediction for fresh prompts: ``fraction`` of the discovery value, rounded down to 0.05."""
    if observed is None or math.isnan(observed):
        return floor
    return max(floor, min(cap, math.floor(observed * fraction / 0.05 + 1e-9) * 0.05))


def _examine(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"step": "examine", "claim": c["claim"]} for c in claims]


