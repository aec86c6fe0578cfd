"""Start, resume and finish an investigation: the glue between the CLI, memory and the graph.

A run's settings (the model it was asked about, the behaviour as intake read it, the budget)
are in ``run.json`` before the graph starts, and the graph's checkpoints are in
``runs/<id>/checkpoints.sqlite`` (written synchronously at every step), so `resume` needs only
the run id: it reloads the model, rebuilds the graph and continues from the last checkpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents.behavior import BehaviorSpec, load_spec_file
from agents.budget import parse_duration
from agents.graph import RECURSION_LIMIT, HeuristicBrain, Toolbox, build_graph
from agents.intake import intake
from memory.session import Memory
from tools.tasks.declared import declared_tasks
from tools.errors import UserInputError


def ask(question: str, *, model: str, spec_file: str | None = None, workspace: str | None = None,
        chroma_url: str | None = None, seed: int = 0, n: int = 64,
        max_experiments: int | None = None, max_time: str | None = None,
        lock_timeout: float | None = None) -> dict[str, Any]:
    """Run a new investigation to the end; return the summary ``sleuth ask --json`` prints."""
    from tools.loading import load_model

    if max_experiments is not None and max_experiments < 1:
        raise UserInputError(f"--max-experiments must be at least 1, not {max_experiments}")
    max_seconds = parse_duration(max_time) if max_time is not None else None
    if not question.strip() and spec_file is None:
        raise UserInputError("ask needs a question (or --spec FILE)")
    with Memory.open(workspace, writer=True, chroma_url=chroma_url, lock_timeout=lock_timeout) as memory:
        loaded = load_model(model)
        context = getattr(loaded.hf_model.config, "max_position_embeddings", None)
        declared = declared_tasks(loaded.source)
        if spec_file is not None:
            behavior = load_spec_file(spec_file)
            behavior.check(loaded.tokenizer, context, generator=declared.get(behavior.task or ""))
        else:
            behavior = intake(question, tokenizer=loaded.tokenizer, n=n, seed=seed, max_length=context,
                              declared=declared)
        run = memory.runs.create(question or behavior.question, loaded.model_id, weights_hash=loaded.weights_hash,
                                 settings={"model": model, "behavior": behavior.model_dump(mode="json"),
                                           "max_experiments": max_experiments, "max_seconds": max_seconds,
                                           "brain": HeuristicBrain.name})
        run.update(status="running")
        return _drive(memory, run, loaded, behavior, {"run_id": run.id, "behavior": behavior.model_dump(mode="json"),
                                                      "phase": "confirm", "outcomes": []})


def resume(run_id: str, *, workspace: str | None = None, chroma_url: str | None = None,
           lock_timeout: float | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint (a finished run just returns its summary)."""
    from tools.loading import load_model

    with Memory.open(workspace, writer=True, chroma_url=chroma_url, lock_timeout=lock_timeout) as memory:
        run = memory.runs.open(run_id)
        settings = run.record.settings
        if "behavior" not in settings:
            raise UserInputError(f"run {run_id} was not started by `sleuth ask`; nothing to resume")
        loaded = load_model(settings["model"])
        if loaded.weights_hash != run.record.weights_hash:
            raise UserInputError(f"the weights of {settings['model']!r} changed since run {run_id} started; "
                                 "start a new run instead")
        behavior = BehaviorSpec.model_validate(settings["behavior"])
        if run.record.status in ("answered", "budget_exhausted"):
            return summary(run)
        run.update(status="running")
        return _drive(memory, run, loaded, behavior, None)


def _drive(memory: Memory, run, loaded, behavior: BehaviorSpec, state: dict[str, Any] | None) -> dict[str, Any]:
    toolbox = Toolbox(model=loaded, run=run, behavior=behavior,
                      max_experiments=run.record.settings.get("max_experiments"),
                      max_seconds=run.record.settings.get("max_seconds"))
    try:
        asyncio.run(_invoke(toolbox, run, state))
    except KeyboardInterrupt:
        run.update(status="interrupted")
        raise
    for claim in run.claims():
        memory.vectors.add_claim(claim)
    memory.vectors.add_question(run.record.question, run_id=run.id, model_id=loaded.model_id,
                                answer=run.record.answer, status=run.record.status)
    return summary(run)


async def _invoke(toolbox: Toolbox, run, state: dict[str, Any] | None) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(str(run.folder / "checkpoints.sqlite")) as saver:
        graph = build_graph(HeuristicBrain(), toolbox, saver)
        config = {"configurable": {"thread_id": run.id}, "recursion_limit": RECURSION_LIMIT}
        await graph.ainvoke(state, config, durability="sync")


def report_text(run_id: str, *, workspace: str | None = None) -> str:
    """The Markdown report of a finished run (``sleuth report``); reads only."""
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    run = RunStore(Workspace.open(workspace)).open(run_id)
    path = run.folder / "reports" / "report.md"
    if not path.exists():
        raise UserInputError(f"run {run_id} has no report yet (status {run.record.status}); "
                             f"`sleuth resume {run_id}` finishes it")
    return path.read_text(encoding="utf-8")


def summary(run) -> dict[str, Any]:
    """What ``sleuth ask --json`` ends with."""
    r = run.record
    report = run.folder / "reports" / "report.md"
    return {"run_id": r.id, "status": r.status, "answer": r.answer,
            "claims": [{"statement": c.statement, "components": c.components, "verdict": c.verdict,
                        "effect": c.effect, "ci": [c.ci_low, c.ci_high], "n": c.n} for c in run.claims()],
            "report": {"md": str(report) if report.exists() else None, "html": None},
            "cost": {"experiments": r.cost.experiments, "forward_passes": r.cost.forward_passes,
                     "wall_s": round(r.cost.wall_s, 2), "tokens": r.cost.tokens_in + r.cost.tokens_out,
                     "dollars": r.cost.dollars}}


__all__ = ["ask", "resume", "summary"]
