"""Would a pruning pass after circuit growth raise precision? A study on a finished `sleuth eval`.

The agent's circuit is the smallest *prefix* of its ranking that keeps 80% of the logit
difference under both resample and mean ablation (`agents.localize.grow_circuit`); the answer keys
count the components that matter *individually*. On gemma-3-270m that prefix holds 15–41
components for keys of 9–11, which is most of the precision the scoreboard loses. This study asks
what a pruning pass would change, without changing the agent: for each stored investigation
whose circuit the critic supported, drop the circuit's components one at a time, lowest-ranked
first, keeping a drop when what is left still meets the growth test on the discovery prompts —
faithfulness ≥ 0.8 under both methods, or with ``--two-sided`` within 0.2 of 1 (a drop that lifts
faithfulness far above 1 removed a component that works against the answer). The critic then
re-tests the pruned circuit's two claims (keeps ≥ 0.8; removing it removes ≥ 0.5) on the run's
fresh prompts with the original claims' seeds, Holm over the run's claims with those two
p-values in place of the circuit's. Where both are supported they replace the circuit's claims;
otherwise the run keeps its circuit. Reported per run: circuit sizes, the pruned claims'
verdicts, recall and precision against the key before and after, the key components pruned
away, and the forward passes of the pruning (the critic re-tests a circuit either way).

The eval's workspaces are only read; the study's experiments go to a workspace of its own.

    python -m evals.prune_study sleuth-eval/<eval>/scoreboard.json [--two-sided] [--only gemma] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from agents.behavior import BehaviorSpec
from agents.claims import SetClaim
from agents.critic import examine_claim, verdict_for
from agents.localize import keep_faithfulness
from agents.steps import Toolbox, ToolboxRun
from evals.keys.schema import load_key
from evals.score import recall_precision, reported_components
from memory.runstore import RunStore
from memory.workspace import Workspace
from tools.errors import UserInputError
from tools.stats import holm

if TYPE_CHECKING:
    from tools.experiments.prompts import PromptPairs
    from tools.loading import LoadedModel

def prune(run: ToolboxRun, model: "LoadedModel", prompts: "PromptPairs", circuit: Sequence[str], *,
          positions: tuple[int, ...] | None, target: float = 0.8, two_sided: bool = False
          ) -> tuple[tuple[str, ...], list[tuple[str, float | None, bool]]]:
    """``circuit`` pruned backwards (its last, lowest-ranked component first), and each trial:
    (the component dropped, the smallest faithfulness over resample and mean ablation without
    it — `agents.localize.keep_faithfulness`, as circuit growth measures —, kept dropped)."""
    current = list(circuit)
    trials = []
    for component in reversed(circuit):
        if len(current) == 1:
            break
        rest = [c for c in current if c != component]
        values = list(keep_faithfulness(run, model, prompts, rest, positions=positions)[0].values())
        low = None if any(v is None for v in values) else min(values)
        ok = low is not None and low >= target and (not two_sided or max(values) <= 2 - target)
        trials.append((component, low, ok))
        if ok:
            current = rest
    return tuple(current), trials


def study_run(entry: dict[str, Any], key: set[str], model: "LoadedModel", scratch: Path, *,
              two_sided: bool) -> dict[str, Any]:
    """The study of one scored run (``entry``: a scoreboard's run, with its workspace and run id)."""
    with Workspace.open(entry["workspace"]) as ws:
        stored = RunStore(ws).open(entry["run_id"])
        claims, settings = stored.claims(), stored.record.settings
    before = set(reported_components(claims))
    recall, precision = recall_precision(before, key)
    row: dict[str, Any] = {"workspace": entry["workspace"], "run_id": entry["run_id"], "key": len(key),
                           "reported_before": len(before), "recall_before": recall, "precision_before": precision}
    circuit_claims = [c for c in claims if c.id.startswith("circuit-")]
    faithful = [c for c in circuit_claims if c.details.get("kind") == "faithfulness" and c.verdict == "supported"]
    if not faithful:
        return {**row, "circuit": None, "note": "no supported circuit", "recall_after": row["recall_before"],
                "precision_after": row["precision_before"], "agent_calls": entry["forward_passes"]}
    circuit = list(faithful[-1].components)
    behavior = BehaviorSpec.model_validate(settings["behavior"])
    with Workspace.open(scratch, writer=True) as ws:
        run = RunStore(ws).create(f"prune study of {entry['run_id']}", model.model_id, weights_hash=model.weights_hash)
        box = Toolbox(model=model, run=run, behavior=behavior)
        through = ToolboxRun(box)
        mark = model.forwards.mark()
        pruned, trials = prune(through, model, box.prompts, circuit, positions=box.positions, two_sided=two_sided)
        calls, rows = model.forwards.since(mark)
        others = [c for c in claims if not c.id.startswith("circuit-")]
        named = tuple({*(x for c in others for x in c.components), *pruned})
        seed = faithful[-1].details.get("seed", 0)
        necessary_seed = next((c.details.get("seed", seed) for c in circuit_claims
                               if c.details.get("kind") == "necessity"), seed)
        tests = [examine_claim(through, model, SetClaim(id="pruned-faithful", components=pruned, kind="faithfulness",
                                                        threshold=0.8, method="resample"),
                               box.fresh_prompts, seed=seed, named=named),
                 examine_claim(through, model, SetClaim(id="pruned-necessary", components=pruned, kind="necessity",
                                                        threshold=0.5, method="resample"),
                               box.fresh_prompts, seed=necessary_seed, named=named)]
    judged = [c for c in others if c.details.get("p_value") is not None]
    adjusted = holm([c.details["p_value"] for c in judged] + [t.p_value for t in tests])[len(judged):]
    verdicts = [verdict_for(t.model_copy(update={"adjusted_p": p})) for t, p in zip(tests, adjusted)]
    replaced = all(v == "supported" for v in verdicts)
    after = set(reported_components(others)) | set(pruned) if replaced else before
    recall, precision = recall_precision(after, key)
    return {**row, "circuit": len(circuit), "pruned": len(pruned), "verdicts": verdicts,
            "pruned_faithfulness": tests[0].replication.estimate, "replaced": replaced,
            "reported_after": len(after), "recall_after": recall, "precision_after": precision,
            "key_pruned_away": sorted((set(circuit) - set(pruned)) & key), "pruning_calls": calls,
            "pruning_rows": rows, "agent_calls": entry["forward_passes"], "trials": trials}


def main(argv: Sequence[str] | None = None) -> int:
    from tools.loading import load_model

    parser = argparse.ArgumentParser(prog="python -m evals.prune_study", description=__doc__.splitlines()[0])
    parser.add_argument("scoreboard", help="an eval's scoreboard.json")
    parser.add_argument("--two-sided", action="store_true", help="keep a drop only when faithfulness stays within 0.2 of 1")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT", help="only questions whose id contains one")
    parser.add_argument("--workspace", default=None, help="where the study's experiments go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    args = parser.parse_args(argv)
    try:
        board = json.loads(Path(args.scoreboard).read_text(encoding="utf-8"))
        questions = board["questions"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"prune_study: {args.scoreboard} is not a readable scoreboard.json ({error})", file=sys.stderr)
        return 2
    scratch = Path(args.workspace or tempfile.mkdtemp(prefix="prune-study-"))
    models: dict[str, "LoadedModel"] = {}
    out = []
    try:
        for q in questions:
            if args.only and not any(t in q["id"] for t in args.only):
                continue
            model = models.get(q["model"]) or models.setdefault(q["model"], load_model(q["model"]))
            key = set(load_key(q["key"]).components)
            for entry in q["runs"]:
                entry = {**entry, "workspace": _located(entry["workspace"], Path(args.scoreboard))}
                row = {"id": q["id"], "seed": entry["seed"], **study_run(entry, key, model, scratch,
                                                                        two_sided=args.two_sided)}
                out.append(row)
                if not args.json:
                    print(_line(row), flush=True)
    except UserInputError as error:
        print(f"prune_study: {error}", file=sys.stderr)
        return 2
    summary = summarise(out)
    if args.json:
        print(json.dumps({"two_sided": args.two_sided, "runs": out, "summary": summary}, indent=1))
    else:
        print("mean over questions: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    return 0


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Recall and precision before and after, averaged over each question's runs and then over
    questions (as the scoreboard averages), and the pruning's forward passes over the agent's."""
    by_question: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_question.setdefault(row["id"], []).append(row)
    out = {}
    for field in ("recall_before", "recall_after", "precision_before", "precision_after"):
        means = []
        for runs in by_question.values():
            values = [r[field] for r in runs]
            if all(v is not None for v in values):
                means.append(sum(values) / len(values))
        out[field] = sum(means) / len(means) if means else float("nan")
    agent = sum(r.get("agent_calls", 0) for r in rows)
    out["pruning_calls_over_agent"] = sum(r.get("pruning_calls", 0) for r in rows) / agent if agent else 0.0
    return out


def _located(workspace: str, scoreboard: Path) -> str:
    """A run's workspace as the scoreboard names it (relative to where the eval ran), else the
    folder of that name beside the scoreboard (an eval's own ``scoreboard.json`` sits in its folder)."""
    if Path(workspace).is_dir():
        return workspace
    beside = scoreboard.parent / Path(workspace).name
    return str(beside) if beside.is_dir() else workspace


def _line(row: dict[str, Any]) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    if row.get("circuit") is None:
        return f"{row['id']} seed {row['seed']}: {row['note']}"
    return (f"{row['id']} seed {row['seed']}: circuit {row['circuit']} -> {row['pruned']} "
            f"({'/'.join(row['verdicts'])}; {'replaced' if row['replaced'] else 'kept'}), recall "
            f"{f(row['recall_before'])} -> {f(row['recall_after'])}, precision {f(row['precision_before'])} -> "
            f"{f(row['precision_after'])}, key pruned away {row['key_pruned_away'] or 'none'}, "
            f"+{row['pruning_calls']} calls to the agent's {row['agent_calls']}")


if __name__ == "__main__":
    raise SystemExit(main())
