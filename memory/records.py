"""What the run store and the vector memory keep: typed records, validated on the way in and out."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["created", "running", "answered", "budget_exhausted", "degraded", "failed", "interrupted"]
Verdict = Literal["untested", "supported", "refuted", "inconclusive"]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StepCost(BaseModel):
    """What the jobs of one step (``rank``, ``examine``, ...) spent."""

    model_config = ConfigDict(extra="forbid")

    jobs: int = 0
    experiments: int = 0
    forward_passes: int = 0
    forward_rows: int = 0

    def plus_job(self, before: "Cost", after: "Cost") -> "StepCost":
        """This tally with one more job, which took the run's cost from ``before`` to ``after``."""
        spent = {f: getattr(self, f) + getattr(after, f) - getattr(before, f)
                 for f in ("experiments", "forward_passes", "forward_rows")}
        return StepCost(jobs=self.jobs + 1, **spent)


class Cost(BaseModel):
    """What a run spent. Experiments count every result it used; hits were served by the cache."""

    model_config = ConfigDict(extra="forbid")

    experiments: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    forward_passes: int = 0
    """Batched forward calls of the experiments run (cache hits cost none)."""
    forward_rows: int = 0
    """Sequences those calls forwarded, summed."""
    by_step: dict[str, StepCost] = Field(default_factory=dict)
    """The same tallies for each step of the investigation's vocabulary (what is not in a step,
    such as intake, is the difference from the totals)."""
    wall_s: float = 0.0
    llm_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    dollars: float = 0.0


class RunRecord(BaseModel):
    """``run.json``: the question, the settings it ran with, where it stands, what it cost."""

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    model_id: str
    weights_hash: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus = "created"
    answer: str | None = None
    error: str | None = None
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    cost: Cost = Field(default_factory=Cost)


class Claim(BaseModel):
    """A checkable statement about components, with its pre-registered prediction and verdict.

    ``evidence`` holds experiment keys (content hashes of the results the claim rests on).
    One line of ``claims.jsonl`` each; a later line with the same ``id`` supersedes earlier ones.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    run_id: str
    statement: str
    components: list[str] = Field(default_factory=list)
    prediction: str = ""
    verdict: Verdict = "untested"
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    evidence: list[str] = Field(default_factory=list)
    model_id: str
    weights_hash: str | None = None
    task: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class RunSummary(BaseModel):
    """One row of ``sleuth runs``; ``damaged`` holds the reason when the folder does not load."""

    id: str
    question: str | None = None
    model_id: str | None = None
    status: str | None = None
    supported: int = 0
    refuted: int = 0
    inconclusive: int = 0
    created_at: str | None = None
    cost: Cost | None = None
    damaged: str | None = None
