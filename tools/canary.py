"""Canaries: a behaviour and a cheap mechanism fingerprint per checkpoint, and what they say over time.

A *reading* of one behaviour on one checkpoint (`read_canary`) comes from two stored results on
the same prompts: the behaviour experiment (logit difference answer − foil per prompt, top-1
accuracy) and attribution patching of every head and MLP (gradient × activation difference:
two forwards and one backward). The *fingerprint* is each component's mean attribution in
logit units — the estimated change of the logit difference when that component's clean output
is patched into the corrupted run. Logit units, not the normalised scale: normalising divides
by the clean − corrupted gap, which is near zero before the behaviour exists.

Definitions (the thresholds are constants here, written once, shared by ``sleuth watch`` and
the training hook):

* **present** at a checkpoint: the mean logit difference's 95% bootstrap CI lies above 0 and
  the model prefers the answer to the foil on at least half of the prompts — the rule an
  investigation uses to decide a model shows a behaviour at all (`agents.playbook`), with the
  CI making "above 0" a statement about the prompt distribution.
* **appears** at checkpoint ``i``: the behaviour is present at ``i`` and at every later
  checkpoint, and absent at ``i − 1`` (a behaviour present from the first checkpoint on did not
  appear in the series; one that comes and goes has not appeared until it stays).
* **scale** ``S`` of the series: the largest |mean clean − corrupted logit difference| of the
  behaviour over the checkpoints considered; every change is judged against ``0.1 × S`` — a
  tenth of the behaviour, the same smallest change of interest as ``sleuth diff``.
* **mechanism shift** between consecutive checkpoints: the components whose fingerprint moved
  by at least ``0.1 × S`` (gained: it rose; lost: it fell).
* **rising with the behaviour**: a component whose mean fingerprint over the checkpoints from
  the appearance on exceeds its mean over the checkpoints before it by at least ``0.1 × S``.
* a behaviour **moved** between two readings (the training hook's warning): its mean logit
  difference changed by at least ``0.1 × S``, or it became present or absent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from pydantic import BaseModel, ConfigDict

from tools.experiments.activation_patching import sweep_cells
from tools.stats import bootstrap_ci

if TYPE_CHECKING:
    from tools.experiments.attribution_patching import AttributionPatchingResult
    from tools.experiments.behaviour import BehaviourResult

PRESENT_PREFERENCE = 0.5
"""Share of prompts preferring the answer to the foil needed for "present"."""
CHANGE_FRACTION = 0.1
"""Changes are judged against this fraction of the behaviour's scale."""


class CanaryReading(BaseModel):
    """One behaviour on one checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    behaviour: str
    checkpoint: str
    """The checkpoint's name (a folder name, ``step-N``)."""
    step: int | None
    """Training step, when known."""
    n: int
    logit_diff: float
    """Mean logit difference answer − foil on the clean prompts."""
    ci: tuple[float, float]
    """95% bootstrap CI of ``logit_diff``."""
    prefers_answer: float
    """Share of prompts whose answer logit exceeds the foil's."""
    accuracy: float
    """Share of prompts whose top-1 token is the answer."""
    gap: float
    """Mean clean − corrupted logit difference (the scale of the patching estimates)."""
    fingerprint: dict[str, float]
    """Per head and MLP: mean attribution-patching estimate, logit units."""
    evidence: tuple[str, ...]
    """Keys of the behaviour and attribution results."""

    @property
    def present(self) -> bool:
        return self.ci[0] > 0 and self.prefers_answer >= PRESENT_PREFERENCE


class Shift(BaseModel):
    """Components whose fingerprint moved between two consecutive checkpoints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    """Index of the later checkpoint."""
    checkpoint: str
    previous: str
    gained: tuple[tuple[str, float], ...]
    """(component, change) that rose by at least the threshold, largest first."""
    lost: tuple[tuple[str, float], ...]
    """(component, change) that fell by at least the threshold, largest fall first."""


def read_canary(behaviour: "BehaviourResult", attribution: "AttributionPatchingResult", *, name: str,
                checkpoint: str, step: int | None, seed: int = 0) -> CanaryReading:
    """A reading from the two stored results (same prompts); pure."""
    ld = behaviour.tensors["logit_diff"].double().numpy()
    ci = bootstrap_ci(ld, seed=seed) if ld.size >= 2 else None
    fingerprint: dict[str, float] = {}
    for sweep in attribution.sweeps:
        if sweep.per_position or sweep.site not in ("head", "mlp"):
            continue
        values = attribution.tensors[f"attribution.{sweep.name}"].double().mean(-1).flatten().tolist()
        fingerprint.update({c.component: c.effect for c in sweep_cells(sweep, values)})
    gap = float((attribution.tensors["clean_logit_diff"].double()
                 - attribution.tensors["corrupted_logit_diff"].double()).mean())
    return CanaryReading(
        behaviour=name, checkpoint=checkpoint, step=step, n=int(ld.size), logit_diff=float(ld.mean()),
        ci=(ci.low, ci.high) if ci else (float(ld.mean()), float(ld.mean())),
        prefers_answer=float((ld > 0).mean()), accuracy=behaviour.accuracy, gap=gap, fingerprint=fingerprint,
        evidence=(behaviour.key, attribution.key))


def scale(readings: Sequence[CanaryReading]) -> float:
    """``S``: the largest |clean − corrupted gap| over the readings (at least 1e-6)."""
    return max([abs(r.gap) for r in readings] + [1e-6])


def appearance(readings: Sequence[CanaryReading]) -> int | None:
    """Index of the checkpoint where the behaviour appears (see the module docstring), or None."""
    if not readings or not readings[-1].present:
        return None
    i = len(readings) - 1
    while i > 0 and readings[i - 1].present:
        i -= 1
    return i if i > 0 else None


def shifts(readings: Sequence[CanaryReading], fraction: float = CHANGE_FRACTION) -> list[Shift]:
    """Every consecutive pair with at least one component moving by ``fraction × S``."""
    threshold = fraction * scale(readings)
    out = []
    for i in range(1, len(readings)):
        moved = component_moves(readings[i - 1], readings[i], threshold)
        if moved:
            out.append(Shift(index=i, checkpoint=readings[i].checkpoint, previous=readings[i - 1].checkpoint,
                             gained=tuple(sorted(((c, d) for c, d in moved if d > 0), key=lambda x: -x[1])),
                             lost=tuple(sorted(((c, d) for c, d in moved if d < 0), key=lambda x: x[1]))))
    return out


def component_moves(before: CanaryReading, after: CanaryReading, threshold: float) -> list[tuple[str, float]]:
    """(component, change) of every component whose fingerprint moved by at least ``threshold``."""
    return [(c, after.fingerprint[c] - before.fingerprint.get(c, 0.0)) for c in after.fingerprint
            if abs(after.fingerprint[c] - before.fingerprint.get(c, 0.0)) >= threshold]


def rising(readings: Sequence[CanaryReading], fraction: float = CHANGE_FRACTION) -> list[tuple[str, float]]:
    """(component, gain) of the components rising with the behaviour, largest gain first; empty
    when the behaviour does not appear in the series."""
    at = appearance(readings)
    if at is None:
        return []
    threshold = fraction * scale(readings)
    before, after = readings[:at], readings[at:]
    out = []
    for c in readings[-1].fingerprint:
        gain = (sum(r.fingerprint.get(c, 0.0) for r in after) / len(after)
                - sum(r.fingerprint.get(c, 0.0) for r in before) / len(before))
        if gain >= threshold:
            out.append((c, gain))
    return sorted(out, key=lambda x: -x[1])


def behaviour_moved(before: CanaryReading, after: CanaryReading, threshold: float) -> str | None:
    """Why the behaviour moved between two readings (None when it did not): see the docstring."""
    if before.present != after.present:
        return f"it became {'present' if after.present else 'absent'}"
    change = after.logit_diff - before.logit_diff
    if abs(change) >= threshold:
        return f"its logit difference moved by {change:+.2f} ({before.logit_diff:.2f} -> {after.logit_diff:.2f})"
    return None


__all__ = ["CanaryReading", "Shift", "appearance", "behaviour_moved", "component_moves", "read_canary",
           "rising", "scale", "shifts"]
