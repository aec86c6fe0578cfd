"""What a diff's stored experiments say: the comparisons, recomputed from the stored results.

`read_diff` is what `agents.diff` calls to choose the components to investigate, what
``sleuth diff --json`` prints, and what the report draws: one function of the run folder's
stored results and ``investigation.json`` (the bootstrap is seeded, so it gives the same numbers
every time). Edit a stored result and the summary and the report change with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tools.model_diff import (
    ATTENTION_MARGIN,
    MARGIN_FRACTION,
    attention_samples,
    behaviour_scale,
    compare,
    cross_model_samples,
    dla_samples,
    patching_samples,
    rank_changes,
    top_changed,
)

if TYPE_CHECKING:
    from memory.runstore import Run

TOP_K = 3


def read_diff(run: "Run", record: dict[str, Any]) -> dict[str, Any]:
    """The diff's numbers from its stored results (see the module docstring)."""
    ev = record["evidence"]
    load = run.load_experiment
    patch = {side: load(ev[side]["patching"]) for side in ("base", "model")}
    dla = {side: load(ev[side]["dla"]) for side in ("base", "model")}
    attention = {side: load(ev[side]["attention"]) for side in ("base", "model")}
    behaviour = {side: load(ev[side]["behaviour"]) for side in ("base", "model")}
    cross = load(ev["cross_model"])
    scale = behaviour_scale(patch["base"], patch["model"])
    margin = MARGIN_FRACTION * scale
    samples = (cross_model_samples(cross, margin) + patching_samples(patch["base"], patch["model"], margin)
               + dla_samples(dla["base"], dla["model"], margin)
               + attention_samples(attention["base"], attention["model"], ATTENTION_MARGIN))
    changes = rank_changes(compare(samples, seed=int(record.get("seed", 0))))
    out_changes = [{**c.model_dump(mode="json"), "ci": list(c.ci), "size": c.size} for c in changes]
    investigation = []
    for entry in record.get("investigation") or []:
        item = dict(entry)
        contrast = load(entry["contrast"])
        item["base_necessity"] = contrast.necessity
        item["base_ci"] = _ratio_ci(contrast, seed=entry.get("seed", 0))
        investigation.append(item)
    return {
        "n": changes[0].n if changes else 0,
        "scale": scale,
        "margins": {"logit": margin, "attention": ATTENTION_MARGIN, "fraction": MARGIN_FRACTION},
        "changes": out_changes,
        "top_changed": top_changed(changes, TOP_K),
        "investigation": investigation,
        "behaviour": {side: {"logit_diff": r.logit_diff, "accuracy": r.accuracy,
                             "corrupted_logit_diff": r.corrupted_logit_diff, "key": r.key}
                      for side, r in behaviour.items()},
        "gaps": {side: float(r.tensors["clean_logit_diff"].mean() - r.tensors["corrupted_logit_diff"].mean())
                 for side, r in patch.items()},
        "grids": {"patching": {side: _grid(changes, "patching", side) for side in ("base", "model", "delta")},
                  "dla": {side: _grid(changes, "dla", side) for side in ("base", "model", "delta")},
                  "cross_model": _grid(changes, "cross_model", "delta")},
        "layers": patch["base"].sweeps[0].layers if patch["base"].sweeps else (),
        "heads": next((s.heads for s in patch["base"].sweeps if s.site == "head"), ()),
        "evidence": ev,
    }


def _ratio_ci(result, *, seed: int) -> list[float] | None:
    """Bootstrap CI of the necessity of an ablation result, or None where it is undefined."""
    from tools.errors import UserInputError
    from tools.stats import ratio_bootstrap_ci

    t = {k: v.double().numpy() for k, v in result.tensors.items()}
    try:
        ci = ratio_bootstrap_ci(t["clean_logit_diff"] - t["ablated_logit_diff"],
                                t["clean_logit_diff"] - t["everything_ablated_logit_diff"], seed=seed)
    except UserInputError:
        return None
    return [ci.low, ci.high]


def _grid(changes, measure: str, side: str) -> dict[str, float]:
    """``{component: value}`` of one measure: the base's mean, the model's, or the change."""
    field = {"base": "a", "model": "b", "delta": "delta"}[side]
    return {c.component: getattr(c, field) for c in changes if c.measure == measure}


__all__ = ["read_diff"]
