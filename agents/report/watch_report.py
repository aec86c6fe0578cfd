"""The report of a watch run (``sleuth watch``, or the training hook's run): one timeline per behaviour.

Rebuilt from the run folder alone: the readings come from the stored behaviour and
attribution-patching results (`agents.watch.read_watch`), so an edited stored result changes the
report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from agents.report.build import Figure, Prose
from agents.report.charts import LineChart, Series
from memory.records import Cost

if TYPE_CHECKING:
    from memory.runstore import Run

PALETTE = ("#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")
TRACED = 5
"""Components drawn per timeline besides the behaviour."""


class WatchReportData(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: str = "watch"
    run_id: str
    question: str
    status: str
    source: str
    created_at: str
    updated_at: str
    answer: Prose
    checkpoints: list[dict[str, Any]]
    behaviours: list[dict[str, Any]]
    figures: list[Figure]
    methods: list[Prose]
    cost: Cost


def build_watch_report(run: "Run") -> WatchReportData:
    from agents.watch import read_watch

    record = run.investigation() or {}
    analysis = read_watch(run, record)
    behaviours, figures = [], []
    for name, a in analysis.items():
        readings = a["readings"]
        if not readings:
            continue
        at = a["appears"]
        rows = [{"checkpoint": r.checkpoint, "step": r.step, "logit_diff": r.logit_diff, "ci": r.ci,
                 "prefers": r.prefers_answer, "accuracy": r.accuracy, "present": r.present} for r in readings]
        shifts = [{"checkpoint": s.checkpoint, "previous": s.previous,
                   "gained": ", ".join(f"{c} {d:+.2f}" for c, d in s.gained[:4]) or "—",
                   "lost": ", ".join(f"{c} {d:+.2f}" for c, d in s.lost[:4]) or "—"} for s in a["shifts"]]
        rising = [{"component": c, "gain": g, "roles": a["roles"].get(c) or {}} for c, g in a["rising"]]
        behaviours.append({"name": name, "rows": rows, "appears": None if at is None else readings[at].checkpoint,
                           "present_throughout": all(r.present for r in readings), "threshold": a["threshold"],
                           "shifts": shifts, "rising": rising, "summary": _summary(name, a)})
        figures.append(_timeline(name, a))
    source = record.get("source", "checkpoints")
    return WatchReportData(
        run_id=run.id, question=run.record.question, status=run.record.status, source=source,
        created_at=run.record.created_at, updated_at=run.record.updated_at,
        answer=Prose(text=" ".join(b["summary"] for b in behaviours) or "No checkpoint was measured yet."),
        checkpoints=[{"label": p["label"], "step": p.get("step"), "path": p.get("path", ""),
                      "weights_hash": p.get("weights_hash", "")} for p in record.get("checkpoints", [])],
        behaviours=behaviours, figures=figures, methods=_methods(record), cost=run.record.cost)


def _summary(name: str, a: dict) -> str:
    readings = a["readings"]
    at = a["appears"]
    if at is not None:
        r = readings[at]
        text = (f"`{name}` appears at {r.checkpoint} (logit difference {r.logit_diff:.2f}, 95% CI {r.ci[0]:.2f} to "
                f"{r.ci[1]:.2f}, answer preferred on {r.prefers_answer:.0%}; absent at {readings[at - 1].checkpoint}).")
        heads = [(c, g) for c, g in a["rising"] if c.startswith("head.")]
        if heads:
            text += " Heads whose effect rises with it: " + ", ".join(f"{c} (+{g:.2f})" for c, g in heads[:4]) + "."
        others = [(c, g) for c, g in a["rising"] if not c.startswith("head.")]
        if others:
            text += " Also rising: " + ", ".join(f"{c} (+{g:.2f})" for c, g in others[:3]) + "."
        return text
    if all(r.present for r in readings):
        return f"`{name}` is present at every checkpoint (it formed before this series)."
    if readings[-1].present:
        return f"`{name}` is present at the last checkpoint but not steadily before it."
    return f"`{name}` does not appear (last logit difference {readings[-1].logit_diff:.2f})."


def _timeline(name: str, a: dict) -> Figure:
    readings = a["readings"]
    steps = [r.step for r in readings]
    by_step = all(s is not None for s in steps) and len(set(steps)) == len(steps) and steps == sorted(steps)
    xs = [float(s) for s in steps] if by_step else [float(i) for i in range(len(readings))]
    ticks = None if by_step else [(float(i), r.checkpoint) for i, r in enumerate(readings)]
    traced = [c for c, _ in a["rising"]][:TRACED]
    if len(traced) < TRACED:
        spread = sorted(readings[-1].fingerprint, key=lambda c: -max(abs(r.fingerprint.get(c, 0.0)) for r in readings))
        traced += [c for c in spread if c not in traced][:TRACED - len(traced)]
    series = [Series(name="logit difference", x=xs, y=[r.logit_diff for r in readings], color="#1f5fa8")]
    for k, c in enumerate(traced):
        series.append(Series(name=c, x=xs, y=[r.fingerprint.get(c) for r in readings],
                             color=PALETTE[k % len(PALETTE)], dashed=True))
    vlines = []
    if a["appears"] is not None:
        vlines.append((xs[a["appears"]], "appears"))
    chart = LineChart(series=series, x_label="training step" if by_step else "checkpoint",
                      y_label="logit units", x_ticks=ticks, vlines=vlines)
    caption = (f"`{name}` over the checkpoints: the mean logit difference answer − foil (solid) and the attribution-"
               "patching fingerprint of the components that rise with it (or, when none does, the largest) — each "
               "one's estimated restoration of the logit difference when patched clean into corrupted (dashed). The "
               "vertical line marks where the behaviour appears.")
    keys = [k for r in readings for k in r.evidence]
    return Figure(id=f"timeline-{name}", title=f"Timeline: {name}", caption=Prose(text=caption), chart=chart,
                  evidence=keys[-2:])


def _methods(record: dict) -> list[Prose]:
    canaries = record.get("canaries") or []
    names = ", ".join(f"`{c['name']}`" for c in canaries)
    first = (canaries[0]["prompts"] if canaries else {}) or {}
    where = (f"the generator's held-out split, seed {first.get('seed')}, n={first.get('n')}" if first.get("task")
             else "the prompts given")
    return [Prose(text=t) for t in (
        f"Canaries: {names}; every checkpoint is measured on the same prompts ({where}).",
        "Per checkpoint and canary: the behaviour (logit difference per prompt, top-1 accuracy) and attribution "
        "patching of every head and MLP (gradient × activation difference, two forwards and one backward); the "
        "fingerprint is each component's mean estimate in logit units.",
        "Present: the mean logit difference's 95% bootstrap CI above 0 and the answer preferred to the foil on at "
        "least half of the prompts. Appears: present from that checkpoint on, absent at the one before.",
        "Shift: a component whose fingerprint moves by at least a tenth of the behaviour's scale (the largest clean − "
        "corrupted gap in the series) between consecutive checkpoints. Rising with the behaviour: mean fingerprint "
        "after the appearance exceeds the mean before it by at least that much.",
    )]


__all__ = ["WatchReportData", "build_watch_report"]
