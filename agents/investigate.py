"""Start, resume and finish an investigation: the glue between the CLI, memory and the graph.

A run's settings (the model it was asked about, the behaviour as intake read it, the brain,
the budget) are in ``run.json`` before the graph starts, and the graph's checkpoints are in
``runs/<id>/checkpoints.sqlite`` (written synchronously at every step), so `resume` needs only
the run id: it reloads the model, rebuilds the graph and continues from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from agents.behavior import BehaviorSpec, default_prompt_count, load_spec_file, with_prompt_count
from agents.budget import Budget
from agents.graph import RECURSION_LIMIT, build_graph
from agents.intake import intake
from agents.playbook import HeuristicBrain
from agents.progress import Progress
from agents.steps import Toolbox
from memory.session import Memory
from tools.errors import Interrupted, UserInputError, stored_reason
from tools.tasks import check_prompt_count, check_seed
from tools.tasks.declared import declared_tasks

if TYPE_CHECKING:
    from agents.llm.settings import LLMSettings
    from tools.loading import LoadedModel

BRAINS = ("heuristic", "openai")


def ask(question: str, *, model: str, spec_file: str | None = None, workspace: str | None = None,
        chroma_url: str | None = None, seed: int = 0, n: int | None = None, budget: Budget | None = None,
        brain: str = "heuristic", llm: "LLMSettings | None" = None, remote: bool = False,
        lock_timeout: float | None = None, progress: Progress | None = None,
        loaded: "LoadedModel | None" = None) -> dict[str, Any]:
    """Run a new investigation to the end; return the summary ``sleuth ask --json`` prints.

    ``loaded``: the model ``model`` names, already loaded (the eval harness reuses one model
    across questions and reads its forward-pass counter); None loads it here."""
    from tools.loading import load_model

    budget = budget or Budget()
    if brain not in BRAINS:
        raise UserInputError(f"unknown brain {brain!r}; use one of {', '.join(BRAINS)}")
    thinker = make_brain(brain, llm)
    events: list[dict[str, Any]] = []
    check_prompt_count(n)
    check_seed(seed)
    if not question.strip() and spec_file is None:
        raise UserInputError("ask needs a question (or --spec FILE)")
    behavior = load_spec_file(spec_file) if spec_file is not None else None
    # everything that can be wrong with the question is found before the workspace is opened
    loaded = loaded if loaded is not None else _load(load_model, model, remote)
    context = getattr(loaded.hf_model.config, "max_position_embeddings", None)
    declared = declared_tasks(loaded.source)
    prompts_n = n or default_prompt_count(loaded.hf_model)
    if behavior is not None:
        behavior = with_prompt_count(behavior, n, prompts_n)
        behavior.check(loaded.tokenizer, context, generator=declared.get(behavior.task or ""))
    elif hasattr(thinker, "intake"):
        behavior, events = thinker.intake(question, tokenizer=loaded.tokenizer, n=prompts_n, seed=seed,
                                          max_length=context, declared=declared)
    else:
        behavior = intake(question, tokenizer=loaded.tokenizer, n=prompts_n, seed=seed, max_length=context,
                          declared=declared)
    if behavior.task is None and not behavior.corrupted:
        reason = next((note for note in behavior.notes if note.startswith("no corrupted prompt")),
                      "no corrupted prompt")
        raise UserInputError(f"{reason.split('; give')[0]}; the experiments compare clean and corrupted runs, "
                             "so quote one (corrupted: \"...\") or give one in a spec file")
    if behavior.task is None:
        from agents.steps import draw_user_prompt_sets

        draw_user_prompt_sets(behavior, loaded.tokenizer)  # a prompt the critic cannot re-test fails here
    with Memory.open(workspace, writer=True, chroma_url=chroma_url, lock_timeout=lock_timeout) as memory:
        run = memory.runs.create(question or behavior.question, loaded.model_id, weights_hash=loaded.weights_hash,
                                 settings={"model": model, "behavior": behavior.model_dump(mode="json"),
                                           "budget": budget.model_dump(mode="json"), "brain": brain,
                                           "llm": _llm_record(llm) if brain == "openai" else None,
                                           "remote": remote})
        run.update(status="running")
        state = {"run_id": run.id, "behavior": behavior.model_dump(mode="json"), "phase": "confirm",
                 "outcomes": [], "llm_events": events}
        return _drive(memory, run, loaded, behavior, state, progress, thinker)


def resume(run_id: str, *, workspace: str | None = None, chroma_url: str | None = None,
           lock_timeout: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint (a finished run just returns its summary);
    ``latest``: the workspace's newest run."""
    from tools.loading import load_model

    with Memory.open(workspace, writer=True, chroma_url=chroma_url, lock_timeout=lock_timeout,
                     create=False) as memory:  # a run to resume lives in a workspace that exists
        run = memory.runs.open(_latest_id(memory.runs) if run_id == "latest" else run_id)
        settings = run.record.settings
        if "behavior" not in settings:
            raise UserInputError(f"run {run.id} was not started by `sleuth ask`; nothing to resume")
        if run.record.status in ("answered", "budget_exhausted", "degraded"):
            return summary(run)
        loaded = _load(load_model, settings["model"], settings.get("remote", False))
        if loaded.weights_hash != run.record.weights_hash:
            raise UserInputError(f"the weights of {settings['model']!r} changed since run {run_id} started; "
                                 "start a new run instead")
        behavior = BehaviorSpec.model_validate(settings["behavior"])
        thinker = make_brain(settings.get("brain", "heuristic"), _llm_settings(settings.get("llm")))
        run.update(status="running")
        return _drive(memory, run, loaded, behavior, None, progress, thinker)


def _load(load_model, name: str, remote: bool):
    loaded = load_model(name)
    if remote:
        from tools.backends import NDIFBackend

        loaded = loaded.with_backend(NDIFBackend())
    return loaded


def make_brain(name: str, llm: "LLMSettings | None" = None):
    """The brain by name: the offline playbook, or an LLM on an OpenAI-compatible endpoint."""
    if name == "heuristic":
        return HeuristicBrain()
    from agents.llm.client import LLMClient
    from agents.llm.settings import LLMSettings
    from agents.openai_brain import OpenAIBrain

    return OpenAIBrain(LLMClient(llm or LLMSettings()))


def _llm_record(llm: "LLMSettings | None") -> dict[str, Any]:
    """What run.json keeps of the LLM settings (never the key), so a resume talks to the same one."""
    from agents.llm.settings import LLMSettings

    llm = llm or LLMSettings()
    return {"model": llm.model, "base_url": llm.base_url, "timeout_s": llm.timeout_s}


def _llm_settings(record: dict[str, Any] | None) -> "LLMSettings | None":
    if not record:
        return None
    from agents.llm.settings import LLMSettings

    return LLMSettings(**{k: v for k, v in record.items() if v is not None})


def _bind_accounting(brain, run, budget: Budget, progress: Progress) -> None:
    """LLM usage goes into run.json as it happens; the token and dollar budgets stop calls."""
    client = getattr(brain, "client", None)
    if client is None:
        return

    def count(delta) -> None:
        c = run.record.cost
        run.update(cost={"llm_calls": c.llm_calls + delta.calls, "tokens_in": c.tokens_in + delta.tokens_in,
                         "tokens_out": c.tokens_out + delta.tokens_out, "dollars": c.dollars + delta.dollars})
        while client.log:
            run.log_llm_call(client.log.pop(0))
        progress.update(llm=f"{c.tokens_in + c.tokens_out + delta.tokens_in + delta.tokens_out} tokens, "
                            f"${c.dollars + delta.dollars:.4f}")

    def limit() -> str | None:
        c = run.record.cost
        if budget.max_tokens is not None and c.tokens_in + c.tokens_out >= budget.max_tokens:
            return f"the budget of {budget.max_tokens} LLM tokens is spent"
        if budget.max_dollars is not None and c.dollars >= budget.max_dollars:
            return f"the budget of ${budget.max_dollars:g} is spent"
        return None

    pending, client.usage = client.usage, type(client.usage)()
    if pending.calls:
        count(pending)  # the intake's calls, made before the run existed (their log is flushed too)
        client.usage.add(pending)
    client.on_usage, client.limit = count, limit


def _drive(memory: Memory, run, loaded, behavior: BehaviorSpec, state: dict[str, Any] | None,
           progress: Progress | None, brain) -> dict[str, Any]:
    settings = run.record.settings
    budget = Budget.model_validate(settings.get("budget") or {})
    toolbox = Toolbox(model=loaded, run=run, behavior=behavior, max_experiments=budget.max_experiments,
                      max_seconds=budget.max_seconds, max_tokens=budget.max_tokens, max_dollars=budget.max_dollars,
                      memory=memory.vectors, progress=progress or Progress(enabled=False))
    _bind_accounting(brain, run, budget, toolbox.progress)
    try:
        with _ctrl_c_stops_at_once():
            asyncio.run(_invoke(brain, toolbox, run, state))
    except KeyboardInterrupt:
        run.update(status="interrupted", cost={"wall_s": toolbox.elapsed()})
        raise Interrupted(f"run {run.id} is stored as interrupted, `sleuth resume {run.id}` goes on from its last "
                          "checkpoint") from None
    except Exception as error:  # stored as failed, not left "running" as if a process still held it
        run.update(status="failed", error=stored_reason(error), cost={"wall_s": toolbox.elapsed()})
        raise
    finally:
        toolbox.progress.close()
    memory.vectors.add_question(run.record.question, run_id=run.id, model_id=loaded.model_id,
                                answer=run.record.answer, status=run.record.status)
    return summary(run)


@contextmanager
def _ctrl_c_stops_at_once():
    """Ctrl-C raises KeyboardInterrupt where the run is, as in any Python program. Left to itself,
    ``asyncio.run`` only cancels its task at the next await, and a worker runs its whole job (all
    of the critic's experiments, minutes on a large model) without one, so the first Ctrl-C
    seemed ignored. Stopping mid-job loses nothing: each finished experiment is in the cache and
    the graph resumes from its last checkpoint. Left alone where SIGINT is ignored or handled by
    someone else, or off the main thread."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def stop(signum, frame):  # the default handler's effect, under another name: asyncio keeps out
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


async def _invoke(brain, toolbox: Toolbox, run, state: dict[str, Any] | None) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(str(run.folder / "checkpoints.sqlite")) as saver:
        graph = build_graph(brain, toolbox, saver)
        config = {"configurable": {"thread_id": run.id}, "recursion_limit": RECURSION_LIMIT}
        await graph.ainvoke(state, config, durability="sync")


def open_run(run_id: str, *, workspace: str | None = None):
    """A run of a workspace for reading (``latest``: the newest run that loads)."""
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    store = RunStore(Workspace.open(workspace))
    return store.open(_latest_id(store) if run_id == "latest" else run_id)


def _latest_id(store) -> str:
    """The id of the workspace's newest run that loads (ids sort by their start time)."""
    ids = sorted(r.id for r in store.list() if not r.damaged)
    if not ids:
        raise UserInputError("the workspace has no runs yet; `sleuth ask` starts one")
    return ids[-1]


def report_text(run_id: str, *, workspace: str | None = None, fmt: str = "md") -> str:
    """A run's report (``sleuth report``), rebuilt from its stored results; reads only."""
    from agents.report.render import render

    run = open_run(run_id, workspace=workspace)
    if run.investigation() is None:
        stored = run.folder / "reports" / "report.md"
        if fmt == "md" and stored.exists():  # a run from before reports were rebuilt from stored results
            return stored.read_text(encoding="utf-8")
        raise UserInputError(f"run {run.id} has no report yet (status {run.record.status}); "
                             f"`sleuth resume {run.id}` finishes it")
    return render(run, fmt)


def summary(run) -> dict[str, Any]:
    """What ``sleuth ask --json`` ends with."""
    from agents.report.answer import ordered

    r = run.record
    report = run.folder / "reports" / "report.md"
    html = run.folder / "reports" / "report.html"
    out = {"run_id": r.id, "status": r.status, "answer": r.answer,
            "claims": [{"id": c.id, "statement": c.statement, "components": c.components, "verdict": c.verdict,
                        "effect": c.effect, "ci": [c.ci_low, c.ci_high], "n": c.n} for c in ordered(run.claims())],
            "report": {"md": str(report) if report.exists() else None, "html": str(html) if html.exists() else None},
            "cost": {"experiments": r.cost.experiments, "forward_passes": r.cost.forward_passes,
                     "forward_rows": r.cost.forward_rows,
                     "by_step": {step: c.model_dump() for step, c in r.cost.by_step.items()},
                     "wall_s": round(r.cost.wall_s, 2), "tokens": r.cost.tokens_in + r.cost.tokens_out,
                     "dollars": r.cost.dollars}}
    if r.error:
        out["note"] = r.error  # what went wrong (an LLM brain that fell back to the heuristic)
    return out


__all__ = ["ask", "resume", "summary"]
