"""The investigation graph (LangGraph): planner → workers (parallel, via ``Send``) → critic → …
→ reporter, checkpointed in SQLite in the run folder so a killed run resumes where it stopped.

`build_graph(brain, toolbox, checkpointer)` returns the compiled graph; nothing compiles at
import. The state holds only JSON-able data (the behaviour, the jobs of the current round,
their outcomes, claims and verdicts); the model and the run store live in the `Toolbox` the
nodes close over, so a resumed process reloads them. Every experiment goes through the
workspace's cache (``run.experiment``): a node re-run after a crash pays nothing twice.

Run it with ``await graph.ainvoke(...)`` (see `agents.investigate`): the worker node is async
so that experiments run on the caller's thread.

The brain decides (`HeuristicBrain.plan`); trusted code executes (`Toolbox.do`): a job is a
typed dict naming one of a fixed set of steps, never code.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypedDict

from agents.behavior import BehaviorSpec
from agents.critic import ClaimTest, SetClaim, examine_claim, holm_adjust, verdict_for
from agents.localize import grow_circuit, rank_components
from memory.records import Claim
from tools.experiments import BehaviourExperimentSpec, PromptPairs

if TYPE_CHECKING:
    from memory.runstore import Run
    from tools.loading import LoadedModel

RECURSION_LIMIT = 64
Phase = Literal["confirm", "rank", "circuit", "critic", "report"]


class InvestigationState(TypedDict, total=False):
    run_id: str
    behavior: dict[str, Any]
    phase: Phase
    jobs: list[dict[str, Any]]
    outcomes: Annotated[list[dict[str, Any]], operator.add]
    claims: list[dict[str, Any]]
    verdicts: dict[str, str]
    status: str
    answer: str
    stopped_in: str


@dataclass
class Toolbox:
    """What the nodes act with: the model, the run (store + cache), the behaviour's prompts."""

    model: "LoadedModel"
    run: "Run"
    behavior: BehaviorSpec
    max_experiments: int | None = None
    max_seconds: float | None = None
    """Wall-time budget over the whole run (earlier processes' time counts, from ``run.json``)."""
    started: float = field(default_factory=time.monotonic)

    @cached_property
    def prompts(self) -> PromptPairs:
        """Discovery prompts: the task's train split, or the user's own prompts (built once: a
        declared behaviour generates and tokenises them here)."""
        return self.behavior.to_prompt_pairs(split="train", **self._generation())

    @cached_property
    def fresh_prompts(self) -> PromptPairs:
        """Prompts never used for discovery: the held-out split with another seed, when the
        behaviour is a task; the user's own prompts otherwise (the report says so)."""
        if self.behavior.task is not None:
            return self.behavior.to_prompt_pairs(split="heldout", seed=self.behavior.seed + 1000,
                                                 **self._generation())
        return self.prompts

    def _generation(self) -> dict[str, Any]:
        """Generator and tokenizer for a behaviour the model folder declares (the trigger)."""
        from tools.tasks.declared import DECLARED_BEHAVIOURS, declared_tasks

        if self.behavior.task not in DECLARED_BEHAVIOURS:
            return {}
        generator = declared_tasks(self.model.source).get(self.behavior.task)
        return {"generator": generator, "tokenizer": self.model.tokenizer}

    def elapsed(self) -> float:
        return self.run.record.cost.wall_s + time.monotonic() - self.started

    def out_of_budget(self) -> bool:
        if self.max_experiments is not None and self.run.record.cost.experiments >= self.max_experiments:
            return True
        return self.max_seconds is not None and self.elapsed() >= self.max_seconds

    def do(self, job: dict[str, Any]) -> dict[str, Any]:
        """Execute one job (a step of the fixed vocabulary) and return its outcome."""
        step = job["step"]
        if step == "confirm":
            result = self.run.experiment(self.model, BehaviourExperimentSpec(prompts=self.prompts))
            return {"step": step, "accuracy": result.accuracy, "logit_diff": result.logit_diff,
                    "evidence": [result.key]}
        if step == "rank":
            ranking = rank_components(self.run, self.model, self.prompts)
            return {"step": step, "order": ranking.order, "effects": dict(ranking.effects),
                    "method": ranking.method, "evidence": list(ranking.evidence)}
        if step == "circuit":
            method = "resample" if self.prompts.has_corrupted else "mean"
            found = grow_circuit(self.run, self.model, self.prompts, job["order"], target=job["target"],
                                 method=method, max_size=job.get("max_size"))
            return {"step": step, **found.model_dump(mode="json")}
        if step == "examine":
            claim = SetClaim.model_validate(job["claim"])
            test = examine_claim(self.run, self.model, claim, self.fresh_prompts, seed=job.get("seed", 0))
            return {"step": step, "test": test.model_dump(mode="json")}
        raise ValueError(f"unknown step {step!r}")  # the brain only emits the steps above


class HeuristicBrain:
    """The offline playbook: confirm → rank → grow a circuit → claims → critic → report."""

    name = "heuristic"

    def __init__(self, *, target: float = 0.8, max_circuit: int = 24) -> None:
        self.target = target
        self.max_circuit = max_circuit

    def plan(self, state: InvestigationState) -> dict[str, Any]:
        """The next phase and its jobs, from what the outcomes so far say."""
        last = {o["step"]: o for o in state.get("outcomes", [])}
        phase = state.get("phase", "confirm")
        if phase == "confirm" and "confirm" not in last:
            return {"phase": "confirm", "jobs": [{"step": "confirm"}]}
        if phase == "confirm":
            shown = last["confirm"]["logit_diff"] > 0 and last["confirm"]["accuracy"] >= 0.5
            if not shown:
                return {"phase": "report", "jobs": [], "answer": (
                    f"The model does not show the behaviour (accuracy {last['confirm']['accuracy']:.2f}, "
                    f"logit difference {last['confirm']['logit_diff']:.2f}); there is no mechanism to localise.")}
            return {"phase": "rank", "jobs": [{"step": "rank"}]}
        if phase == "rank":
            return {"phase": "circuit", "jobs": [{"step": "circuit", "order": last["rank"]["order"],
                                                  "target": self.target, "max_size": self.max_circuit}]}
        if phase == "circuit":
            claims = self.claims(state, last["circuit"], last["rank"])
            return {"phase": "critic", "claims": claims,
                    "jobs": [{"step": "examine", "claim": c["set_claim"], "seed": i} for i, c in enumerate(claims)]}
        return {"phase": "report", "jobs": []}

    def claims(self, state: InvestigationState, circuit: dict, rank: dict) -> list[dict[str, Any]]:
        """Pre-registered predictions about what was found (checked by the critic on fresh prompts)."""
        components = list(circuit["components"])
        method = circuit["method"]
        out = []
        if circuit["reached"]:
            out.append({"id": "circuit-faithful", "statement": (
                f"The circuit {', '.join(components)} alone keeps at least {self.target:.0%} of the "
                f"logit difference ({method} ablation of every other head and MLP)."),
                "set_claim": {"id": "circuit-faithful", "components": components, "kind": "faithfulness",
                              "threshold": self.target, "method": method}})
        out.append({"id": "circuit-necessary", "statement": (
            f"Ablating {', '.join(components)} removes at least half of the logit difference."),
            "set_claim": {"id": "circuit-necessary", "components": components, "kind": "necessity",
                          "threshold": 0.5, "method": method}})
        top = rank["order"][0]
        out.append({"id": "top-component", "statement": (
            f"{top} (largest patching effect, {rank['effects'][top]:.2f}) is necessary: ablating it alone "
            "removes at least a quarter of the logit difference."),
            "set_claim": {"id": "top-component", "components": [top], "kind": "necessity",
                          "threshold": 0.25, "method": method}})
        return out


def build_graph(brain: HeuristicBrain, toolbox: Toolbox, checkpointer: Any):
    """Compile the investigation graph for one run."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    def planner(state: InvestigationState) -> dict[str, Any]:
        if toolbox.out_of_budget() and state.get("phase") != "report":
            return {"phase": "report", "jobs": [], "status": "budget_exhausted",
                    "stopped_in": state.get("phase", "confirm")}
        update = brain.plan(state)
        return {k: v for k, v in update.items() if k in ("phase", "jobs", "claims", "answer")}

    def route(state: InvestigationState):
        if state.get("phase") == "report" or not state.get("jobs"):
            return "reporter"
        return [Send("worker", {"job": job}) for job in state["jobs"]]

    async def worker(payload: dict[str, Any]) -> dict[str, Any]:
        # async on purpose: LangGraph runs sync nodes on pool threads, but a model traced by
        # nnsight must run on the thread that loaded it (its greenlets cannot switch across
        # threads); an async node runs on the event loop's thread, the caller's. Workers of one
        # round therefore run one after another, which is what a CPU would do anyway.
        return {"outcomes": [toolbox.do(payload["job"])]}

    def critic(state: InvestigationState) -> dict[str, Any]:
        tests = [o["test"] for o in state.get("outcomes", []) if o["step"] == "examine"]
        if not tests:
            return {}
        adjusted = holm_adjust([ClaimTest.model_validate(t) for t in tests])
        verdicts = {t.claim.id: verdict_for(t) for t in adjusted}
        by_id = {c["id"]: c for c in state.get("claims", [])}
        for t in adjusted:
            c = by_id[t.claim.id]
            toolbox.run.add_claim(Claim(
                id=t.claim.id, run_id=toolbox.run.id, statement=c["statement"], components=list(t.claim.components),
                prediction=f"{t.claim.kind} >= {t.claim.threshold:g} ({t.claim.method} ablation, fresh prompts)",
                verdict=verdicts[t.claim.id], effect=t.replication.estimate, ci_low=t.replication.low,
                ci_high=t.replication.high, n=t.n, evidence=list(t.evidence), model_id=toolbox.model.model_id,
                weights_hash=toolbox.model.weights_hash, task=toolbox.behavior.task,
                details={"second_ablation": t.second_ablation.model_dump(), "controls": list(t.controls),
                         "p_value": t.p_value, "adjusted_p": t.adjusted_p}))
        return {"verdicts": verdicts, "phase": "report"}

    def reporter(state: InvestigationState) -> dict[str, Any]:
        status = state.get("status") or "answered"
        answer = state.get("answer") or _answer(state)
        if status == "budget_exhausted":
            answer = (f"The budget ran out during the {state.get('stopped_in')} phase; what is below is what "
                      f"was established by then. {answer}")
        toolbox.run.write_report("report.md", markdown_report(toolbox, state, answer, status))
        toolbox.run.update(status=status, answer=answer, cost={"wall_s": toolbox.elapsed()})
        return {"status": status, "answer": answer}

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


def _answer(state: InvestigationState) -> str:
    verdicts = state.get("verdicts", {})
    supported = [c for c in state.get("claims", []) if verdicts.get(c["id"]) == "supported"]
    if not supported:
        return "No claim survived the critic's tests; see the claims table for what was measured."
    return " ".join(c["statement"] for c in supported)


def markdown_report(toolbox: Toolbox, state: InvestigationState, answer: str, status: str) -> str:
    """A plain Markdown report: the answer, every claim with verdict, numbers and evidence keys."""
    run = toolbox.run
    lines = [f"# {run.record.question}", "", f"**Status:** {status}  ", f"**Model:** {toolbox.model.model_id} "
             f"(weights {toolbox.model.weights_hash[:12]})", "", "## Answer", "", answer, "", "## Claims", ""]
    claims = run.claims()
    if not claims:
        lines.append("No claims were made.")
    for c in claims:
        lines.append(f"- **{c.verdict}** — {c.statement} Prediction: {c.prediction}. Measured {c.effect:.3f} "
                     f"(95% CI {c.ci_low:.3f}–{c.ci_high:.3f}, n={c.n}); other ablation "
                     f"{c.details['second_ablation']['estimate']:.3f}; random sets of equal size "
                     f"{', '.join(f'{x:.3f}' for x in c.details['controls'])}; Holm-adjusted p "
                     f"{c.details['adjusted_p']:.3g}. Evidence: {', '.join(k[:12] for k in c.evidence)}.")
    if toolbox.behavior.derived_corrupted or toolbox.behavior.notes:
        lines += ["", "## How the question was read", ""] + [f"- {n}" for n in toolbox.behavior.notes]
    b = toolbox.behavior
    if b.task is not None:
        lines += ["", f"Components were found on the generator's train split (seed {b.seed}, n={b.n}); "
                  f"the critic tested every claim on its held-out split with seed {b.seed + 1000}."]
    else:
        lines += ["", "Replication used the user's own prompts (no generator for fresh ones)."]
    cost = run.record.cost
    lines += ["", "## Cost", "", f"{cost.experiments} experiments ({cost.cache_hits} from the cache, "
              f"{cost.cache_misses} run)."]
    return "\n".join(lines) + "\n"
