"""What a step's experiments say, as plain numbers: pure functions of stored results.

The worker (`agents.steps`) calls these on the results it has just computed to make a step's
outcome; the report (`agents.report`) calls the same functions on the results it reads back
from the run folder. So every number in a report is recomputed from stored evidence, never
copied from the graph's state: edit a stored result and the report changes with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from tools.components import parse_component

if TYPE_CHECKING:
    from tools.experiments.ablation import AblationResult
    from tools.experiments.activation_patching import ActivationPatchingResult
    from tools.experiments.attention import AttentionPatternResult
    from tools.experiments.behaviour import BehaviourResult
    from tools.experiments.direct_logit_attribution import DirectLogitAttributionResult
    from tools.experiments.logit_lens import LogitLensResult
    from tools.experiments.path_patching import PathPatchingResult
    from tools.experiments.steering import SteeringResult

STEER_ALPHAS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
"""Doses of the steering step: α·v added, v the clean − corrupted direction (α = −1 subtracts
it; the report draws the whole dose-response against a random direction of the same norm)."""


def bad(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def clean_grid(rows: Sequence[Sequence[float]]) -> list[list[float | None]]:
    return [[None if bad(v) else float(v) for v in row] for row in rows]


def read_confirm(result: "BehaviourResult") -> dict[str, Any]:
    """The behaviour on the discovery prompts."""
    prefers = float((result.tensors["logit_diff"] > 0).double().mean())
    return {"accuracy": result.accuracy, "logit_diff": result.logit_diff, "prefers_answer": prefers,
            "n": result.n_prompts, "corrupted_logit_diff": result.corrupted_logit_diff, "evidence": [result.key]}


def read_lens(lens: "LogitLensResult", resid: "ActivationPatchingResult") -> dict[str, Any]:
    """The logit lens per layer, and residual patching by layer × position."""
    sweep = next(s for s in resid.sweeps if s.site == "resid_pre" and s.per_position)
    return {"lens": [{"site": l.site, "logit_diff": l.logit_diff, "top1": l.top1, "rank": l.answer_rank,
                      "answer_prob": l.answer_prob} for l in lens.layers],
            "positions": list(sweep.positions),
            "resid": clean_grid(resid.tensors[f"effect.{sweep.name}"].tolist()),
            "evidence": [lens.key, resid.key]}


def read_roles(components: Sequence[str], dla: "DirectLogitAttributionResult",
               attention: "AttentionPatternResult", paths: "PathPatchingResult") -> dict[str, Any]:
    """Per component: direct logit attribution, the share its direct path to the logits
    carries (path patching), and for heads what the final token attends to."""
    heads = dla.tensors["head"].double().mean(-1)  # [layer, head]
    mlps = dla.tensors["mlp"].double().mean(-1)
    direct = dict(zip(paths.senders, paths.tensors["effect.senders"].tolist()))
    roles = {}
    for name in components:
        c = parse_component(name)
        entry: dict[str, Any] = {
            "dla": float(heads[c.layer, c.head] if c.kind == "head" else mlps[c.layer]),
            "direct": None if bad(direct.get(name)) else paths.base_effect - direct[name]}
        if c.kind == "head":
            for score in attention.scored:
                value = float(attention.tensors[f"score.{score}"][c.layer, c.head])
                entry[score] = None if math.isnan(value) else value
        roles[name] = entry
    return {"roles": roles, "logit_diff": dla.logit_diff, "evidence": [dla.key, attention.key, paths.key]}


def read_paths(receiver: str, results: Sequence["PathPatchingResult"]) -> dict[str, Any]:
    """The share each sender's path into the receiver's q, k and v inputs carries."""
    out = {}
    for result in results:
        part = result.spec.receivers[0].input
        effects = dict(zip(result.senders, result.tensors["effect.senders"].tolist()))
        out[part] = {s: (None if bad(e) else result.base_effect - e) for s, e in effects.items()}
    return {"receiver": receiver, "carried": out, "evidence": [r.key for r in results]}


def read_steer(result: "SteeringResult") -> dict[str, Any]:
    """The share of the logit difference removed by subtracting the direction (α = −1), by a
    random direction of the same norm, and the whole dose-response."""
    base = result.baseline_logit_diff
    alphas = list(result.alphas)
    at = alphas.index(-1.0) if -1.0 in alphas else 0
    removed = None if abs(base) < 1e-9 else (base - result.logit_diff[at]) / base
    control = None
    if result.control_logit_diff and abs(base) >= 1e-9:
        control = (base - result.control_logit_diff[at]) / base
    position = (result.spec.positions or (-1,))[0]
    return {"site": result.spec.site, "position": position, "removed": removed, "control_removed": control,
            "alphas": alphas, "logit_diff": list(result.logit_diff),
            "control_logit_diff": list(result.control_logit_diff), "baseline": base,
            "norm": result.direction_norm, "evidence": [result.key]}


def read_circuit_sizes(results: Sequence["AblationResult"]) -> list[dict[str, Any]]:
    """Faithfulness of every circuit size the search tried, per ablation method, in size order."""
    rows: dict[tuple[int, str], float | None] = {}
    for r in results:
        if r.spec.mode == "keep":
            rows[(len(r.spec.components), r.spec.method)] = r.faithfulness
    return [{"size": size, "method": method, "faithfulness": value}
            for (size, method), value in sorted(rows.items())]


def head_effects(result: "ActivationPatchingResult") -> dict[str, Any] | None:
    """Head effects as a ``[layer][head]`` grid and MLP effects per layer from a patching result
    with ``head`` / ``mlp`` sweeps (all positions), or None when it has no head sweep."""
    heads = next((s for s in result.sweeps if s.site == "head" and not s.per_position), None)
    if heads is None:
        return None
    mlp = next((s for s in result.sweeps if s.site == "mlp" and not s.per_position), None)
    return {"layers": list(heads.layers), "heads": list(heads.heads),
            "head": clean_grid(result.tensors[f"effect.{heads.name}"].tolist()),
            "mlp": None if mlp is None else [None if bad(v) else float(v)
                                              for v in result.tensors[f"effect.{mlp.name}"].tolist()],
            "mlp_layers": [] if mlp is None else list(mlp.layers)}
