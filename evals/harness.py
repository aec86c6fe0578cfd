"""The benchmark harness: questions in, investigations run, scores against the answer keys out.

For each question of a question file (`evals.questions`) and each of its seeds:

1. run the whole investigation (`agents.investigate.ask`, the chosen brain) in a fresh
   workspace of its own (no experiment cache or memory shared between runs, so every run
   pays its full cost), with the model loaded once per eval and its forward-pass counter
   read around the run;
2. score the report against the key (`evals.score`): component recall and precision of the
   supported claims, edges, verdict accuracy (each supported or refuted claim re-measured on
   the key's prompts, `evals.remeasure`), whether a planted component comes first;
3. measure the faithfulness of the reported circuit — the reported components kept, every
   other head and MLP resample-ablated (mean ablation beside it), from the first changed token
   on — on the key's prompts;
4. run the baselines (`evals.baselines`) on the investigation's own discovery prompts and
   score them the same way.

An eval survives being killed: before the first investigation it writes what it was asked
(``eval.json``, `EvalPlan`), and each finished run's score goes to ``scores/<id>-seed<N>.json``
as soon as it is measured. ``sleuth eval --resume DIR`` (`resume_plan`) re-reads the question
file, refuses if any question changed since, keeps every finished run and re-runs the others
from scratch in a fresh workspace (a run the kill cut short is set aside as
``<id>-seed<N>.interrupted``, never deleted, and is not continued: its forward passes before
the kill were never counted, so its cost could not be scored).

The scoreboard (`Scoreboard`) averages runs over seeds per question and questions over the
file; ``forward_pass_ratio`` is the agent's forward passes over the exhaustive baseline's,
both counted by the same counter in the same process.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from pydantic import BaseModel, ConfigDict, TypeAdapter

from evals.baselines import BaselineRun, counting, draw_random, run_attribution_topk, run_exhaustive
from evals.keys.schema import KeyMethod
from evals.questions import BenchmarkQuestion, eval_questions
from evals.remeasure import measure_claim, measure_set
from evals.score import (
    ReportedClaim,
    mean,
    planted_first,
    recall_precision,
    reported_components,
    reported_edges,
    verdict_accuracy,
)
from tools.errors import SpecError, UserInputError

if TYPE_CHECKING:
    from agents.llm.settings import LLMSettings
    from tools.experiments.prompts import PromptPairs
    from tools.loading import LoadedModel

TARGETS = {
    "recall": (">=", 0.9),
    "precision": (">=", 0.8),
    "verdict_accuracy": (">=", 0.9),
    "forward_pass_ratio": ("<=", 0.30),
}
"""The issue's targets on the mean over questions (and: the planted component first in every
run of a planted question asked with at least `PLANTED_SEEDS` seeds)."""
PLANTED_SEEDS = 5
RANDOM_DRAWS = 3
"""Random baseline: draws per run (recall, precision and faithfulness are their mean)."""
PLAN_FILE = "eval.json"
SCORES_DIR = "scores"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaselineScore(_Model):
    """A baseline's components scored against the key, and its cost."""

    components: tuple[str, ...]
    recall: float | None
    precision: float | None
    faithfulness: float | None
    forward_passes: float
    forward_rows: float
    wall_s: float


class RunScore(_Model):
    """One investigation (one seed of one question), scored. An investigation that stopped
    with an error reports nothing: recall 0, no precision, no verdicts, faithfulness 0."""

    seed: int
    run_id: str | None
    status: str
    error: str | None = None
    """What stopped the investigation (``status`` is then ``error``)."""
    workspace: str
    reported: tuple[str, ...]
    """The supported claims' components (`evals.score.reported_components`)."""
    recall: float | None
    precision: float | None
    edge_recall: float | None
    edge_precision: float | None
    verdict_accuracy: float | None
    claims: tuple[ReportedClaim, ...]
    """Every claim in report order, with its score re-measured on the key's prompts
    (supported and refuted ones; inconclusive ones take no side and are not re-measured)."""
    faithfulness: float | None
    """Reported circuit kept, everything else resample-ablated, on the key's prompts."""
    faithfulness_mean: float | None
    """The same under mean ablation."""
    planted_first: bool | None
    forward_passes: int
    forward_rows: int
    experiments: int
    wall_s: float
    tokens: int
    forward_pass_ratio: float | None
    """forward_passes / the exhaustive baseline's (same counter, same prompts)."""
    forward_row_ratio: float | None
    """forward_rows / the exhaustive baseline's: the same comparison in sequences forwarded,
    which does not depend on how many sequences each experiment batches into one call."""
    rows_by_step: dict[str, int] = {}
    """The investigation's forward rows per step of its vocabulary (``run.json``'s
    ``cost.by_step``); what no step ran (intake) is the rest of ``forward_rows``."""
    baselines: dict[str, BaselineScore]


class QuestionScore(_Model):
    """One question: its runs and their means."""

    id: str
    model: str
    question: str
    key: str
    seeds: tuple[int, ...]
    recall: float | None
    precision: float | None
    verdict_accuracy: float | None
    faithfulness: float | None
    forward_passes: float
    wall_s: float
    experiments: float
    tokens: float
    forward_rows: float
    forward_pass_ratio: float | None
    forward_row_ratio: float | None
    edge_recall: float | None
    edge_precision: float | None
    planted_first: float | None
    """Share of the runs whose first supported claim names a planted component first (None:
    the key plants nothing)."""
    rows_by_step: dict[str, float] = {}
    """Mean forward rows per step over the runs."""
    baselines: dict[str, dict[str, Any]]
    runs: tuple[RunScore, ...]


class Scoreboard(_Model):
    """What `sleuth eval` prints and writes (``scoreboard.json``)."""

    brain: str
    questions_file: str
    workspace: str
    seed_shift: int = 0
    """``--seed-shift``: each question's seeds moved by this many spans (`shift_seeds`; 0: the
    question file's own seeds)."""
    created_at: str
    resumed_at: tuple[str, ...] = ()
    """When ``sleuth eval --resume`` went on with this eval (empty: it ran in one go)."""
    questions: tuple[QuestionScore, ...]
    summary: dict[str, Any]
    baselines: dict[str, dict[str, Any]]


class EvalPlan(_Model):
    """What an eval was asked (``eval.json``, written before its first investigation): what
    ``sleuth eval --resume`` reads to go on after a kill."""

    questions_file: str
    """Absolute path of the question file."""
    only: tuple[str, ...] = ()
    """``--only`` filters, as given."""
    seed_shift: int = 0
    """``--seed-shift``, as given."""
    brain: str
    created_at: str
    resumed_at: tuple[str, ...] = ()
    questions: tuple[tuple[str, str], ...]
    """(id, fingerprint) of every question to run, in order (`question_fingerprint`)."""


def question_fingerprint(q: BenchmarkQuestion) -> str:
    """A digest of everything a run's score depends on: the question, its model, its key (every
    field) and the bytes of its spec file."""
    spec = q.spec_path.read_bytes().hex() if q.spec_path is not None and q.spec_path.is_file() else None
    data = {"question": q.question.model_dump(mode="json"), "model": q.model,
            "key": q.key.model_dump(mode="json"), "spec": spec}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_plan(questions: Sequence[BenchmarkQuestion], *, questions_file: Path, only: Sequence[str] = (),
             seed_shift: int = 0, brain: str) -> EvalPlan:
    """The plan of a new eval of ``questions`` (their seeds already shifted by ``seed_shift``)."""
    return EvalPlan(questions_file=str(questions_file.resolve()), only=tuple(only), seed_shift=seed_shift,
                    brain=brain, created_at=_now(),
                    questions=tuple((q.id, question_fingerprint(q)) for q in questions))


def resume_plan(root: Path) -> tuple[EvalPlan, list[BenchmarkQuestion]]:
    """The plan of the eval in ``root`` and its questions, re-read from its question file.

    Raises:
        UserInputError: one line, when ``root`` holds no eval, its plan is damaged, or the
            question file (or a key or spec file it names) changed since the eval began.
    """
    from pydantic import ValidationError

    path = root / PLAN_FILE
    if not path.is_file():
        raise UserInputError(f"--resume {root}: no {PLAN_FILE} there; give the folder sleuth eval named "
                             "(it holds eval.json, scoreboard.json and one folder per investigation)")
    try:
        plan = EvalPlan.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError, OSError):
        raise UserInputError(f"{path}: damaged, not an eval plan sleuth eval wrote") from None
    questions = eval_questions(plan.questions_file, plan.only, plan.seed_shift)
    now = [(q.id, question_fingerprint(q)) for q in questions]
    if now != list(plan.questions):
        before, after = dict(plan.questions), dict(now)
        changed = ([i for i, _ in plan.questions if i not in after] + [i for i, _ in now if i not in before]
                   + [i for i, f in now if before.get(i, f) != f])
        what = f"question {changed[0]}" if changed else "the order of its questions"
        raise UserInputError(f"{plan.questions_file}: {what} changed since the eval in {root} began "
                             f"({plan.created_at}), so it cannot go on; start a new eval")
    return plan, questions


def run_benchmark(questions: Sequence[BenchmarkQuestion], *, root: Path, questions_file: str | Path,
                  brain: str = "heuristic", llm: "LLMSettings | None" = None,
                  log: Callable[[str], None] | None = None, only: Sequence[str] = (), seed_shift: int = 0,
                  resume: EvalPlan | None = None) -> Scoreboard:
    """Run and score every question (see the module docstring); investigations go under ``root``,
    and ``root/scoreboard.json`` is rewritten after every question. With ``resume`` (the plan
    `resume_plan` read from ``root``; its brain is the eval's), runs already scored are kept and
    the rest run again. ``seed_shift`` is only recorded (in the plan and the scoreboard): the
    questions come with their seeds already shifted (`shift_seeds`).
    One process at a time works in ``root`` (an flock on ``root/.lock``).

    Raises:
        UserInputError: another process holds ``root`` (an eval still running there).
    """
    from tools.loading import load_model

    if not questions:
        raise UserInputError("no questions to run")
    say = log or (lambda text: None)
    root = root.resolve()
    with ExitStack() as held:
        if resume is not None:  # refused before the models load when the eval still runs
            held.enter_context(_hold(root))
        models: dict[str, "LoadedModel"] = {}
        for q in questions:  # every model loads and every key fits it before anything runs
            if q.model not in models:
                say(f"loading {q.model}")
                models[q.model] = load_model(q.model)
            q.key.check_model(models[q.model])
        if resume is None:
            plan = new_plan(questions, questions_file=Path(questions_file), only=only, seed_shift=seed_shift,
                            brain=brain)
            root.mkdir(parents=True, exist_ok=True)
            held.enter_context(_hold(root))
        else:
            plan = resume.model_copy(update={"resumed_at": (*resume.resumed_at, _now())})
        return _score_all(questions, models, plan, root=root, resuming=resume is not None, llm=llm, say=say)


@contextmanager
def _hold(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` (flock) while an eval works in ``root``."""
    from memory.workspace import acquire_lock

    fd = acquire_lock(root, 0, busy=lambda holder: f"the eval in {root} is still running ({holder}); "
                                                   "stop it before resuming it")
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _score_all(questions: Sequence[BenchmarkQuestion], models: dict[str, "LoadedModel"], plan: EvalPlan, *,
               root: Path, resuming: bool, llm: "LLMSettings | None", say: Callable[[str], None]) -> Scoreboard:
    from agents.positions import scope_positions
    from tools.atomic import atomic_write_text

    atomic_write_text(root / PLAN_FILE, plan.model_dump_json(indent=1) + "\n")
    say(f"writing under {root} (if this eval is stopped: sleuth eval --resume {root})")
    scored = []
    for q in questions:
        model = models[q.model]
        key_prompts = q.key.prompts.pairs(model, q.question.judge_n)
        scope = scope_positions(model, key_prompts)
        runs = []
        for seed in q.question.seeds:
            scores = root / SCORES_DIR / f"{q.id}-seed{seed}.json"
            finished = _finished_run(scores, seed, say) if resuming else None
            if finished is not None:
                say(f"{q.id} (seed {seed}): scored before the eval was stopped; kept")
                runs.append(finished)
                continue
            cut = _set_aside(root / f"{q.id}-seed{seed}", "interrupted") if resuming else None
            if cut is not None:
                say(f"{q.id}-seed{seed}: cut short when the eval was stopped; set aside as {cut.name}, "
                    "run again afresh")
            say(f"{q.id} (seed {seed}): investigating {q.model}")
            runs.append(score_run(q, seed, model, key_prompts, scope, root=root, brain=plan.brain, llm=llm))
            r = runs[-1]
            scores.parent.mkdir(exist_ok=True)
            atomic_write_text(scores, r.model_dump_json(indent=1) + "\n")
            if r.error:
                say(f"{q.id} (seed {seed}): the investigation stopped: {r.error}")
            say(f"{q.id} (seed {seed}): {r.status}, recall {_fmt(r.recall)}, precision {_fmt(r.precision)}, "
                f"verdicts {_fmt(r.verdict_accuracy)}, faithful {_fmt(r.faithfulness)}, "
                f"{r.forward_passes} forward passes ({_fmt(r.forward_pass_ratio)} of exhaustive), {r.wall_s:.1f} s")
        scored.append(summarise_question(q, runs))
        board = Scoreboard(brain=plan.brain, questions_file=plan.questions_file, workspace=str(root),
                           seed_shift=plan.seed_shift, created_at=plan.created_at, resumed_at=plan.resumed_at,
                           questions=tuple(scored), summary=summarise(scored),
                           baselines=summarise_baselines(scored))
        atomic_write_text(root / "scoreboard.json", board.model_dump_json(indent=1) + "\n")
    return board


def _finished_run(path: Path, seed: int, say: Callable[[str], None]) -> RunScore | None:
    """The score a run wrote before the eval was stopped; None when it has none (a damaged one is
    set aside as ``*.damaged`` and the run counts as unfinished)."""
    from pydantic import ValidationError

    if not path.is_file():
        return None
    try:
        score = RunScore.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError, OSError):
        score = None
    if score is not None and score.seed == seed:
        return score
    say(f"{path}: damaged; set aside as {_set_aside(path, 'damaged').name}, the run goes again")
    return None


def _set_aside(path: Path, suffix: str) -> Path | None:
    """Rename ``path`` out of the way, never over anything: ``<name>.<suffix>``, else
    ``<name>.<suffix>-2``, ...; the new path, or None when there was nothing to move."""
    if not path.exists():
        return None
    n, target = 1, path.with_name(f"{path.name}.{suffix}")
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{suffix}-{n}")
    path.rename(target)
    return target


def score_run(q: BenchmarkQuestion, seed: int, model: "LoadedModel", key_prompts: "PromptPairs",
              scope: tuple[int, ...] | None, *, root: Path, brain: str, llm: "LLMSettings | None") -> RunScore:
    """One investigation of ``q`` with ``seed``, its scores, and the baselines on its prompts."""
    from agents.investigate import ask

    workspace = root / f"{q.id}-seed{seed}"
    error = None
    with counting(model) as cost:
        try:
            out = ask(q.question.question or "", model=q.model, loaded=model, workspace=str(workspace), seed=seed,
                      spec_file=str(q.spec_path) if q.spec_path else None, n=q.question.n, brain=brain, llm=llm)
        except Exception as failure:  # noqa: BLE001 - a benchmark records a failed investigation and goes on
            error = f"{type(failure).__name__}: {failure}"
    run = _latest_run(workspace)
    if error is not None:
        out = {"run_id": run.id if run else None, "status": "error", "claims": [],
               "cost": {"experiments": run.record.cost.experiments if run else 0,
                        "tokens": run.record.cost.tokens_in + run.record.cost.tokens_out if run else 0}}
    claims = _reported_claims(run, [c["id"] for c in out["claims"]], model, key_prompts, scope) if run else []
    reported = reported_components(claims)
    recall, precision = recall_precision(reported, q.key.components)
    edge_recall, edge_precision = recall_precision(reported_edges(claims), {e.pair for e in q.key.edges})
    faithful = {m: _faithfulness(model, reported, key_prompts, scope, m) for m in ("resample", "mean")}
    baselines = _baselines(q, seed, model, run, len(reported), key_prompts, scope) if error is None else {}
    exhaustive = baselines.get("exhaustive")
    return RunScore(
        seed=seed, run_id=out["run_id"], status=out["status"], error=error, workspace=str(workspace),
        reported=reported, recall=recall, precision=precision,
        edge_recall=edge_recall, edge_precision=edge_precision, verdict_accuracy=verdict_accuracy(claims),
        claims=tuple(claims), faithfulness=faithful["resample"], faithfulness_mean=faithful["mean"],
        planted_first=planted_first(claims, q.key.planted), forward_passes=cost.forward_passes,
        forward_rows=cost.forward_rows, experiments=out["cost"]["experiments"], wall_s=round(cost.wall_s, 2),
        tokens=out["cost"]["tokens"],
        forward_pass_ratio=_ratio(cost.forward_passes, exhaustive.forward_passes) if exhaustive else None,
        forward_row_ratio=_ratio(cost.forward_rows, exhaustive.forward_rows) if exhaustive else None,
        rows_by_step={step: c.forward_rows for step, c in run.record.cost.by_step.items()} if run else {},
        baselines=baselines)


def _ratio(agent: float, baseline: float) -> float | None:
    return agent / baseline if baseline else None


def _latest_run(workspace: Path):
    """The run a fresh workspace holds (None when the investigation stopped before creating it)."""
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    if not (workspace / "runs").is_dir():
        return None
    store = RunStore(Workspace.open(workspace))
    ids = sorted(r.id for r in store.list() if not r.damaged)
    return store.open(ids[-1]) if ids else None


def _reported_claims(run, order: list[str], model: "LoadedModel", key_prompts: "PromptPairs",
                     scope: tuple[int, ...] | None) -> list[ReportedClaim]:
    """The run's claims in report order; supported and refuted ones re-measured on the key's prompts."""
    from agents.claims import AnyClaim

    parse = TypeAdapter(AnyClaim)
    by_id = {c.id: c for c in run.claims()}  # (an investigation that failed has no report order)
    out = []
    for claim_id in order:
        c = by_id[claim_id]
        tested = c.details.get("claim")
        spec = parse.validate_python(tested) if tested else None
        measured, note = None, ""
        if spec is None:
            note = "the run did not record the tested claim (details.claim)"
        elif c.verdict in ("supported", "refuted"):
            try:
                measured = measure_claim(model, spec, key_prompts, scope)
            except SpecError as error:  # e.g. a position the key's shorter prompts do not have
                note = f"cannot be measured on the key's prompts: {error}"
        out.append(ReportedClaim(
            id=c.id, kind=c.details.get("kind", "?"), role=c.details.get("role", ""), verdict=c.verdict,
            components=tuple(c.components), receivers=tuple(getattr(spec, "receivers", ()) or ()),
            threshold=c.details.get("threshold"), measured=measured, note=note))
    return out


def _faithfulness(model: "LoadedModel", components: Sequence[str], prompts: "PromptPairs",
                  scope: tuple[int, ...] | None, method: str) -> float | None:
    if not components:
        return 0.0  # keeping nothing keeps nothing (the ablation's own definition)
    return measure_set(model, components, prompts, kind="faithfulness", method=method, positions=scope)


def _baselines(q: BenchmarkQuestion, seed: int, model: "LoadedModel", run, k: int, key_prompts: "PromptPairs",
               scope: tuple[int, ...] | None) -> dict[str, BaselineScore]:
    discovery = discovery_prompts(model, run)
    method = q.key.method or KeyMethod(recipe="the default brute-force component rule")
    runs: dict[str, list[BaselineRun]] = {
        "exhaustive": [run_exhaustive(model, discovery, method)],
        "attribution_topk": [run_attribution_topk(model, discovery, k)],
        "random": [draw_random(model, k, seed=1000 * seed + i) for i in range(RANDOM_DRAWS)],
    }
    out = {}
    for name, draws in runs.items():
        scores = [recall_precision(d.components, q.key.components) for d in draws]
        faithful = [_faithfulness(model, d.components, key_prompts, scope, "resample") for d in draws]
        out[name] = BaselineScore(
            components=draws[0].components, recall=mean(s[0] for s in scores), precision=mean(s[1] for s in scores),
            faithfulness=mean(faithful), forward_passes=mean(d.forward_passes for d in draws),
            forward_rows=mean(d.forward_rows for d in draws), wall_s=round(mean(d.wall_s for d in draws), 2))
    return out


def discovery_prompts(model: "LoadedModel", run) -> "PromptPairs":
    """The discovery prompts the run used, rebuilt from its recorded behaviour by the same code
    (`agents.steps.Toolbox.prompts` needs only the model and the behaviour)."""
    from agents.behavior import BehaviorSpec
    from agents.steps import Toolbox

    behavior = BehaviorSpec.model_validate(run.record.settings["behavior"])
    return Toolbox(model=model, run=None, behavior=behavior).prompts  # type: ignore[arg-type]


def summarise_question(q: BenchmarkQuestion, runs: Sequence[RunScore]) -> QuestionScore:
    planted = [r.planted_first for r in runs if r.planted_first is not None]
    names = dict.fromkeys(name for r in runs for name in r.baselines)
    baselines = {name: {field: _round(mean(getattr(r.baselines[name], field) for r in runs if name in r.baselines))
                        for field in ("recall", "precision", "faithfulness", "forward_passes", "forward_rows",
                                      "wall_s")}
                 for name in names}
    return QuestionScore(
        id=q.id, model=q.model, question=q.text, key=q.key.name, seeds=tuple(r.seed for r in runs),
        recall=mean(r.recall for r in runs), precision=mean(r.precision for r in runs),
        verdict_accuracy=mean(r.verdict_accuracy for r in runs), faithfulness=mean(r.faithfulness for r in runs),
        forward_passes=mean(r.forward_passes for r in runs), wall_s=round(mean(r.wall_s for r in runs), 2),
        experiments=mean(r.experiments for r in runs), tokens=mean(r.tokens for r in runs),
        forward_rows=mean(r.forward_rows for r in runs), forward_pass_ratio=mean(r.forward_pass_ratio for r in runs),
        forward_row_ratio=mean(r.forward_row_ratio for r in runs),
        edge_recall=mean(r.edge_recall for r in runs), edge_precision=mean(r.edge_precision for r in runs),
        planted_first=sum(planted) / len(planted) if planted else None,
        rows_by_step={step: mean(r.rows_by_step.get(step, 0) for r in runs)
                      for step in dict.fromkeys(s for r in runs for s in r.rows_by_step)},
        baselines=baselines, runs=tuple(runs))


def summarise(questions: Sequence[QuestionScore]) -> dict[str, Any]:
    """Means over questions, the planted count over runs, and each target: value and met."""
    fields = ("recall", "precision", "verdict_accuracy", "faithfulness", "edge_recall", "edge_precision",
              "forward_passes", "forward_rows", "forward_pass_ratio", "forward_row_ratio", "wall_s", "experiments",
              "tokens")
    out: dict[str, Any] = {"questions": len(questions), "runs": sum(len(q.runs) for q in questions),
                           "errors": sum(r.error is not None for q in questions for r in q.runs)}
    out.update({f: _round(mean(getattr(q, f) for q in questions)) for f in fields})
    claims = [c for q in questions for r in q.runs for c in r.claims]
    out["claims"] = {v: sum(c.verdict == v for c in claims) for v in ("supported", "refuted", "inconclusive")}
    out["claims"]["judged"] = sum(c.right is not None for c in claims)
    out["claims"]["right"] = sum(bool(c.right) for c in claims)
    planted = [r.planted_first for q in questions for r in q.runs if r.planted_first is not None]
    # the target is about the planted question asked with >= PLANTED_SEEDS seeds; every run on a
    # planted key (other phrasings included) is counted beside it
    seeded = [r.planted_first for q in questions if len(q.runs) >= PLANTED_SEEDS
              for r in q.runs if r.planted_first is not None]
    out["planted_first"] = {"runs": len(planted), "first": sum(planted),
                            "seeded_runs": len(seeded), "seeded_first": sum(seeded)}
    targets = {}
    for name, (op, bound) in TARGETS.items():
        value = out[name]
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        targets[name] = {"value": value, "target": f"{op} {bound}", "met": met}
    rows = out["forward_row_ratio"]  # the forward-pass target again, counted in sequences
    targets["forward_row_ratio"] = {"value": rows, "target": "<= 0.3", "met": rows is not None and rows <= 0.3}
    targets["planted_first"] = {"value": f"{sum(seeded)}/{len(seeded)}",
                                "target": f"every seed of a planted question asked with >= {PLANTED_SEEDS} seeds",
                                "met": len(seeded) >= PLANTED_SEEDS and all(seeded)}
    out["targets"] = targets
    out["rows_by_step"] = rows_by_step(questions)
    return out


def rows_by_step(questions: Sequence[QuestionScore]) -> dict[str, float]:
    """Where the agent's forward rows go: each step's share of a question's rows, averaged over
    questions (``other``: rows no step ran, such as intake's), largest first."""
    shares: list[dict[str, float]] = []
    for q in questions:
        if not q.forward_rows:
            continue
        share = {step: rows / q.forward_rows for step, rows in q.rows_by_step.items()}
        share["other"] = max(0.0, 1 - sum(share.values()))
        shares.append(share)
    steps = dict.fromkeys(step for share in shares for step in share)
    out = {step: round(sum(share.get(step, 0.0) for share in shares) / len(shares), 4) for step in steps}
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def summarise_baselines(questions: Sequence[QuestionScore]) -> dict[str, dict[str, Any]]:
    """Each baseline's means over questions, with the agent's beside them."""
    if not questions:
        return {}
    out = {"agent": {f: _round(mean(getattr(q, f) for q in questions))
                     for f in ("recall", "precision", "faithfulness", "forward_passes", "forward_rows", "wall_s")}}
    for name in dict.fromkeys(name for q in questions for name in q.baselines):
        out[name] = {f: _round(mean(q.baselines[name][f] for q in questions if name in q.baselines))
                     for f in ("recall", "precision", "faithfulness", "forward_passes", "forward_rows", "wall_s")}
    return out


def format_scoreboard(board: Scoreboard) -> str:
    """The scoreboard as a text table."""
    lines = [f"brain: {board.brain}   questions: {board.questions_file}   workspace: {board.workspace}", "",
             f"{'question':<26}{'model':<18}{'runs':>5}{'recall':>8}{'prec':>7}{'verdict':>9}{'faithful':>10}"
             f"{'fwd':>7}{'÷exh':>7}{'rows÷':>7}{'wall s':>8}"]
    for q in board.questions:
        lines.append(f"{q.id[:25]:<26}{q.model[:17]:<18}{len(q.runs):>5}{_fmt(q.recall):>8}{_fmt(q.precision):>7}"
                     f"{_fmt(q.verdict_accuracy):>9}{_fmt(q.faithfulness):>10}{q.forward_passes:>7.0f}"
                     f"{_fmt(q.forward_pass_ratio, 1):>7}{_fmt(q.forward_row_ratio, 1):>7}{q.wall_s:>8.1f}")
    s = board.summary
    lines.append(f"{'mean':<26}{'':<18}{s['runs']:>5}{_fmt(s['recall']):>8}{_fmt(s['precision']):>7}"
                 f"{_fmt(s['verdict_accuracy']):>9}{_fmt(s['faithfulness']):>10}{s['forward_passes'] or 0:>7.0f}"
                 f"{_fmt(s['forward_pass_ratio'], 1):>7}{_fmt(s['forward_row_ratio'], 1):>7}{s['wall_s'] or 0:>8.1f}")
    lines += ["", f"{'baseline (mean)':<26}{'recall':>8}{'prec':>7}{'faithful':>10}{'fwd':>9}{'rows':>9}{'wall s':>8}"]
    for name, b in board.baselines.items():
        lines.append(f"{name:<26}{_fmt(b['recall']):>8}{_fmt(b['precision']):>7}{_fmt(b['faithfulness']):>10}"
                     f"{b['forward_passes'] or 0:>9.1f}{b['forward_rows'] or 0:>9.0f}{b['wall_s'] or 0:>8.1f}")
    if s.get("rows_by_step"):
        lines += ["", "agent's forward rows by step (mean share): "
                  + ", ".join(f"{step} {share:.2f}" for step, share in s["rows_by_step"].items())]
    p = s["planted_first"]
    lines += ["", f"planted component first: {p['seeded_first']}/{p['seeded_runs']} seeds of the seeded planted "
              f"question(s); {p['first']}/{p['runs']} runs on planted keys in all", "", "targets:"]
    for name, t in s["targets"].items():
        value = t["value"] if isinstance(t["value"], str) else _fmt(t["value"])
        lines.append(f"  {name:<20}{value:>8}  (target {t['target']}): {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
