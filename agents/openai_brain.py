"""The openai brain: an LLM on any OpenAI-compatible endpoint grounds questions, plans, makes
claims and writes — while trusted code keeps control of everything that runs.

Roles (prompts in ``agents/prompts/<role>/``):

- **intake** — a free-form question → `BehaviorSpec` (a named task, or prompts with answers,
  foils and counterfactuals), each checked by tokenising; a failed check goes back to the LLM.
- **planner** — at every round the LLM sees what is known (fenced as data) and the playbook's
  suggestion, and answers with tool calls: accept the suggestion, run other steps or single
  experiments of the typed vocabulary (`agents.steps`), propose claims, or finish.
- **worker** — the same tools when claims are due: interpretations of the results as claims
  with pre-registered predictions (`agents.claims`).
- **critic** — the same tools once verdicts are in: extra controls it asks for run as well; the
  mandatory controls of `agents.critic` always run and decide the verdicts.
- **reporter** — the narrative: every sentence cites claim or experiment ids, and every number
  is a placeholder filled from stored results (`agents.narrative`), never typed by the LLM.

Safety: every answer is a tool call validated by pydantic (`agents.llm.tools`); an invalid one
goes back to the LLM a bounded number of times, then that step falls back to the heuristic
brain, recorded as an event (the run then ends ``degraded`` and the report says what failed).
Examine jobs are trusted code's alone: the LLM cannot skip or alter the critic's controls.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.behavior import BehaviorSpec
from agents.claims import ProposedClaim
from agents.llm.client import LLMClient
from agents.llm.errors import LLMBudgetExhausted, LLMError
from agents.llm.fence import fence
from agents.llm.tools import Tool, call_tools
from agents.narrative import Narrative, check_narrative
from agents.playbook import HeuristicBrain
from agents.prompts import messages
from agents.steps import (
    CircuitJob,
    ConfirmJob,
    ExperimentJob,
    LensJob,
    PathsJob,
    RankJob,
    RolesJob,
    SteerJob,
)
from tools.errors import UserInputError, first_problem

PlannerJob = Annotated[Union[ConfirmJob, LensJob, RankJob, CircuitJob, RolesJob, PathsJob, SteerJob, ExperimentJob],
                       Field(discriminator="step")]
"""The steps an LLM may ask for: the vocabulary without ``examine`` (the critic's own)."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcceptSuggestion(_Args):
    hypothesis: str | None = None
    """What the LLM currently believes (shown in the progress line and the report)."""


class RunSteps(_Args):
    jobs: list[PlannerJob] = Field(min_length=1, max_length=8)
    hypothesis: str | None = None


class ProposeClaims(_Args):
    claims: list[ProposedClaim] = Field(min_length=1, max_length=8)


class Finish(_Args):
    reason: str = ""


class SubmitBehavior(_Args):
    """A behaviour: a named ``task``, or explicit ``prompts`` with ``answers``, ``foils`` and
    ``corrupted`` prompts (one each per prompt)."""

    task: str | None = None
    prompts: list[str] = []
    answers: list[str] = []
    foils: list[str] = []
    corrupted: list[str] = []
    reason: str = ""


PLAN_TOOLS = {
    "accept_suggestion": Tool(AcceptSuggestion, "Run the playbook's suggested next step (and its claims)."),
    "run_steps": Tool(RunSteps, "Run these steps or experiments of the vocabulary next."),
    "propose_claims": Tool(ProposeClaims, "Claims with pre-registered predictions, for the critic to test."),
    "finish": Tool(Finish, "Stop investigating and write the report."),
}
INTAKE_TOOLS = {"submit_behavior": Tool(SubmitBehavior, "The behaviour the question asks about.")}
WRITE_TOOLS = {"submit_narrative": Tool(Narrative, "The answer: sentences with citations and placeholders.")}


class OpenAIBrain:
    """Plans with an LLM (see the module docstring); the heuristic playbook is its fallback."""

    name = "openai"

    def __init__(self, client: LLMClient, *, fallback: HeuristicBrain | None = None) -> None:
        self.client = client
        self.fallback = fallback or HeuristicBrain()
        self.max_invalid = client.settings.max_invalid
        self.unavailable: str | None = None
        """Why the endpoint is taken to be down (after a call failed every retry): the rest of
        this process's run uses the heuristic brain instead of waiting out each retry again."""
        self._skipped: set[str] = set()

    def _down(self, role: str) -> list[dict[str, Any]] | None:
        """None when the endpoint may be called; else the events of skipping it in ``role``."""
        if self.unavailable is None:
            return None
        if role in self._skipped:
            return []
        self._skipped.add(role)
        return [{"role": role, "error": f"not called: {self.unavailable}", "fallback": "heuristic"}]

    def _note(self, error: Exception) -> None:
        from agents.llm.errors import LLMUnavailableError

        if isinstance(error, LLMUnavailableError):
            self.unavailable = f"the endpoint failed earlier in this run ({str(error)[:160]})"

    # -- intake ----------------------------------------------------------------------------------
    def intake(self, question: str, *, tokenizer, n: int, seed: int, max_length: int | None,
               declared: dict) -> tuple[BehaviorSpec, list[dict[str, Any]]]:
        """The behaviour the question asks about, and the events (a fallback, with why)."""
        from agents.intake import intake as heuristic_intake
        from tools.tasks import TASK_NAMES

        self.client.role = "intake"
        conversation = messages("intake", question=fence(question, "question"), tasks=", ".join(TASK_NAMES),
                                context=str(max_length), declared=", ".join(declared) or "none")
        problems: list[str] = []
        try:
            for _ in range(self.max_invalid + 1):
                (_, answer), = call_tools(self.client, conversation, INTAKE_TOOLS, max_invalid=self.max_invalid,
                                          errors=problems)
                try:
                    spec = self._spec(question, answer, n=n, seed=seed)
                    spec.check(tokenizer, max_length, generator=declared.get(spec.task or ""))
                    return spec, self._recovered("intake", problems)
                except UserInputError as error:  # tokenisation and shape checks go back to the LLM
                    problems.append(str(error))
                    conversation = conversation + [
                        {"role": "assistant", "content": json.dumps(answer.model_dump())},
                        {"role": "user", "content": f"That behaviour failed a check: {error}. Fix it and call "
                                                    "submit_behavior again."}]
            raise LLMError(f"the intake's behaviour failed the tokenizer checks {len(problems)} times; "
                           f"last: {problems[-1]}")
        except LLMError as error:
            self._note(error)
            spec = heuristic_intake(question, tokenizer=tokenizer, n=n, seed=seed, max_length=max_length,
                                    declared=declared)
            return spec, self._recovered("intake", []) + [event("intake", error)]

    def _recovered(self, role: str, problems: list[str]) -> list[dict[str, Any]]:
        """Events for what went wrong in a role but was recovered: retried calls, answers sent back."""
        out = [{"role": role, "error": text, "fallback": "retried"} for text in self.client.drain_incidents()]
        out += [{"role": role, "error": text, "fallback": "sent back to the LLM"} for text in problems]
        return out

    @staticmethod
    def _spec(question: str, answer: SubmitBehavior, *, n: int, seed: int) -> BehaviorSpec:
        note = f"read by the LLM intake{': ' + answer.reason if answer.reason else ''}"
        if answer.task:
            return BehaviorSpec(question=question, task=answer.task, n=n, seed=seed, notes=(note,))
        return BehaviorSpec(question=question, prompts=tuple(answer.prompts), answers=tuple(answer.answers),
                            foils=tuple(answer.foils), corrupted=tuple(answer.corrupted), n=n, seed=seed,
                            notes=(note,))

    # -- planning ----------------------------------------------------------------------------------
    def plan(self, state: dict[str, Any]) -> dict[str, Any]:
        """The next round: the LLM's choice among the tools, or the playbook's on failure."""
        suggestion = self.fallback.plan(state)
        phase = state.get("phase") or "confirm"
        if suggestion["phase"] == "report" and phase not in ("critic", "recheck"):
            return suggestion  # nothing left to decide: the behaviour is absent or the playbook is done
        role = "critic" if phase in ("critic", "recheck") else "worker" if suggestion.get("claims") else "planner"
        skipped = self._down(role)
        if skipped is not None:
            return {**suggestion, "llm_events": skipped} if skipped else suggestion
        conversation = messages(role, question=fence(state.get("behavior", {}).get("question", ""), "question"),
                                state=fence(summarise(state), "results"), suggestion=fence(_brief(suggestion),
                                                                                            "suggestion"),
                                budget=state.get("budget_left", "unknown"))
        problems: list[str] = []
        self.client.role = role
        try:
            calls = call_tools(self.client, conversation, PLAN_TOOLS, max_invalid=self.max_invalid,
                               check=self._check, errors=problems)
        except LLMBudgetExhausted as error:
            return {"phase": "report", "jobs": [], "status": "budget_exhausted",
                    "stopped_in": f"{phase} phase ({error})",
                    "llm_events": self._recovered(role, problems) + [event(role, error, fallback="stopped: budget")]}
        except LLMError as error:
            self._note(error)
            return {**suggestion, "llm_events": self._recovered(role, problems[:-1]) + [event(role, error)]}
        plan = self._combine(state, suggestion, calls, phase, role)
        recovered = self._recovered(role, problems)
        return {**plan, "llm_events": recovered} if recovered else plan

    def _check(self, name: str, arguments: BaseModel) -> None:
        if isinstance(arguments, RunSteps):
            for job in arguments.jobs:
                if isinstance(job, ExperimentJob):
                    _check_experiment(job)

    def _combine(self, state: dict[str, Any], suggestion: dict[str, Any], calls, phase: str,
                 role: str) -> dict[str, Any]:
        """The round's plan: the playbook's suggestion where the LLM accepted it, the LLM's own
        jobs and claims otherwise (``authored`` marks the jobs the LLM wrote, with ``role``)."""
        names = [name for name, _ in calls]
        if "finish" in names:
            return {"phase": "report", "jobs": [], "hypotheses": _hypotheses(calls)}
        claims = list(state.get("claims", []))
        known = {c["claim"]["id"] for c in claims}
        plan: dict[str, Any] = {"phase": phase, "jobs": [], "hypotheses": _hypotheses(calls)}
        if "accept_suggestion" in names:
            plan["phase"] = suggestion["phase"]
            plan["jobs"] = list(suggestion.get("jobs", []))
            new = [c for c in suggestion.get("claims", []) if c["claim"]["id"] not in known]
            claims += new
            known |= {c["claim"]["id"] for c in new}
            plan["hypotheses"] = plan["hypotheses"] or list(suggestion.get("hypotheses", []))
        written = []  # the jobs the LLM wrote, by their place in plan["jobs"]
        for name, arguments in calls:
            if isinstance(arguments, RunSteps):
                written += range(len(plan["jobs"]), len(plan["jobs"]) + len(arguments.jobs))
                plan["jobs"] += [job.model_dump(mode="json") for job in arguments.jobs]
            elif isinstance(arguments, ProposeClaims):
                for proposed in arguments.claims:
                    record = proposed.model_dump(mode="json")
                    record["role"] = record.get("role") or "llm"
                    if record["claim"]["id"] in known:
                        record["claim"]["id"] = f"llm-{record['claim']['id']}"
                    if record["claim"]["id"] in known:
                        continue
                    known.add(record["claim"]["id"])
                    claims.append(record)
                    written.append(len(plan["jobs"]))
                    plan["jobs"].append({"step": "examine", "claim": record["claim"]})
        if claims != list(state.get("claims", [])):
            plan["claims"] = claims
        if not plan["jobs"] and plan["phase"] == phase and "accept_suggestion" not in names:
            return {**suggestion, "hypotheses": plan["hypotheses"]}
        if written:
            plan["authored"] = {str(i): role for i in written}
        return plan

    # -- writing --------------------------------------------------------------------------------
    def write(self, question: str, claims: list, evidence: set[str]) -> tuple[Narrative | None, list[dict[str, Any]]]:
        """The narrative answer (checked; trusted code fills its numbers from the stored claims),
        or None with the event on failure."""
        skipped = self._down("reporter")
        if skipped is not None:
            return None, skipped
        table = [{"id": c.id, "statement": c.statement, "verdict": c.verdict, "effect": c.effect,
                  "ci": [c.ci_low, c.ci_high], "n": c.n, "threshold": c.details.get("threshold"),
                  "evidence": [k[:12] for k in c.evidence]} for c in claims]
        conversation = messages("reporter", question=fence(question, "question"), claims=fence(table, "claims"))
        ids = {c.id for c in claims}
        problems: list[str] = []
        self.client.role = "reporter"
        try:
            ((_, narrative),) = call_tools(self.client, conversation, WRITE_TOOLS, max_invalid=self.max_invalid,
                                           check=lambda _, n: check_narrative(n, ids, evidence), errors=problems)
        except (LLMError, ValueError) as error:
            self._note(error)
            return None, self._recovered("reporter", problems[:-1]) + [event("reporter", error)]
        return narrative, self._recovered("reporter", problems)


def event(role: str, error: Exception, *, fallback: str = "heuristic") -> dict[str, Any]:
    """What failed in a role, and what was done instead (for ``state['llm_events']`` and the report)."""
    out = {"role": role, "error": f"{type(error).__name__}: {error}", "fallback": fallback}
    raw = getattr(error, "raw", None)
    if raw:
        out["raw"] = raw[:500]
    attempts = getattr(error, "attempts", None)
    if attempts:
        out["attempts"] = attempts
    return out


def summarise(state: dict[str, Any]) -> dict[str, Any]:
    """What an LLM is shown of the investigation: compact outcomes, claims and verdicts, memory."""
    outcomes = []
    for o in state.get("outcomes", []):
        step = o["step"]
        if step == "examine":
            t = o["test"]
            outcomes.append({"step": step, "claim": t["claim"]["id"], "measured": t["replication"]["estimate"],
                             "ci": [t["replication"]["low"], t["replication"]["high"]],
                             "second": t["second_ablation"]["estimate"], "controls": t["controls"]})
        elif step == "rank":
            outcomes.append({"step": step, "top": [(c, o["effects"][c]) for c in o["order"][:12]],
                             "significant": len(o["significant"]),
                             "necessary": [(c, o["removes"][c]) for c in (o.get("necessary") or [])[:12]]})
        else:
            outcomes.append({k: v for k, v in o.items() if k not in ("evidence", "tried", "tokens")})
    return {"behavior": {k: v for k, v in state.get("behavior", {}).items() if k in ("task", "prompts", "answers",
                                                                                     "foils", "corrupted", "n")},
            "phase": state.get("phase"), "outcomes": outcomes,
            "claims": [{"id": c["claim"]["id"], "statement": c["statement"]} for c in state.get("claims", [])],
            "verdicts": state.get("verdicts", {}), "memory": state.get("prior", []),
            "refused": [e["error"] for e in state.get("llm_events", []) if e.get("fallback") == "job skipped"][-4:]}


def _brief(suggestion: dict[str, Any]) -> dict[str, Any]:
    return {"phase": suggestion["phase"],
            "jobs": [j for j in suggestion.get("jobs", []) if j.get("step") != "examine"],
            "claims": [{"id": c["claim"]["id"], "statement": c["statement"]} for c in suggestion.get("claims", [])]}


def _hypotheses(calls) -> list[str]:
    return [a.hypothesis for _, a in calls if getattr(a, "hypothesis", None)]


def _check_experiment(job: ExperimentJob) -> None:
    """An experiment spec must parse before it may run (prompts are bound by trusted code; a
    one-prompt task stands in for them here)."""
    from tools.experiments import PromptPairs

    try:
        job.bind(PromptPairs(task="ioi", n=1))
    except UserInputError as error:  # SpecError included
        raise ValueError(f"experiment spec: {error}") from None
    except ValidationError as error:  # where and what, not pydantic's headline
        raise ValueError(f"experiment spec: {first_problem(error)}") from None
    except Exception as error:
        raise ValueError(f"experiment spec: {str(error).splitlines()[0]}") from None


__all__ = ["OpenAIBrain", "PLAN_TOOLS", "PlannerJob", "event", "summarise"]
