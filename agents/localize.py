"""Localisation steps of the heuristic playbook: rank components, then grow a faithful circuit.

- `component_effects` reads the per-component effects (heads and MLPs, every position at once)
  out of an activation- or attribution-patching result, on its normalised scale (0 = corrupted
  run, 1 = clean run).
- `rank_components` ranks every head and MLP by |effect|: by activation patching when that is
  affordable (``exact_budget`` forward-pass variants), else by attribution patching (two
  forwards and one backward for all of them), confirming the top candidates by activation
  patching of those components alone. A component is *significant* when its effect is at
  least ``min_effect`` and its per-prompt effects put a 99% normal confidence interval
  clear of zero; only significant components are candidates for the circuit first.
  Patching in clean values (denoising) asks whether a component *suffices*; the ranking also
  patches in corrupted values (noising: what each component *removes* from the clean run),
  because a component can be needed without sufficing alone (it acts with others) or suffice
  without being needed (a backup). Components whose noising share is at least ``min_effect``
  and clear of zero are *necessary*.
- `grow_circuit` takes the ranking and returns the smallest prefix whose faithfulness (the
  share of the logit difference kept when every other component of the universe is ablated)
  reaches the target under *every* ablation method asked for (resample and mean by default,
  so the circuit does not hang on one choice of "removed"), with every size it tried. Up to
  ``linear_limit`` candidates it tries sizes 1, 2, 3, ...; beyond, it doubles the size until
  the target is reached and then bisects (faithfulness of a prefix is close to monotone in
  practice, not in principle: the sizes tried are reported).
- `largest_circuit`: the most components a circuit may have, ``MAX_CIRCUIT_SHARE`` (half) of
  every head and MLP. The `Toolbox` holds every circuit search to it, whichever brain asked.

All experiments go through ``run.experiment``: cached by content hash, counted in ``run.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal, Sequence

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
    significant: tuple[str, ...] = ()
    """Components whose effect is clearly non-zero (see the module docstring), in rank order."""
    removes: tuple[tuple[str, float], ...] = ()
    """Noising: the share of the logit difference each component's corrupted value removes from
    the clean run, largest |share| first (attribution rankings: the estimates); empty when the
    noising direction was not measured."""
    necessary: tuple[str, ...] = ()
    """Components whose noising share is at least ``min_effect`` and clearly non-zero (for
    attribution rankings: confirmed by activation patching), largest first."""
    evidence: tuple[str, ...]

    @property
    def order(self) -> list[str]:
        return [c for c, _ in self.effects]


MAX_CIRCUIT_SHARE = 0.5
"""No circuit may take more than this share of the model's heads and MLPs: a set that is most of
the model keeps the behaviour almost by construction, overlaps the critic's random controls of
its size, and says nothing about where the behaviour lives."""


def largest_circuit(n_components: int, share: float = MAX_CIRCUIT_SHARE) -> int:
    """The most components a circuit over ``n_components`` heads and MLPs may have: ``share`` of
    them, at least one."""
    return max(1, int(share * n_components))


class CircuitSearch(BaseModel):
    """The circuit `grow_circuit` found (empty when none reached the target) and its trajectory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    components: tuple[str, ...]
    faithfulness: float | None
    """The smallest faithfulness over the methods (None: not normalisable)."""
    by_method: dict[str, float | None]
    """Faithfulness of the chosen circuit under each method."""
    target: float
    reached: bool
    tried: tuple[tuple[int, float | None], ...]
    """(size, smallest faithfulness over the methods) for every prefix size evaluated, in order."""
    methods: tuple[str, ...]
    universe: Universe
    positions: tuple[int, ...] | None
    """Where the ablations acted (None: every position)."""
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
                    confirm_top: int = 12, min_effect: float = 0.01, noising: bool = True) -> Ranking:
    """Rank every component of ``universe`` by |patching effect| (see the module docstring);
    ``noising``: also measure what each component removes from the clean run."""
    adapter = model.adapter
    count = (adapter.n_layers * adapter.n_heads if "head" in universe else 0) + \
        (adapter.n_layers if "mlp" in universe else 0)
    sweeps = tuple(_SWEEPS[k] for k in universe)
    modes = ("denoising", "noising") if noising else ("denoising",)
    if count <= exact_budget:
        results = {mode: run.experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=sweeps, mode=mode))
                   for mode in modes}
        found = {mode: _exact_shares(result, universe, min_effect) for mode, result in results.items()}
        effects, significant = found["denoising"]
        removes, necessary = found.get("noising", ((), ()))
        return Ranking(effects=effects, method="activation_patching", significant=significant, removes=removes,
                       necessary=necessary, evidence=tuple(r.key for r in results.values()))
    evidence: list[str] = []
    shares: dict[str, tuple] = {}
    for mode in modes:
        estimate = run.experiment(model, AttributionPatchingSpec(prompts=prompts, sweeps=sweeps, mode=mode))
        ranked = _ordered(_as_share(component_effects(estimate, universe), mode))
        top = [c for c, _ in ranked[:confirm_top]]
        check = run.experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=(), mode=mode,
                                                             component_sets=tuple((c,) for c in top)))
        confirmed = tuple(_as_share({s.components[0]: float("nan") if s.effect is None else s.effect
                                     for s in check.component_sets}, mode).items())
        shares[mode] = (ranked, confirmed, tuple(c for c, e in confirmed if abs(e) >= min_effect))
        evidence += [estimate.key, check.key]
    ranked, confirmed, significant = shares["denoising"]
    removes, _, necessary = shares.get("noising", ((), (), ()))
    return Ranking(effects=ranked, method="attribution_patching", confirmed=confirmed, significant=significant,
                   removes=removes, necessary=necessary, evidence=tuple(evidence))


def _as_share(effects: dict[str, float], mode: str) -> dict[str, float]:
    """Normalised patching effects (0 = corrupted, 1 = clean) as the share each component
    restores (denoising: the effect itself) or removes from the clean run (noising: 1 − effect)."""
    return effects if mode == "denoising" else {c: 1.0 - e for c, e in effects.items()}


def _exact_shares(result: "ExperimentResult", universe: Universe, min_effect: float
                  ) -> tuple[tuple[tuple[str, float], ...], tuple[str, ...]]:
    """(components by |share|, the ones at least ``min_effect`` and clear of zero) of an
    activation-patching sweep in its mode."""
    shares = _ordered(_as_share(component_effects(result, universe), result.spec.mode))
    clear = _clear_of_zero(result, universe)
    return shares, tuple(c for c, e in shares if abs(e) >= min_effect and clear.get(c, False))


def grow_circuit(run: "Run", model: "LoadedModel", prompts: PromptPairs, order: Sequence[str], *,
                 target: float = 0.8, universe: Universe = ("head", "mlp"),
                 methods: Sequence[Literal["mean", "resample", "zero"]] = ("resample", "mean"),
                 positions: tuple[int, ...] | None = None, max_size: int | None = None,
                 linear_limit: int = 24, should_stop: Callable[[], bool] | None = None) -> CircuitSearch:
    """The smallest prefix of ``order`` whose faithfulness reaches ``target`` under every method.

    Each size is one cached ablation per method in ``keep`` mode (restricted to ``positions``).
    The search stops at the first size that reaches the target, at ``max_size``, or when
    ``should_stop()`` says the budget is spent; when no size reaches it, the best prefix tried
    is returned with ``reached=False``.
    """
    if not order:
        raise UserInputError("no components to build a circuit from")
    if not methods:
        raise UserInputError("grow_circuit needs at least one ablation method")
    if max_size is not None and max_size < 1:
        raise UserInputError(f"a circuit needs room for at least one component, not max_size {max_size}")
    limit = min(len(order), max_size or len(order))
    tried: dict[int, float | None] = {}
    by_size: dict[int, dict[str, float | None]] = {}
    evidence: list[str] = []

    def score(size: int) -> float | None:
        if size not in tried:
            by_size[size], keys = keep_faithfulness(run, model, prompts, order[:size], methods=methods,
                                                    universe=universe, positions=positions)
            evidence.extend(keys)
            values = list(by_size[size].values())
            tried[size] = None if any(v is None for v in values) else min(values)
        return tried[size]

    def reaches(size: int) -> bool:
        value = score(size)
        return value is not None and value >= target

    found = None
    if limit <= linear_limit:
        for size in range(1, limit + 1):
            if reaches(size):
                found = size
                break
            if should_stop is not None and should_stop():
                break
    else:
        low, size = 0, 1  # low: the largest size known to miss the target
        while size < limit and not reaches(size):
            if should_stop is not None and should_stop():
                size = None
                break
            low, size = size, min(2 * size, limit)
        if size is not None and (size < limit or reaches(limit)):
            high = size
            while high - low > 1 and not (should_stop is not None and should_stop()):
                middle = (low + high) // 2
                if reaches(middle):
                    high = middle
                else:
                    low = middle
            found = high
    if found is None:
        scored = [(v, -k) for k, v in tried.items() if v is not None]
        found = -max(scored)[1] if scored else max(tried)
    return CircuitSearch(components=tuple(order[:found]), faithfulness=tried[found], by_method=by_size[found],
                         target=target, reached=tried[found] is not None and tried[found] >= target,
                         tried=tuple(tried.items()), methods=tuple(methods), universe=universe,
                         positions=positions, evidence=tuple(evidence))


def keep_faithfulness(run: "Run", model: "LoadedModel", prompts: PromptPairs, components: Sequence[str], *,
                      methods: Sequence[Literal["mean", "resample", "zero"]] = ("resample", "mean"),
                      universe: Universe = ("head", "mlp"), positions: tuple[int, ...] | None = None
                      ) -> tuple[dict[str, float | None], list[str]]:
    """The faithfulness of ``components`` alone under each ablation method (one cached ablation
    each, in ``keep`` mode) and the experiment keys, in the order of ``methods``."""
    out: dict[str, float | None] = {}
    keys = []
    for method in methods:
        result = run.experiment(model, AblationSpec(prompts=prompts, components=tuple(components), mode="keep",
                                                    method=method, universe=universe, positions=positions))
        keys.append(result.key)
        out[method] = result.faithfulness
    return out, keys


def _clear_of_zero(result: "ExperimentResult", universe: Universe, z: float = 2.576) -> dict[str, bool]:
    """Per component: whether its per-prompt patching effect has a 99% normal CI clear of zero
    (the patched run against the run it patches into: corrupted when denoising, clean when
    noising)."""
    t = result.tensors
    gap = (t["clean_logit_diff"] - t["corrupted_logit_diff"]).double()
    base = t["corrupted_logit_diff" if result.spec.mode == "denoising" else "clean_logit_diff"].double()
    scale = float(gap.mean())
    out: dict[str, bool] = {}
    if abs(scale) < 1e-9:
        return out
    for sweep in result.sweeps:
        if sweep.per_position or sweep.site not in universe:
            continue
        per_prompt = (t[f"logit_diff.{sweep.name}"].double() - base) / scale
        flat = per_prompt.reshape(-1, per_prompt.shape[-1])
        n = flat.shape[-1]
        mean, sd = flat.mean(-1), flat.std(-1) if n > 1 else flat.new_zeros(flat.shape[0])
        clear = (mean.abs() > z * sd / max(n, 1) ** 0.5).tolist()
        out.update({cell.component: c for cell, c in zip(sweep_cells(sweep, mean.tolist()), clear)})
    return out


def _ordered(effects: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(effects.items(), key=lambda item: (-abs(item[1]), item[0])))
