"""Trusted execution of the brain's jobs: the `Toolbox` and the fixed vocabulary of steps.

A brain (heuristic or LLM) never runs anything; it emits jobs — typed, validated data naming
one step of the vocabulary below — and `Toolbox.do` executes them with the experiment
functions of `tools.experiments`, every experiment through ``run.experiment`` (the workspace's
content-addressed cache: a step re-run after a crash pays nothing twice). A step returns a
JSON-able outcome with the evidence keys of its experiments.

=============  ==============================================================================
step           what it runs
=============  ==============================================================================
``confirm``    the behaviour on the discovery prompts (accuracy, logit difference)
``lens``       the logit lens, and residual-stream patching by layer × position (where and
               when the information that decides the answer moves)
``rank``       activation (or attribution) patching of every head and MLP
``circuit``    the smallest prefix of a ranking that keeps the target share under both ablations,
               never longer than half of the model's heads and MLPs (`largest_circuit`)
``roles``      direct logit attribution, attention of the final token (to the answer, the
               foil, the changed tokens) and the direct paths to the logits of given components
``paths``      path patching from senders into a head's query, key and value inputs
``steer``      steering along the clean − corrupted direction of the residual stream
``examine``    the critic's experiments for one claim (`agents.critic`)
``experiment`` one experiment of `tools.experiments` on the discovery or the fresh prompts
=============  ==============================================================================
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from agents.behavior import BehaviorSpec
from agents.claims import AnyClaim
from agents.critic import critic_seed, examine_claim
from agents.localize import grow_circuit, largest_circuit, rank_components
from agents.positions import label_position, position_tokens, scope_positions
from agents.readouts import STEER_ALPHAS, read_confirm, read_lens, read_paths, read_roles, read_steer
from agents.progress import Progress
from memory.records import StepCost
from tools.errors import UserInputError
from tools.experiments import (
    ActivationPatchingSpec,
    AttentionPatternSpec,
    BehaviourExperimentSpec,
    DirectLogitAttributionSpec,
    LogitLensSpec,
    PatchSweep,
    PathPatchingSpec,
    PromptPairs,
    SteeringSpec,
    parse_spec,
)
from tools.experiments.memo import SharedRuns, sharing_runs
from tools.experiments.steering import MeanDifferenceDirection

if TYPE_CHECKING:
    from memory.runstore import Run
    from memory.vector import VectorMemory
    from tools.loading import LoadedModel


class _Job(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfirmJob(_Job):
    step: Literal["confirm"] = "confirm"


class LensJob(_Job):
    step: Literal["lens"] = "lens"


class RankJob(_Job):
    step: Literal["rank"] = "rank"


class CircuitJob(_Job):
    step: Literal["circuit"] = "circuit"
    order: tuple[str, ...]
    """Candidates, most important first; the circuit is a prefix of them."""
    target: float = 0.8
    max_size: int | None = Field(default=None, ge=1)
    """Never more than `largest_circuit` (half of the model's heads and MLPs), whatever is asked."""


class RolesJob(_Job):
    step: Literal["roles"] = "roles"
    components: tuple[str, ...]


class PathsJob(_Job):
    step: Literal["paths"] = "paths"
    senders: tuple[str, ...]
    receiver: str
    """A head (``head.L.H``): its q, k and v inputs are each a receiver."""


class SteerJob(_Job):
    step: Literal["steer"] = "steer"
    layer: int
    position: int = -1


class ExamineJob(_Job):
    step: Literal["examine"] = "examine"
    claim: AnyClaim
    """The critic's random draws for it come from the claim and the run's seed
    (`agents.critic.critic_seed`); no brain picks them."""
    named: tuple[str, ...] = ()
    """The components the run's claims name, kept out of the critic's controls. The graph
    fills it from the run's claims when it dispatches the job, whatever a brain wrote."""

    @model_validator(mode="before")
    @classmethod
    def _drop_stored_place(cls, data: Any) -> Any:
        """Runs checkpointed before the critic seeded from the claim stored the claim's place
        as ``seed``; it is dropped, so those runs still resume (their claims are seeded anew)."""
        if isinstance(data, dict) and "seed" in data:
            return {k: v for k, v in data.items() if k != "seed"}
        return data


class ExperimentJob(_Job):
    """One experiment of the tools vocabulary; trusted code binds its prompts."""

    step: Literal["experiment"] = "experiment"
    spec: dict[str, Any]
    """A spec of `tools.experiments` without ``prompts`` (parsed and validated before it runs)."""
    prompts: Literal["discovery", "fresh"] = "discovery"

    def bind(self, prompts: PromptPairs):
        """The validated experiment spec on ``prompts`` (the set this job names).

        Raises:
            UserInputError: the spec carries prompts of its own, or names no known kind.
            SpecError, pydantic.ValidationError: a field that does not validate (named).
        """
        if "prompts" in self.spec:
            raise UserInputError("an experiment job names its prompt set (discovery or fresh), not prompts")
        return parse_spec({**self.spec, "prompts": prompts.model_dump(mode="json")})


Job = Annotated[Union[ConfirmJob, LensJob, RankJob, CircuitJob, RolesJob, PathsJob, SteerJob, ExamineJob,
                      ExperimentJob], Field(discriminator="step")]
JOB = TypeAdapter(Job)


@dataclass
class Toolbox:
    """What the nodes act with: the model, the run (store + cache), the behaviour's prompts."""

    model: "LoadedModel"
    run: "Run"
    behavior: BehaviorSpec
    max_experiments: int | None = None
    max_seconds: float | None = None
    """Wall-time budget over the whole run (earlier processes' time counts, from ``run.json``)."""
    max_tokens: int | None = None
    max_dollars: float | None = None
    started: float = field(default_factory=time.monotonic)
    memory: "VectorMemory | None" = None
    """The vector memory the planner reads before planning and the critic writes verdicts to."""
    progress: "Progress" = field(default_factory=lambda: Progress(enabled=False))
    shared_runs: SharedRuns = field(default_factory=SharedRuns)
    """Unpatched runs, mean-ablation references and everything-ablated baselines the steps'
    experiments share (`tools.experiments.memo`)."""

    # -- prompts -------------------------------------------------------------------------------
    @cached_property
    def prompts(self) -> PromptPairs:
        """Discovery prompts: the task's train split, or the user's prompts with variants of them
        (other names, other entities: `tools.tasks.perturb`) when they can be varied."""
        return self._prompt_sets[0]

    @cached_property
    def fresh_prompts(self) -> PromptPairs:
        """Prompts never used for discovery: the task's held-out split with another seed, or
        other variants of the user's prompts; the user's own prompts when none can be made."""
        return self._prompt_sets[1]

    @cached_property
    def fresh_kind(self) -> str:
        b = self.behavior
        if b.task is not None:
            return f"the generator's held-out split with seed {b.seed + 1000}"
        if self._prompt_sets[1] is self._prompt_sets[0]:
            return "the user's own prompts (they could not be varied, so this is not an independent replication)"
        return "variants of the user's prompts never used for discovery (other names or entities)"

    @cached_property
    def _prompt_sets(self) -> tuple[PromptPairs, PromptPairs]:
        b = self.behavior
        if b.task is not None:
            extra = self._generation()
            return (b.to_prompt_pairs(split="train", **extra),
                    b.to_prompt_pairs(split="heldout", seed=b.seed + 1000, **extra))
        return draw_user_prompt_sets(b, self.model.tokenizer)

    def _generation(self) -> dict[str, Any]:
        """Generator and tokenizer for a behaviour the model folder declares (the trigger)."""
        from tools.tasks.declared import DECLARED_BEHAVIOURS, declared_tasks

        if self.behavior.task not in DECLARED_BEHAVIOURS:
            return {}
        generator = declared_tasks(self.model.source).get(self.behavior.task)
        return {"generator": generator, "tokenizer": self.model.tokenizer}

    @cached_property
    def positions(self) -> tuple[int, ...] | None:
        """Where ablations act on the discovery prompts: from the first changed token on."""
        return scope_positions(self.model, self.prompts)

    # -- budget ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.run.record.cost.wall_s + time.monotonic() - self.started

    def out_of_budget(self) -> str:
        """Which budget is spent ("" when none): experiments, wall time, LLM tokens or dollars."""
        cost = self.run.record.cost
        if self.max_experiments is not None and cost.experiments >= self.max_experiments:
            return f"{self.max_experiments} experiments"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            return f"{self.max_seconds:g} s of wall time"
        if self.max_tokens is not None and cost.tokens_in + cost.tokens_out >= self.max_tokens:
            return f"{self.max_tokens} LLM tokens"
        if self.max_dollars is not None and cost.dollars >= self.max_dollars:
            return f"${self.max_dollars:g} of LLM calls"
        return ""

    def experiment(self, spec):
        result = self.run.experiment(self.model, spec)
        self.progress.update(experiments=self.run.record.cost.experiments, budget=self.budget_left())
        return result

    def budget_left(self) -> str:
        parts = []
        if self.max_experiments is not None:
            parts.append(f"{max(0, self.max_experiments - self.run.record.cost.experiments)} experiments")
        if self.max_seconds is not None:
            parts.append(f"{max(0.0, self.max_seconds - self.elapsed()):.0f} s")
        cost = self.run.record.cost
        if self.max_tokens is not None:
            parts.append(f"{max(0, self.max_tokens - cost.tokens_in - cost.tokens_out)} tokens")
        if self.max_dollars is not None:
            parts.append(f"${max(0.0, self.max_dollars - cost.dollars):.2f}")
        return ", ".join(parts) or "unlimited"

    # -- memory ---------------------------------------------------------------------------------
    def recall(self) -> list[dict[str, Any]]:
        """What memory knows about this model and question: similar past questions (with their
        answers) and supported findings about the same weights and behaviour."""
        if self.memory is None:
            return []
        out: list[dict[str, Any]] = []
        question = self.run.record.question
        for hit in self.memory.similar_questions(question, model_id=self.model.model_id, k=3):
            meta = hit.metadata
            if meta.get("run_id") == self.run.id or 1 - hit.distance < 0.5:
                continue
            out.append({"kind": "question", "text": hit.text, "run_id": meta.get("run_id"),
                        "answer": meta.get("answer"), "similarity": round(1 - hit.distance, 3)})
        for hit in self.memory.search(question, model_id=self.model.model_id, k=8, collections=("findings",)):
            meta = hit.metadata
            if (meta.get("run_id") == self.run.id or meta.get("weights_hash") != self.model.weights_hash
                    or meta.get("verdict") != "supported" or meta.get("task") != self.behavior.task):
                continue
            out.append({"kind": "finding", "text": hit.text, "run_id": meta.get("run_id"),
                        "components": list(meta.get("components") or []), "verdict": meta.get("verdict")})
        return out

    def remember(self, claim) -> None:
        """Write a tested claim (with its verdict) to the vector memory (an idempotent upsert)."""
        if self.memory is not None:
            self.memory.add_claim(claim)

    # -- steps ------------------------------------------------------------------------------------
    def do(self, job: dict[str, Any] | BaseModel) -> dict[str, Any]:
        """Execute one job (validated against the vocabulary) and return its outcome."""
        parsed = JOB.validate_python(job.model_dump() if isinstance(job, BaseModel) else job)
        before = self.run.record.cost
        with sharing_runs(self.shared_runs):
            outcome = getattr(self, f"_do_{parsed.step}")(parsed)
        after = self.run.record.cost
        step = after.by_step.get(parsed.step) or StepCost()
        self.run.update(cost={"by_step": {**after.by_step, parsed.step: step.plus_job(before, after)}})
        return {"step": parsed.step, **outcome}

    def _do_confirm(self, job: ConfirmJob) -> dict[str, Any]:
        return read_confirm(self.experiment(BehaviourExperimentSpec(prompts=self.prompts)))

    def _do_lens(self, job: LensJob) -> dict[str, Any]:
        lens = self.experiment(LogitLensSpec(prompts=self.prompts))
        positions = self.positions or (-1,)
        resid = self.experiment(ActivationPatchingSpec(
            prompts=self.prompts, sweeps=(PatchSweep(site="resid_pre", per_position=True),), positions=positions))
        tokens = position_tokens(self.model, self.prompts, positions)
        return {**read_lens(lens, resid), "labels": {str(p): label_position(t) for p, t in tokens.items()},
                "tokens": {str(p): t for p, t in tokens.items()}}

    def _do_rank(self, job: RankJob) -> dict[str, Any]:
        experiment = ToolboxRun(self)
        ranking = rank_components(experiment, self.model, self.prompts)
        return {"order": ranking.order, "effects": dict(ranking.effects), "method": ranking.method,
                "significant": list(ranking.significant), "removes": dict(ranking.removes),
                "necessary": list(ranking.necessary), "evidence": list(ranking.evidence)}

    def _do_circuit(self, job: CircuitJob) -> dict[str, Any]:
        # the cap binds here, in trusted code, so a job from an LLM planner cannot pass it either
        adapter = self.model.adapter
        cap = largest_circuit(adapter.n_layers * (adapter.n_heads + 1))
        found = grow_circuit(ToolboxRun(self), self.model, self.prompts, job.order, target=job.target,
                             max_size=min(job.max_size or cap, cap), positions=self.positions,
                             should_stop=self.out_of_budget)
        return found.model_dump(mode="json")

    def _do_roles(self, job: RolesJob) -> dict[str, Any]:
        dla = self.experiment(DirectLogitAttributionSpec(prompts=self.prompts))
        # the first prompt's full patterns are kept for the report's attention figure
        attention = self.experiment(AttentionPatternSpec(prompts=self.prompts, saved_prompts=1, from_last=True))
        paths = self.experiment(PathPatchingSpec(prompts=self.prompts, receivers=("logits",), senders=job.components))
        length = int(attention.tensors["pattern_lengths"][0])
        tokens = [self.model.tokenizer.decode([int(t)]) for t in attention.tensors["pattern_tokens"][0, :length]]
        return {**read_roles(job.components, dla, attention, paths), "tokens": tokens}

    def _do_paths(self, job: PathsJob) -> dict[str, Any]:
        results = [self.experiment(PathPatchingSpec(prompts=self.prompts, receivers=(f"{job.receiver}.{part}",),
                                                    senders=job.senders)) for part in ("q", "k", "v")]
        return read_paths(job.receiver, results)

    def _do_steer(self, job: SteerJob) -> dict[str, Any]:
        site = f"resid_pre.{job.layer}"
        return read_steer(self.experiment(SteeringSpec(
            prompts=self.prompts, site=site, positions=(job.position,), alphas=STEER_ALPHAS,
            direction=MeanDifferenceDirection(site=site, position=job.position))))

    def _do_examine(self, job: ExamineJob) -> dict[str, Any]:
        seed = critic_seed(self.behavior.seed, job.claim)
        test = examine_claim(ToolboxRun(self), self.model, job.claim, self.fresh_prompts, seed=seed,
                             named=job.named)
        return {"test": test.model_dump(mode="json"), "seed": seed}

    def _do_experiment(self, job: ExperimentJob) -> dict[str, Any]:
        prompts = self.prompts if job.prompts == "discovery" else self.fresh_prompts
        result = self.experiment(job.bind(prompts))
        summary = {k: v for k, v in result.model_dump(mode="json").items() if k not in ("spec", "provenance")}
        return {"kind": result.spec.kind, "summary": summary, "evidence": [result.key]}


def draw_user_prompt_sets(b: BehaviorSpec, tokenizer) -> tuple[PromptPairs, PromptPairs]:
    """Discovery and fresh prompts for a behaviour given as the user's own prompts: the prompts
    plus variants of them (other names, other entities: `tools.tasks.perturb`) for discovery,
    other variants for the critic; both the user's prompts when none can be made.

    Raises:
        UserInputError: fewer than two prompts for the critic (its bootstrap needs two).
    """
    from tools.tasks.base import TaskPrompt
    from tools.tasks.perturb import vary_prompt

    own = [TaskPrompt(clean=c, corrupted=x, answer=a, foil=f)
           for c, x, a, f in zip(b.prompts, b.corrupted or b.prompts, b.answers, b.foils)]
    pool: list[TaskPrompt] = []
    per_prompt = max(2, (2 * b.n) // len(own) + 2)
    for item in own:
        pool += vary_prompt(item, tokenizer, per_prompt, seed=b.seed, exclude=[p.clean for p in own + pool])
    if not pool:
        mine = b.to_prompt_pairs()
        sets = mine, mine
    else:
        discovery = (own + pool[0::2])[: max(b.n, len(own))]
        sets = _pairs(discovery), _pairs(pool[1::2][: b.n])
    if len(sets[1].clean) < 2:
        raise UserInputError(f"the critic needs at least 2 prompts to re-test claims on, and this prompt could be "
                             f"varied into only {len(sets[1].clean)}; give several prompts in a spec file (--spec)")
    return sets


class ToolboxRun:
    """``run`` as the localisation and critic functions use it, reporting each experiment."""

    def __init__(self, toolbox: Toolbox) -> None:
        self._toolbox = toolbox

    def experiment(self, model, spec):
        return self._toolbox.experiment(spec)


def _pairs(items) -> PromptPairs:
    return PromptPairs(clean=[i.clean for i in items], corrupted=[i.corrupted for i in items],
                       answer=[i.answer for i in items], foil=[i.foil for i in items])

