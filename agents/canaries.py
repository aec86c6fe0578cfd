"""Canary behaviours measured on a model: the shared core of ``sleuth watch`` and the training hook.

A canary is a behaviour with a fixed prompt set (the generator's held-out split, one seed), so
every checkpoint is measured on the same prompts. `measure_canary` runs its two experiments —
the behaviour, and attribution patching of every head and MLP (the fingerprint) — through a
run's content-addressed cache; `tools.canary.read_canary` turns the two stored results into a
reading.

During training (`run_canaries`, `CanaryMonitor`, `CanaryCallback`): at each save the canaries
run on the model being trained (put in eval mode and back, no gradient left on its parameters),
the results are stored in the workspace (a run of kind ``watch``, source ``training``: its
``investigation.json`` lists the checkpoints and the keys of their results, so ``sleuth report``
draws the same timeline figures as ``sleuth watch``), and a ``logging`` warning is emitted when a
canary's behaviour or mechanism moved past the threshold since the previous save
(`tools.canary`: a tenth of the behaviour's scale).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import BaseModel, ConfigDict

from tools.canary import CHANGE_FRACTION, CanaryReading, behaviour_moved, component_moves, read_canary, scale
from tools.errors import TokenizationError, UserInputError
from tools.experiments.prompts import PromptPairs

if TYPE_CHECKING:
    from memory.runstore import Run
    from tools.loading import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_N = 32
"""Prompts per canary."""
DEFAULT_SEED = 1
"""Seed of the canaries' held-out prompts (the seed ``sleuth check`` uses)."""


class Canary(BaseModel):
    """A behaviour to watch, with the prompts every checkpoint is measured on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    prompts: PromptPairs


def default_canaries(tokenizer, *, n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[Canary]:
    """The task generators' behaviours this tokenizer can express (held-out split, ``seed``)."""
    from tools.tasks import TASK_NAMES

    out = []
    for name in TASK_NAMES:
        try:
            _generate(name, tokenizer, n, seed)
        except TokenizationError:
            continue
        out.append(Canary(name=name, prompts=PromptPairs(task=name, n=n, split="heldout", seed=seed)))
    if not out:
        raise UserInputError("this tokenizer can express none of the task generators' behaviours; give the "
                             "canaries in a --behaviours file (prompts with one-token answers and foils)")
    return out


def _generate(name: str, tokenizer, n: int, seed: int):
    from tools.tasks import get_task

    return get_task(name).generate(n, split="heldout", seed=seed, tokenizer=tokenizer)


def load_canaries(path: str | Path, tokenizer, *, n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[Canary]:
    """Canaries from a YAML or JSON file: a list (or ``{"behaviours": [...]}``) whose entries are
    task names (``induction``) or mappings with ``name`` and the fields of a behaviour spec file
    (``prompts``, ``answers``, ``foils``, ``corrupted``; or ``task``, ``n``, ``seed``).

    Raises:
        UserInputError: one line naming the file and the entry: missing or unreadable file, an
            unknown behaviour name, an entry a spec file would reject, a behaviour this tokenizer
            cannot express, two entries of one name.
    """
    from agents.behavior import read_data_file

    path = Path(path)
    data = read_data_file(path, "behaviours file")
    if isinstance(data, dict) and set(data) == {"behaviours"}:
        data = data["behaviours"]
    if not isinstance(data, list) or not data:
        raise UserInputError(f"{path}: give a non-empty list of behaviours (task names, or mappings with a name "
                             "and prompts, answers, foils, corrupted)")
    out: list[Canary] = []
    for i, entry in enumerate(data):
        canary = _canary(path, i, entry, tokenizer, n=n, seed=seed)
        if any(c.name == canary.name for c in out):
            raise UserInputError(f"{path}: entry {i}: behaviour {canary.name!r} is listed twice")
        out.append(canary)
    return out


def _canary(path: Path, i: int, entry: Any, tokenizer, *, n: int, seed: int) -> Canary:
    from agents.behavior import BehaviorSpec
    from tools.tasks import get_task

    where = f"{path}: entry {i}"
    if isinstance(entry, str):
        try:
            name = get_task(entry).name
        except UserInputError as error:
            raise UserInputError(f"{where}: {error}") from None
        try:
            _generate(name, tokenizer, n, seed)
        except TokenizationError as error:
            raise UserInputError(f"{where}: {name} cannot be measured with this tokenizer ({error})") from None
        return Canary(name=name, prompts=PromptPairs(task=name, n=n, split="heldout", seed=seed))
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise UserInputError(f"{where}: give a task name or a mapping with a 'name'")
    fields = {k: v for k, v in entry.items() if k != "name"}
    try:
        spec = BehaviorSpec(question=entry["name"], **fields)
        spec.check(tokenizer)
    except UserInputError as error:
        raise UserInputError(f"{where} ({entry['name']}): {error}") from None
    except Exception as error:  # pydantic's ValidationError: a wrong field or type
        first = str(error).splitlines()
        raise UserInputError(f"{where} ({entry['name']}): {' '.join(first[1:3]).strip() or first[0]}") from None
    if spec.task is None and not spec.corrupted:
        raise UserInputError(f"{where} ({entry['name']}): give corrupted prompts (the fingerprint patches "
                             "clean into corrupted runs)")
    if spec.task is not None:
        pairs = PromptPairs(task=spec.task, n=spec.n if "n" in fields else n, split="heldout",
                            seed=spec.seed if "seed" in fields else seed)
    else:
        pairs = spec.to_prompt_pairs()
    return Canary(name=entry["name"].strip(), prompts=pairs)


def canary_specs(canary: Canary):
    """The two experiments of a canary: the behaviour, and attribution patching of heads and MLPs."""
    from tools.experiments import AttributionPatchingSpec, BehaviourExperimentSpec, PatchSweep

    return (BehaviourExperimentSpec(prompts=canary.prompts),
            AttributionPatchingSpec(prompts=canary.prompts, sweeps=(PatchSweep(site="head"), PatchSweep(site="mlp"))))


def measure_canary(run: "Run", model: "LoadedModel", canary: Canary, *, checkpoint: str,
                   step: int | None) -> CanaryReading:
    """One canary on one model, its experiments through ``run``'s cache."""
    behaviour_spec, attribution_spec = canary_specs(canary)
    behaviour = run.experiment(model, behaviour_spec)
    attribution = run.experiment(model, attribution_spec)
    return read_canary(behaviour, attribution, name=canary.name, checkpoint=checkpoint, step=step)


def readings_of(run: "Run", record: dict[str, Any]) -> dict[str, list[CanaryReading]]:
    """Per canary, its readings over the checkpoints of a watch record, from the stored results."""
    out: dict[str, list[CanaryReading]] = {c["name"]: [] for c in record["canaries"]}
    for point in record["checkpoints"]:
        for name, keys in point["evidence"].items():
            behaviour, attribution = run.load_experiment(keys[0]), run.load_experiment(keys[1])
            out[name].append(read_canary(behaviour, attribution, name=name, checkpoint=point["label"],
                                         step=point.get("step")))
    return out


# -- during training ------------------------------------------------------------------------------------


class CanaryReport(BaseModel):
    """What one call of `run_canaries` measured and said."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    step: int
    readings: tuple[CanaryReading, ...]
    warnings: tuple[str, ...]
    """The warnings logged (empty when nothing moved past the threshold)."""
    seconds: float
    """Wall time of the call (measuring and storing)."""


def run_canaries(model, tokenizer, step: int, *, workspace: str | Path | None = None, run_id: str | None = None,
                 name: str = "training run", canaries: Sequence[Canary] | None = None, n: int = 16,
                 fraction: float = CHANGE_FRACTION, lock_timeout: float | None = None) -> CanaryReport:
    """Measure the canaries on ``model`` (a transformers causal LM being trained) at ``step``.

    For custom training loops: call it at each save. The results go into the workspace (the run
    ``run_id``, created on the first call; pass the returned ``run_id`` to later calls), and a
    warning is logged (``agents.canaries``) for each canary whose behaviour or mechanism moved
    by at least ``fraction`` of its scale since the previous call's reading (`tools.canary`).
    The model is measured in eval mode and put back in the mode it was in; no gradient is left
    on its parameters. Default canaries: the behaviours this tokenizer can express, ``n`` prompts.
    """
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.loading import wrap_model

    began = time.perf_counter()
    was_training = model.training
    try:
        loaded = wrap_model(model, tokenizer, model_id=f"{name}@{step}", count_forwards=False)
        chosen = list(canaries) if canaries is not None else default_canaries(loaded.tokenizer, n=n)
        with Workspace.open(workspace, writer=True, timeout=lock_timeout) as ws:
            store = RunStore(ws)
            run = _training_run(store, run_id, name, chosen, fraction)
            record = run.investigation() or _new_record(chosen, fraction)
            readings = [measure_canary(run, loaded, c, checkpoint=f"step-{step}", step=step) for c in chosen]
            previous = readings_of(run, record)
            warnings = []
            for reading in readings:
                history = previous.get(reading.behaviour) or []
                if history:
                    warnings += _moves(history[-1], reading, history + [reading], fraction, name)
            record["checkpoints"].append({"label": f"step-{step}", "step": step, "model_id": loaded.model_id,
                                          "weights_hash": loaded.weights_hash,
                                          "evidence": {r.behaviour: list(r.evidence) for r in readings}})
            run.write_investigation(record)
            run.update(status="running", cost={"wall_s": run.record.cost.wall_s + time.perf_counter() - began})
    finally:
        model.train(was_training)
    for text in warnings:
        log.warning(text)
    return CanaryReport(run_id=run.id, step=step, readings=tuple(readings), warnings=tuple(warnings),
                        seconds=time.perf_counter() - began)


def _training_run(store, run_id: str | None, name: str, canaries: Sequence[Canary], fraction: float) -> "Run":
    if run_id is not None:
        try:
            return store.open(run_id)
        except UserInputError:
            if (store.folder / run_id).exists():
                raise
    run = store.create(f"training canaries: {name}", name, run_id=run_id,
                       settings={"kind": "watch", "source": "training", "canaries": [c.name for c in canaries],
                                 "fraction": fraction})
    run.write_investigation(_new_record(canaries, fraction))
    return run


def _new_record(canaries: Sequence[Canary], fraction: float) -> dict[str, Any]:
    return {"kind": "watch", "source": "training", "fraction": fraction,
            "canaries": [c.model_dump(mode="json") for c in canaries], "checkpoints": []}


def _moves(before: CanaryReading, after: CanaryReading, series: list[CanaryReading], fraction: float,
           name: str) -> list[str]:
    threshold = fraction * scale(series)
    out = []
    why = behaviour_moved(before, after, threshold)
    if why:
        out.append(f"{name}: canary {after.behaviour!r} behaviour moved between {before.checkpoint} and "
                   f"{after.checkpoint}: {why} (threshold {threshold:.2f})")
    moved = component_moves(before, after, threshold)
    if moved:
        listed = ", ".join(f"{c} {d:+.2f}" for c, d in sorted(moved, key=lambda x: -abs(x[1]))[:5])
        out.append(f"{name}: canary {after.behaviour!r} mechanism shifted between {before.checkpoint} and "
                   f"{after.checkpoint}: {len(moved)} component(s) moved by at least {threshold:.2f} ({listed})")
    return out


class CanaryMonitor:
    """`run_canaries` with the run id kept between calls: ``monitor(model, tokenizer, step)``.

    The training recipe's ``on_checkpoint`` hook, and what `CanaryCallback` calls at each save.
    ``reports`` keeps every call's `CanaryReport` (readings, warnings, seconds).
    """

    def __init__(self, *, workspace: str | Path | None = None, name: str = "training run",
                 canaries: Sequence[Canary] | None = None, n: int = 16, fraction: float = CHANGE_FRACTION,
                 run_id: str | None = None) -> None:
        self.workspace, self.name, self.canaries, self.n, self.fraction = workspace, name, canaries, n, fraction
        self.run_id = run_id
        self.reports: list[CanaryReport] = []

    def __call__(self, model, tokenizer, step: int) -> CanaryReport:
        report = run_canaries(model, tokenizer, step, workspace=self.workspace, run_id=self.run_id, name=self.name,
                              canaries=self.canaries, n=self.n, fraction=self.fraction)
        self.run_id = report.run_id
        self.reports.append(report)
        return report

    def finish(self) -> dict[str, str] | None:
        """Mark the training run answered and write its report (timelines); the report paths."""
        if self.run_id is None:
            return None
        from agents.report.render import write_reports
        from memory.runstore import RunStore
        from memory.workspace import Workspace

        with Workspace.open(self.workspace, writer=True) as ws:
            run = RunStore(ws).open(self.run_id)
            run.update(status="answered")
            return {k: str(v) for k, v in write_reports(run).items()}

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "saves": len(self.reports),
                "seconds": [round(r.seconds, 3) for r in self.reports],
                "warnings": sum(len(r.warnings) for r in self.reports)}


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class CanaryCallback(_callback_base()):
    """A Hugging Face ``TrainerCallback`` that runs the canaries at every save (``on_save``).

    ``trainer = Trainer(..., callbacks=[CanaryCallback(tokenizer, workspace="ws")])``. Measures
    the model the trainer passes (``kwargs["model"]``) at ``state.global_step``; the timing of each
    save's canaries, and the wall time of the training steps since the previous save, are kept in
    ``overheads`` (seconds of canaries / seconds of training between saves).
    """

    def __init__(self, tokenizer, *, workspace: str | Path | None = None, name: str = "trainer",
                 canaries: Sequence[Canary] | None = None, n: int = 16, fraction: float = CHANGE_FRACTION) -> None:
        self.tokenizer = tokenizer
        self.monitor = CanaryMonitor(workspace=workspace, name=name, canaries=canaries, n=n, fraction=fraction)
        self.overheads: list[dict[str, float]] = []
        self.report: dict[str, str] | None = None
        """The report's paths, written when training ends."""
        self._since: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._since = time.perf_counter()

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise UserInputError("CanaryCallback: the trainer passed no model to on_save")
        training = time.perf_counter() - (self._since or time.perf_counter())
        report = self.monitor(model, self.tokenizer, int(state.global_step))
        self.overheads.append({"step": int(state.global_step), "canaries_s": report.seconds,
                               "training_s": training,
                               "fraction": report.seconds / training if training > 0 else float("nan")})
        self._since = time.perf_counter()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.report = self.monitor.finish()
        return control


__all__ = ["Canary", "CanaryCallback", "CanaryMonitor", "CanaryReport", "default_canaries", "load_canaries",
           "measure_canary", "readings_of", "run_canaries"]
