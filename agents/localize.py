"""Localisation steps of the heuristic playbook: rank components, then grow a faithful circuit.

- `component_effects` reads the per-component effects (heads and MLPs, every position at once)
  out of an activation- or attribution-patching result, on its normalised scale (0 = corrupted
  run, 1 = clean run).
- `rank_components` ranks every head and MLP by |effect|: by activation patching when that is
  affordable (``exact_budget`` forward-pass variants), else by attribution patching (two
  forwards and one backward for all of them), confirming the top candidates by activation
  patching of those components alone.
- `grow_circuit` takes the ranking and returns the smallest prefix whose faithfulness (the
  share of the logit difference kept when every other component of the universe is ablated)
  reaches the target, with every size it tried.

All experiments go through ``run.experiment``: cached by content hash, counted in ``run.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

from pydantic import BaseModel, ConfigDict

from tools.errors import UserInputError
from tools.experiments import (
    AblationSpec,
    ActivationPatchingSpec,
    AttributionPatchingSpec,
    PatchSweep,
    PromptPairs,
)
from tools.experiments.activation_patching import sweep_cells

if TYPE_CHECKING:
    from memory.runstore import Run
    from tools.experiments.result import ExperimentResult
    from tools.loading import LoadedModel

Universe = tuple[Literal["head", "mlp"], ...]
_SWEEPS = {"head": PatchSweep(site="head"), "mlp": PatchSweep(site="mlp")}


class Ranking(BaseModel):
    """Components ordered by |effect|, largest first, and how the effects were measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    effects: tuple[tuple[str, float], ...]
    method: Literal["activation_patching", "attribution_patching"]
    confirmed: tuple[tuple[str, float], ...] = ()
    """Activation-patching effects of the top candidates (attribution rankings only)."""
    evidence: tuple[str, ...]

    @property
    def order(self) -> list[str]:
        return [c for c, _ in self.effects]


class CircuitSearch(BaseModel):
    """The circuit `grow_circuit` found (empty when none reached the target) and its trajectory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    components: tuple[str, ...]
    faithfulness: float | None
    target: float
    reached: bool
    tried: tuple[tuple[int, float | None], ...]
    """(size, faithfulness) for every prefix size evaluated, in order."""
    method: str
    universe: Universe
    evidence: tuple[str, ...]


def component_effects(result: "ExperimentResult", universe: Universe = ("head", "mlp")) -> dict[str, float]:
    """``{"head.L.H": effect, "mlp.L": effect}`` from a patching result's ``head``/``mlp`` sweeps."""
    effects = {}
    for sweep in result.sweeps:
        if sweep.per_position or sweep.site not in universe:
            continue
        values = result.tensors[f"effect.{sweep.name}"].flatten().tolist()
        effects.update({cell.component: cell.effect for cell in sweep_cells(sweep, values)})
    if not effects:
        raise UserInputError(f"the result has no {' or '.join(universe)} sweep to read effects from")
    return effects


def rank_components(run: "Run", model: "LoadedModel", prompts: PromptPairs, *,
                    universe: Universe = ("head", "mlp"), exact_budget: int = 512,
                    confirm_top: int = 12) -> Ranking:
    """Rank every component of ``universe`` by |patching effect| (see the module docstring)."""
    adapter = model.adapter
    count = (adapter.n_layers * adapter.n_heads if "head" in universe else 0) + \
        (adapter.n_layers if "mlp" in universe else 0)
    sweeps = tuple(_SWEEPS[k] for k in universe)
    if count <= exact_budget:
        result = run.experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=sweeps))
        effects = component_effects(result, universe)
        return Ranking(effects=_ordered(effects), method="activation_patching", evidence=(result.key,))
    estimate = run.experiment(model, AttributionPatchingSpec(prompts=prompts, sweeps=sweeps))
    ranked = _ordered(component_effects(estimate, universe))
    top = [c for c, _ in ranked[:confirm_top]]
    check = run.experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=(),
                                                         component_sets=tuple((c,) for c in top)))
    confirmed = tuple((s.components[0], s.effect if s.effect is not None else float("nan"))
                      for s in check.component_sets)
    return Ranking(effects=ranked, method="attribution_patching", confirmed=confirmed,
                   evidence=(estimate.key, check.key))


def grow_circuit(run: "Run", model: "LoadedModel", prompts: PromptPairs, order: Sequence[str], *,
                 target: float = 0.8, universe: Universe = ("head", "mlp"),
                 method: Literal["mean", "resample", "zero"] = "resample",
                 max_size: int | None = None) -> CircuitSearch:
    """The smallest prefix of ``order`` whose faithfulness reaches ``target``.

    Sizes are tried 1, 2, 3, … (each a cached ablation in ``keep`` mode), stopping at the
    first that reaches the target or at ``max_size``; when none does, the best prefix tried is
    returned with ``reached=False``.
    """
    if not order:
        raise UserInputError("no components to build a circuit from")
    limit = min(len(order), max_size or len(order))
    tried, evidence = [], []
    best: tuple[int, float | None] = (0, None)
    for size in range(1, limit + 1):
        result = run.experiment(model, AblationSpec(prompts=prompts, components=tuple(order[:size]),
                                                    mode="keep", method=method, universe=universe))
        evidence.append(result.key)
        tried.append((size, result.faithfulness))
        if result.faithfulness is not None and (best[1] is None or result.faithfulness > best[1]):
            best = (size, result.faithfulness)
        if result.faithfulness is not None and result.faithfulness >= target:
            return CircuitSearch(components=tuple(order[:size]), faithfulness=result.faithfulness,
                                 target=target, reached=True, tried=tuple(tried), method=method,
                                 universe=universe, evidence=tuple(evidence))
    size, faithfulness = best
    return CircuitSearch(components=tuple(order[:size]), faithfulness=faithfulness, target=target,
                         reached=False, tried=tuple(tried), method=method, universe=universe,
                         evidence=tuple(evidence))


def _ordered(effects: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(effects.items(), key=lambda item: (-abs(item[1]), item[0])))
