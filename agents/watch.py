"""``sleuth watch``: canary behaviours and their mechanism fingerprints across a series of checkpoints.

Checkpoints are taken in the order given on the command line; an argument that holds
``checkpoint-<step>`` model folders (what the Hugging Face ``Trainer`` and the organism recipe's
``--checkpoint-every`` write) is expanded to them in step order — a model saved in that folder
itself (the final one) is not added; any other argument must be a model folder. Every
checkpoint must share the first one's tokenizer and architecture. Everything is checked before
anything is stored: a folder that is neither a model nor holds checkpoints, a missing one, fewer
than two checkpoints, a bad behaviours file — one line and exit code 2.

Per checkpoint and canary (`agents.canaries`): the behaviour and attribution patching of every
head and MLP on the same held-out prompts, through the workspace's cache. Then, per behaviour
(`tools.canary`): where it appears, where its mechanism shifts, which components rise with it;
and, for a behaviour that appears, the attention role scores (previous-token, duplicate-token,
induction) of the last checkpoint's heads, so a reader can see what the rising heads do.
The run is stored (``run.json`` settings ``kind: watch``; ``investigation.json`` lists the
checkpoints and the keys of their results) and its report written; `watch_summary` (``--json``)
is rebuilt from those stored files.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from agents.canaries import DEFAULT_N, DEFAULT_SEED, default_canaries, load_canaries, measure_canary, readings_of
from tools.canary import appearance, rising, scale, shifts
from tools.errors import ModelNotFoundError, NotAModelError, UserInputError
from tools.tasks import check_prompt_count

if TYPE_CHECKING:
    from memory.runstore import Run

_STEP = re.compile(r"^checkpoint-(\d+)$")


class Checkpoint:
    """A model folder of the series, its label and training step (when the name or
    ``trainer_state.json`` says it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = path.name
        self.step = _step_of(path)


def _step_of(path: Path) -> int | None:
    match = _STEP.match(path.name)
    if match:
        return int(match.group(1))
    state = path / "trainer_state.json"
    if state.is_file():
        import json

        try:
            return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
        except (ValueError, KeyError, TypeError, OSError):
            return None
    return None


def expand_checkpoints(arguments: Sequence[str]) -> list[Checkpoint]:
    """The series: each argument a model folder, or a folder of ``checkpoint-<step>`` model folders
    (expanded in step order). Checked before any model is loaded.

    Raises:
        ModelNotFoundError: a path that does not exist.
        NotAModelError: a folder that is neither a model folder nor holds checkpoint folders, or
            a checkpoint folder without a config or tokenizer.
        UserInputError: fewer than two checkpoints, or one listed twice.
    """
    out: list[Checkpoint] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"no such checkpoint folder: {argument}")
        if path.is_file():
            raise NotAModelError(f"{argument} is a file, not a checkpoint folder")
        children = [p for p in path.iterdir() if p.is_dir() and _STEP.match(p.name)]
        if not children and (path / "config.json").is_file():
            out.append(Checkpoint(path))
            continue
        if not children:
            raise NotAModelError(f"{argument} is not a model folder (no config.json) and holds no checkpoint-<step> "
                                 "folders; pass checkpoint folders written by save_pretrained")
        for child in sorted(children, key=lambda p: int(_STEP.match(p.name).group(1))):
            if not (child / "config.json").is_file():
                raise NotAModelError(f"{child} is not a model folder (no config.json)")
            out.append(Checkpoint(child))
    if len(out) < 2:
        raise UserInputError(f"watch needs at least two checkpoints to compare; got {len(out)}"
                             + (f" ({out[0].path})" if out else ""))
    resolved = [c.path.resolve() for c in out]
    if len(set(resolved)) != len(resolved):
        raise UserInputError("a checkpoint is listed twice; give each checkpoint once")
    from tools.loading import _TOKENIZER_FILES

    for c in out:
        if not any((c.path / f).is_file() for f in _TOKENIZER_FILES):
            raise NotAModelError(f"{c.path} has no tokenizer files; save the tokenizer with each checkpoint "
                                 "(tokenizer.save_pretrained, or Trainer(processing_class=tokenizer))")
    return out


def check_series(series: Sequence[Checkpoint]) -> None:
    """Every checkpoint has the first one's tokenizer and architecture (read from the tokenizer and
    config files, before any weights are loaded).

    Raises:
        UserInputError: naming the first checkpoint that differs and how.
    """
    import json

    from transformers import AutoTokenizer

    def shape(path: Path) -> tuple:
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise NotAModelError(f"{path}/config.json cannot be read ({type(error).__name__})") from None
        keys = ("model_type", "n_layer", "num_hidden_layers", "n_head", "num_attention_heads", "n_embd",
                "hidden_size", "vocab_size")
        return tuple(config.get(k) for k in keys)

    def vocabulary(path: Path) -> dict:
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True).get_vocab()
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise NotAModelError(f"{path} has no usable tokenizer ({' '.join(str(error).split())[:120]})") from None

    first_shape, first_vocab = shape(series[0].path), vocabulary(series[0].path)
    for point in series[1:]:
        if shape(point.path) != first_shape:
            raise UserInputError(f"{point.path} has another architecture than {series[0].path}; a series must be "
                                 "checkpoints of one model")
        if vocabulary(point.path) != first_vocab:
            raise UserInputError(f"{point.path} has a different tokenizer from {series[0].path}; a series must share "
                                 "one tokenizer")


def watch(arguments: Sequence[str], *, behaviours: str | None = None, workspace: str | None = None,
          n: int = DEFAULT_N, seed: int = DEFAULT_SEED, lock_timeout: float | None = None) -> dict[str, Any]:
    """Watch a checkpoint series to the end; return `watch_summary` of the stored run."""
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.experiments.cross_model_patching import check_comparable
    from tools.loading import load_model

    check_prompt_count(n)
    started = time.monotonic()
    series = expand_checkpoints(arguments)
    check_series(series)
    first = load_model(str(series[0].path))
    canaries = (load_canaries(behaviours, first.tokenizer, n=n, seed=seed) if behaviours is not None
                else default_canaries(first.tokenizer, n=n, seed=seed))
    with Workspace.open(workspace, writer=True, timeout=lock_timeout) as ws:
        run = RunStore(ws).create(f"watch {len(series)} checkpoints: {', '.join(c.name for c in canaries)}",
                                  str(series[-1].path), settings={
                                      "kind": "watch", "source": "checkpoints",
                                      "checkpoints": [str(c.path) for c in series],
                                      "canaries": [c.name for c in canaries], "n": n, "seed": seed})
        run.update(status="running")
        record: dict[str, Any] = {"kind": "watch", "source": "checkpoints",
                                  "canaries": [c.model_dump(mode="json") for c in canaries], "checkpoints": []}
        from agents.report.render import reported

        with reported(run, started):
            model = first
            for i, point in enumerate(series):
                if i:
                    model = load_model(str(point.path))
                    check_comparable(first, model)
                readings = [measure_canary(run, model, c, checkpoint=point.label, step=point.step) for c in canaries]
                record["checkpoints"].append({"label": point.label, "step": point.step, "path": str(point.path),
                                              "model_id": model.model_id, "weights_hash": model.weights_hash,
                                              "evidence": {r.behaviour: list(r.evidence) for r in readings}})
                run.write_investigation(record)
            record["roles"] = _roles(run, model, canaries, readings_of(run, record))
            run.write_investigation(record)
        return watch_summary(run)


def _roles(run: "Run", last, canaries, readings) -> dict[str, str]:
    """For each behaviour that appears: the attention role scores of the last checkpoint's heads
    on its prompts (an experiment key)."""
    from tools.experiments import AttentionPatternSpec

    out = {}
    for canary in canaries:
        if appearance(readings[canary.name]) is not None:
            out[canary.name] = run.experiment(last, AttentionPatternSpec(prompts=canary.prompts, saved_prompts=0)).key
    return out


def read_watch(run: "Run", record: dict[str, Any]) -> dict[str, Any]:
    """Per behaviour: the readings and what they say (appearance, shifts, rising components),
    recomputed from the stored results."""
    series = readings_of(run, record)
    out = {}
    for name, readings in series.items():
        at = appearance(readings)
        rises = rising(readings)
        roles = {}
        key = (record.get("roles") or {}).get(name)
        if key:
            attention = run.load_experiment(key)
            for score in ("previous_token", "duplicate_token", "induction"):
                grid = attention.tensors.get(f"score.{score}")
                if grid is None:
                    continue
                for i, layer in enumerate(attention.layers):
                    for j, head in enumerate(attention.heads):
                        roles.setdefault(f"head.{layer}.{head}", {})[score] = float(grid[i, j])
        out[name] = {
            "readings": readings,
            "scale": scale(readings),
            "threshold": 0.1 * scale(readings),
            "appears": at,
            "present_from_start": bool(readings) and readings[0].present and at is None and readings[-1].present
            and all(r.present for r in readings),
            "shifts": shifts(readings),
            "rising": rises,
            "rising_heads": [c for c, _ in rises if c.startswith("head.")],
            "roles": roles,
            "roles_key": key,
        }
    return out


def watch_summary(run: "Run") -> dict[str, Any]:
    """What ``sleuth watch --json`` prints, rebuilt from the stored run (see the README)."""
    record = run.investigation()
    if not record or record.get("kind") != "watch":
        raise UserInputError(f"run {run.id} is not a watch run")
    analysis = read_watch(run, record)
    behaviours = {}
    for name, a in analysis.items():
        readings = a["readings"]
        at = a["appears"]
        behaviours[name] = {
            "readings": [{"checkpoint": r.checkpoint, "step": r.step, "logit_diff": r.logit_diff, "ci": list(r.ci),
                          "prefers_answer": r.prefers_answer, "accuracy": r.accuracy, "gap": r.gap,
                          "present": r.present} for r in readings],
            "appears": None if at is None else {"index": at, "checkpoint": readings[at].checkpoint,
                                                "step": readings[at].step},
            "present_throughout": all(r.present for r in readings),
            "scale": a["scale"], "threshold": a["threshold"],
            "shifts": [{"checkpoint": s.checkpoint, "previous": s.previous, "step": readings[s.index].step,
                        "gained": [{"component": c, "change": d} for c, d in s.gained],
                        "lost": [{"component": c, "change": d} for c, d in s.lost]} for s in a["shifts"]],
            "rising": [{"component": c, "gain": g, "roles": a["roles"].get(c)} for c, g in a["rising"]],
            "rising_heads": a["rising_heads"],
        }
    report = run.folder / "reports"
    return {"run_id": run.id, "status": run.record.status,
            "checkpoints": [{"label": p["label"], "step": p.get("step"), "path": p.get("path"),
                             "weights_hash": p.get("weights_hash")} for p in record["checkpoints"]],
            "behaviours": behaviours,
            "report": {"md": str(report / "report.md") if (report / "report.md").exists() else None,
                       "html": str(report / "report.html") if (report / "report.html").exists() else None},
            "cost": {"experiments": run.record.cost.experiments, "forward_passes": run.record.cost.forward_passes,
                     "wall_s": round(run.record.cost.wall_s, 2)}}


__all__ = ["expand_checkpoints", "read_watch", "watch", "watch_summary"]
