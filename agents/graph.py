"""The investigation graph (LangGraph): planner → workers (parallel, via ``Send``) → critic →
planner … → reporter, checkpointed in SQLite in the run folder so a killed run resumes where it
stopped.

`build_graph(brain, toolbox, checkpointer)` returns the compiled graph; nothing compiles at
import. The state holds only JSON-able data (the behaviour, the jobs of the current round,
their outcomes, claims and verdicts); the model, the run store and the memory live in the
`agents.steps.Toolbox` the nodes close over, so a resumed process reloads them. Every
experiment goes through the workspace's cache (``run.experiment``): a node re-run after a
crash pays nothing twice.

Run it with ``await graph.ainvoke(...)`` (see `agents.investigate`): the worker node is async
so that experiments run on the caller's thread.

The brain decides (``brain.plan``); trusted code executes (`Toolbox.do`): a job is a typed
dict naming one step of a fixed vocabulary, validated before it runs, never code. A job an LLM
wrote that trusted code refuses (it names a head the model does not have, say) is skipped and
listed in the report; the run goes on. The same refusal of a job the playbook wrote is a bug
and ends the run.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from agents.critic import ClaimTest, holm_adjust, verdict_for
from agents.report.answer import compose_answer, ordered
from memory.records import Claim
from tools.errors import UserInputError

if TYPE_CHECKING:
    from agents.steps import Toolbox

RECURSION_LIMIT = 200
"""Supersteps one investigation may take (the heuristic playbook takes about 25-40)."""
MAX_ROUNDS = RECURSION_LIMIT // 3 - 4
"""Planning rounds (planner → workers → critic) before the run stops as out of budget: a brain
that never stops asking for experiments ends here if no other budget ends it first."""


def _replace(old: Any, new: Any) -> Any:
    return new


class InvestigationState(TypedDict):
    """Graph state. Every key has an explicit reducer (TypedDicts ignore defaults)."""

    run_id: Annotated[str, _replace]
    behavior: Annotated[dict[str, Any], _replace]
    discovery: Annotated[dict[str, Any], _replace]
    """The discovery prompt set (`tools.experiments.PromptPairs` as JSON)."""
    phase: Annotated[str, _replace]
    jobs: Annotated[list[dict[str, Any]], _replace]
    authored: Annotated[dict[str, str], _replace]
    """Which of ``jobs`` an LLM wrote: their places in the list (as text), each with the LLM's role."""
    outcomes: Annotated[list[dict[str, Any]], operator.add]
    claims: Annotated[list[dict[str, Any]], _replace]
    """Proposed claims (`agents.claims.ProposedClaim` as JSON), in the order they were made."""
    verdicts: Annotated[dict[str, str], _replace]
    hypotheses: Annotated[list[str], operator.add]
    prior: Annotated[list[dict[str, Any]], _replace]
    """What memory knew before the run (findings about this model and behaviour)."""
    status: Annotated[str, _replace]
    answer: Annotated[str, _replace]
    answer_source: Annotated[str, _replace]
    """Where the answer comes from: ``claims`` (composed from them), ``no_behaviour`` (the model
    does not show the behaviour), ``narrative`` (an LLM's, numbers filled from the claims)."""
    stopped_in: Annotated[str, _replace]
    rounds: Annotated[int, operator.add]
    budget_left: Annotated[str, _replace]
    llm_events: Annotated[list[dict[str, Any]], operator.add]
    """What failed in an LLM brain's roles and what was done instead (the report lists them)."""


def build_graph(brain: Any, toolbox: "Toolbox", checkpointer: Any):
    """Compile the investigation graph for one run."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    def planner(state: InvestigationState) -> dict[str, Any]:
        update: dict[str, Any] = {}
        if not state.get("discovery"):
            update["prior"] = toolbox.recall()
            update["discovery"] = toolbox.prompts.model_dump(mode="json")
        spent = toolbox.out_of_budget()
        if not spent and (state.get("rounds") or 0) >= MAX_ROUNDS:
            spent = f"{MAX_ROUNDS} planning rounds"
        if spent and state.get("phase") != "report":
            toolbox.progress.update(phase="report", note=f"budget spent: {spent}")
            return {**update, "phase": "report", "jobs": [], "status": "budget_exhausted",
                    "stopped_in": f"{state.get('phase') or 'confirm'} phase ({spent})"}
        update["rounds"] = 1
        update["budget_left"] = toolbox.budget_left()
        plan = brain.plan({**state, **update})
        update.update({k: v for k, v in plan.items() if k in ("phase", "jobs", "claims", "answer", "answer_source",
                                                               "hypotheses", "status", "stopped_in", "llm_events",
                                                               "authored")})
        if "jobs" not in update:
            update["jobs"] = []
        update.setdefault("authored", {})
        toolbox.progress.update(phase=update.get("phase", state.get("phase")), queued=len(update["jobs"]),
                                hypothesis=(update.get("hypotheses") or state.get("hypotheses") or [None])[-1])
        return update

    def route(state: InvestigationState):
        if state.get("phase") == "report" or not state.get("jobs"):
            return "reporter"
        authored = state.get("authored") or {}
        return [Send("worker", {"job": dispatched(job, state.get("claims") or []), "author": authored.get(str(i))})
                for i, job in enumerate(state["jobs"])]

    async def worker(payload: dict[str, Any]) -> dict[str, Any]:
        # async on purpose: LangGraph runs sync nodes on pool threads, but a model traced by
        # nnsight must run on the thread that loaded it (its greenlets cannot switch across
        # threads); an async node runs on the event loop's thread, the caller's. Workers of one
        # round therefore run one after another, which is what a CPU would do anyway.
        try:
            outcome = toolbox.do(payload["job"])
        except UserInputError as error:
            if not payload.get("author"):
                raise
            toolbox.progress.update(queued_done=1)
            return {"llm_events": [{"role": payload["author"], "fallback": "job skipped",
                                    "error": f"{payload['job'].get('step')} job refused: {error}"}]}
        toolbox.progress.update(queued_done=1)
        return {"outcomes": [outcome]}

    def critic(state: InvestigationState) -> dict[str, Any]:
        examined = [o for o in state.get("outcomes", []) if o["step"] == "examine"]
        toolbox.run.write_investigation(investigation_record(toolbox, state))
        if not examined:
            return {}
        seeds = {o["test"]["claim"]["id"]: o.get("seed") for o in examined}
        adjusted = holm_adjust([ClaimTest.model_validate(o["test"]) for o in examined])
        verdicts = {t.claim.id: verdict_for(t) for t in adjusted}
        by_id = {c["claim"]["id"]: c for c in state.get("claims", [])}
        for t in adjusted:
            proposed = by_id[t.claim.id]
            claim = Claim(
                id=t.claim.id, run_id=toolbox.run.id, statement=proposed["statement"],
                components=list(t.claim.components), prediction=_prediction(t),
                verdict=verdicts[t.claim.id], effect=t.replication.estimate, ci_low=t.replication.low,
                ci_high=t.replication.high, n=t.n, evidence=list(t.evidence), model_id=toolbox.model.model_id,
                weights_hash=toolbox.model.weights_hash, task=toolbox.behavior.task,
                details={"kind": t.claim.kind, "role": proposed.get("role", ""), "threshold": t.claim.threshold,
                         "second_method": t.second_method, "second_ablation": t.second_ablation.model_dump(),
                         "control_kind": t.control_kind, "controls": list(t.controls),
                         "p_value": t.p_value, "adjusted_p": t.adjusted_p, "seed": seeds.get(t.claim.id),
                         "claim": t.claim.model_dump(mode="json")})  # exactly what was tested
            toolbox.run.add_claim(claim)
            toolbox.remember(claim)
        toolbox.progress.update(note=f"critic: {sum(v == 'supported' for v in verdicts.values())} of "
                                     f"{len(verdicts)} claims supported")
        return {"verdicts": verdicts}

    def reporter(state: InvestigationState) -> dict[str, Any]:
        status = state.get("status") or "answered"
        events = list(state.get("llm_events") or [])
        claims = toolbox.run.claims()
        lens = next((o for o in reversed(state.get("outcomes") or []) if o["step"] == "lens"), {})
        answer = state.get("answer") or compose_answer(claims, lens.get("tokens"))
        source = state.get("answer_source") or ("text" if state.get("answer") else "claims")
        narrative = None
        write = getattr(brain, "write", None)
        if write is not None and claims and not state.get("answer"):
            if status == "budget_exhausted":
                events.append({"role": "reporter", "error": "the budget was spent before the narrative",
                               "fallback": "heuristic"})
            else:
                evidence = {k for c in claims for k in c.evidence}
                narrative, failed = write(toolbox.run.record.question, ordered(claims), evidence)
                events += failed
                if narrative is not None:
                    from agents.narrative import fill_narrative

                    answer, source = fill_narrative(narrative, claims), "narrative"
        if status == "answered" and any(e.get("fallback") == "heuristic" for e in events):
            status = "degraded"
        if status == "budget_exhausted":
            answer = (f"The budget ran out during the {state.get('stopped_in')}; what is below is what "
                      f"was established by then. {answer}")
        fell_back = [e for e in events if e.get("fallback") == "heuristic"]
        error = None
        if fell_back:
            roles = sorted({e["role"] for e in fell_back})
            error = (f"the LLM brain failed in {len(fell_back)} step{'s' * (len(fell_back) > 1)} of "
                     f"{len(roles)} role{'s' * (len(roles) > 1)} ({', '.join(roles)}); the heuristic brain did "
                     f"them instead. First failure: {fell_back[0]['error'][:200]}")
        toolbox.run.update(status=status, answer=answer, error=error, cost={"wall_s": toolbox.elapsed()})
        record = investigation_record(toolbox, {**state, "llm_events": events}, answer={
            "source": source, "text": answer if source == "text" else None,
            "narrative": narrative.model_dump(mode="json") if narrative is not None else None})
        toolbox.run.write_investigation(record)
        from agents.report.render import write_reports

        write_reports(toolbox.run)
        toolbox.progress.update(phase="done", note=status)
        return {"status": status, "answer": answer, "llm_events": events[len(state.get("llm_events") or []):]}

    graph = StateGraph(InvestigationState)
    graph.add_node("planner", planner)
    graph.add_node("worker", worker)
    graph.add_node("critic", critic)
    graph.add_node("reporter", reporter)
    graph.add_edge(START, "planner")
    graph.add_conditional_edges("planner", route, ["worker", "reporter"])
    graph.add_edge("worker", "critic")
    graph.add_edge("critic", "planner")
    graph.add_edge("reporter", END)
    return graph.compile(checkpointer=checkpointer)


def dispatched(job: dict[str, Any], claims: list[dict[str, Any]]) -> dict[str, Any]:
    """The job as a worker gets it: an ``examine`` job carries every component the run's
    proposed claims name (the critic keeps them out of its controls), set here from the claims
    whatever the brain wrote into the job."""
    if job.get("step") != "examine":
        return job
    named = sorted({c for proposed in claims for c in (proposed.get("claim") or {}).get("components") or ()})
    return {**job, "named": named}


def _prediction(test: ClaimTest) -> str:
    from agents.claims import describe_prediction

    return describe_prediction(test.claim)


def investigation_record(toolbox: "Toolbox", state: dict[str, Any], *, answer: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
    """What ``investigation.json`` keeps: every step's outcome (with its evidence keys), what
    memory knew, LLM events, and how the prompts were drawn — what a report is rebuilt from."""
    from agents.report.build import describe_discovery, prompt_examples

    examples = prompt_examples(toolbox.model.tokenizer, {"discovery": toolbox.prompts, "fresh": toolbox.fresh_prompts})
    return {"outcomes": list(state.get("outcomes") or []), "prior": list(state.get("prior") or []),
            "llm_events": list(state.get("llm_events") or []), "stopped_in": state.get("stopped_in"),
            "hypotheses": list(state.get("hypotheses") or []), "answer": answer,
            "context": {"discovery": describe_discovery(toolbox), "fresh": toolbox.fresh_kind,
                        "positions": list(toolbox.positions or ()), "family": toolbox.model.adapter.family,
                        "discovery_prompts": toolbox.prompts.model_dump(mode="json"),
                        "fresh_prompts": toolbox.fresh_prompts.model_dump(mode="json"), "examples": examples}}
