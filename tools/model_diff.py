"""Comparing a behaviour's mechanism in two models, component by component, on the same prompts.

Four measures per component, each a number per prompt in both models (same prompts, so the
comparison is paired):

====================  =========================================================================
measure               per prompt
====================  =========================================================================
``cross_model``       the base model's logit difference with the component's output taken from
                      the other model, minus the base model's own (`cross_model_patching`); ``a``
                      is 0 by definition, ``b`` the transfer. Where the computation changed.
``patching``          within each model: the logit difference restored by patching the
                      component's clean output into the corrupted run, minus the corrupted
                      run's (activation patching, denoising, in logit units). How much the
                      model relies on the component for this behaviour.
``dla``               within each model: the component's direct write to the logit difference
                      (direct logit attribution).
``attention.<name>``  within each model, heads only: what the last token attends to —
                      ``to_changed`` (the tokens the corruption changes) and ``to_answer`` (the
                      answer's earlier occurrences) — where defined on every prompt.
====================  =========================================================================

Logit measures are compared in logit units, not normalised: a normalised effect divides by the
model's own clean − corrupted gap, which is near zero in a model that lacks the behaviour.

**What "a significant change" means.** For each (measure, component) the paired differences
``b − a`` over prompts are bootstrapped (`tools.stats.paired_margin_tests`, every test on the
same resampled prompts) and tested against a *smallest change of interest* ``δ``: H0 is
``|mean(b − a)| ≤ δ``. ``δ`` is a tenth of the behaviour's scale for logit measures
(``0.1 × S``, with ``S`` the larger of the two models' mean clean − corrupted logit-difference
gaps) and 0.1 of attention for attention measures. The p-values of every test of one comparison
are Holm-corrected together; a change is significant when its adjusted p is below ``alpha``
(0.05). Without the margin, any systematic difference, however small, becomes significant with
enough prompts; with it, "no significant change" says "no component's measure moved by a tenth
of the behaviour or more, at this confidence".

**Ranking.** Significant changes first. Among them, cross-model patching comes first: it is the
only measure that locates a change *in* the component (a component with the same weights and
inputs in both models transfers exactly nothing, while its within-model measures may still move
because what reads it changed). Then the within-model measures, which say how each component's
role changed. Within each group, by size ``|Δ| / δ``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from tools.errors import UserInputError
from tools.experiments.activation_patching import sweep_cells
from tools.stats import holm, paired_margin_tests

if TYPE_CHECKING:
    from tools.experiments.activation_patching import ActivationPatchingResult
    from tools.experiments.attention import AttentionPatternResult
    from tools.experiments.cross_model_patching import CrossModelPatchingResult
    from tools.experiments.direct_logit_attribution import DirectLogitAttributionResult

MARGIN_FRACTION = 0.1
"""Smallest change of interest for logit measures, as a fraction of the behaviour's scale."""
ATTENTION_MARGIN = 0.1
"""Smallest change of interest for attention measures (attention probability)."""
ALPHA = 0.05
MEASURE_ORDER = ("cross_model", "patching", "dla", "attention.to_changed", "attention.to_answer")
ATTENTION_SCORES = ("to_changed", "to_answer")


class MeasureSamples(BaseModel):
    """One component's per-prompt values of one measure in both models."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    measure: str
    component: str
    a: tuple[float, ...]
    """Per prompt, the base model (A)."""
    b: tuple[float, ...]
    """Per prompt, the other model (B), same prompts in the same order."""
    margin: float
    """The smallest change of interest δ for this measure."""


class ComponentChange(BaseModel):
    """The test of one (measure, component): means, the change with its CI, p-values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measure: str
    component: str
    a: float
    """Mean over prompts on the base model."""
    b: float
    """Mean over prompts on the other model."""
    delta: float
    """``b − a`` (mean of the paired differences)."""
    ci: tuple[float, float]
    """95% bootstrap CI of ``delta`` (the expanded percentile interval, `tools.stats.expanded_tail`)."""
    margin: float
    """δ: H0 is ``|delta| <= margin``."""
    p_value: float
    adjusted_p: float
    """Holm-adjusted over every test of the comparison."""
    significant: bool
    """``adjusted_p < alpha``."""
    n: int

    @property
    def size(self) -> float:
        """``|delta| / margin``: the change in units of the smallest change of interest."""
        return abs(self.delta) / self.margin if self.margin > 0 else math.inf


def behaviour_scale(a: "ActivationPatchingResult", b: "ActivationPatchingResult") -> float:
    """``S``: the larger of the two models' mean clean − corrupted logit-difference gaps (absolute)."""
    gaps = [abs(float(r.tensors["clean_logit_diff"].mean() - r.tensors["corrupted_logit_diff"].mean()))
            for r in (a, b)]
    return max(gaps)


def patching_samples(a: "ActivationPatchingResult", b: "ActivationPatchingResult",
                     margin: float) -> list[MeasureSamples]:
    """Per component, the logit difference patching restores (patched − corrupted), in A and B."""
    per = [_restored(r) for r in (a, b)]
    return [MeasureSamples(measure="patching", component=c, a=tuple(per[0][c]), b=tuple(per[1][c]), margin=margin)
            for c in per[0]]


def _restored(result: "ActivationPatchingResult") -> dict[str, list[float]]:
    corrupted = result.tensors["corrupted_logit_diff"].double()
    out = {}
    for sweep in result.sweeps:
        if sweep.per_position or sweep.site not in ("head", "mlp"):
            continue
        values = result.tensors[f"logit_diff.{sweep.name}"].double()
        flat = values.reshape(-1, values.shape[-1]) - corrupted
        for cell, row in zip(sweep_cells(sweep, [0.0] * flat.shape[0]), flat):
            out[cell.component] = row.tolist()
    return out


def dla_samples(a: "DirectLogitAttributionResult", b: "DirectLogitAttributionResult",
                margin: float) -> list[MeasureSamples]:
    """Per head and MLP, the direct write to the logit difference in A and B."""
    per = [_direct(r) for r in (a, b)]
    return [MeasureSamples(measure="dla", component=c, a=tuple(per[0][c]), b=tuple(per[1][c]), margin=margin)
            for c in per[0]]


def _direct(result: "DirectLogitAttributionResult") -> dict[str, list[float]]:
    heads, mlps = result.tensors["head"].double(), result.tensors["mlp"].double()
    out = {}
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            out[f"head.{layer}.{head}"] = heads[layer, head].tolist()
    for layer in range(mlps.shape[0]):
        out[f"mlp.{layer}"] = mlps[layer].tolist()
    return out


def attention_samples(a: "AttentionPatternResult", b: "AttentionPatternResult",
                      margin: float = ATTENTION_MARGIN) -> list[MeasureSamples]:
    """Per head, each last-token attention score defined on every prompt in both models."""
    out = []
    for score in ATTENTION_SCORES:
        name = f"last.{score}"
        if name not in a.tensors or name not in b.tensors:
            continue
        ta, tb = a.tensors[name].double(), b.tensors[name].double()
        if bool(ta.isnan().any()) or bool(tb.isnan().any()):
            continue  # undefined on some prompt (the answer does not occur in it, say)
        for i, layer in enumerate(a.layers):
            for j, head in enumerate(a.heads):
                out.append(MeasureSamples(measure=f"attention.{score}", component=f"head.{layer}.{head}",
                                          a=tuple(ta[i, j].tolist()), b=tuple(tb[i, j].tolist()), margin=margin))
    return out


def cross_model_samples(result: "CrossModelPatchingResult", margin: float) -> list[MeasureSamples]:
    """Per component, the base model's logit difference with it from the other model (b) and
    the base model's own (a)."""
    base = result.tensors["base_logit_diff"].double()
    out = []
    for sweep in result.sweeps:
        values = result.tensors[f"logit_diff.{sweep.name}"].double()
        flat = values.reshape(-1, values.shape[-1])
        for cell, row in zip(sweep_cells(sweep, [0.0] * flat.shape[0]), flat):
            out.append(MeasureSamples(measure="cross_model", component=cell.component, a=tuple(base.tolist()),
                                      b=tuple(row.tolist()), margin=margin))
    return out


def resamples_for(tests: int, alpha: float = ALPHA) -> int:
    """Bootstrap resamples so that the smallest attainable Holm-adjusted p (``tests / (R + 1)``)
    is at most ``alpha / 10``: at least 2000."""
    return max(2000, math.ceil(10 * tests / alpha))


def compare(samples: Sequence[MeasureSamples], *, alpha: float = ALPHA, seed: int = 0,
            n_resamples: int | None = None) -> list[ComponentChange]:
    """Test every (measure, component) and Holm-correct across all of them; in input order.

    Raises:
        UserInputError: no samples, or samples of different prompt counts.
    """
    if not samples:
        raise UserInputError("nothing to compare: no measure was defined on these prompts")
    n = len(samples[0].a)
    if any(len(s.a) != n or len(s.b) != n for s in samples):
        raise UserInputError("every measure must have one value per prompt in both models")
    differences = np.array([np.asarray(s.b) - np.asarray(s.a) for s in samples])
    tests = paired_margin_tests(differences, [s.margin for s in samples], seed=seed,
                                n_resamples=n_resamples or resamples_for(len(samples), alpha))
    adjusted = holm([t.p_value for t in tests])
    return [ComponentChange(measure=s.measure, component=s.component, a=float(np.mean(s.a)), b=float(np.mean(s.b)),
                            delta=t.interval.estimate, ci=(t.interval.low, t.interval.high), margin=t.margin,
                            p_value=t.p_value, adjusted_p=p, significant=p < alpha, n=n)
            for s, t, p in zip(samples, tests, adjusted)]


def rank_changes(changes: Sequence[ComponentChange]) -> list[ComponentChange]:
    """Significant first; then cross-model patching, then the within-model measures; then by size."""
    def order(c: ComponentChange) -> tuple:
        measure = MEASURE_ORDER.index(c.measure) if c.measure in MEASURE_ORDER else len(MEASURE_ORDER)
        group = 0 if c.measure == "cross_model" else 1
        return (not c.significant, group, -c.size, measure, c.component)

    return sorted(changes, key=order)


def top_changed(changes: Sequence[ComponentChange], k: int = 3) -> list[str]:
    """The first ``k`` distinct components among the significant changes, in rank order."""
    out: list[str] = []
    for c in rank_changes(changes):
        if not c.significant:
            break
        if c.component not in out:
            out.append(c.component)
        if len(out) == k:
            break
    return out


__all__ = ["ComponentChange", "MeasureSamples", "compare", "rank_changes", "top_changed", "behaviour_scale",
           "patching_samples", "dla_samples", "attention_samples", "cross_model_samples"]
