"""The ``sleuth`` command line.

User mistakes (``UserInputError``) become one line on stderr and exit code 2; anything else is
a bug and keeps its traceback. Logging handlers are installed here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from tools.errors import Interrupted, UserInputError

DEFAULT_MODEL = "gemma-3-270m"

log = logging.getLogger("sleuth")


def _cmd_check(args: argparse.Namespace) -> int:
    from tools.behaviour import check_behaviours
    from tools.loading import load_model
    from tools.tasks import TASK_NAMES, get_task
    from tools.tasks.declared import DECLARED_BEHAVIOURS, declared_tasks

    if args.n < 1:
        raise UserInputError(f"--n must be at least 1, not {args.n}")
    # Validate the task name before paying for a model load.
    if args.task != "all" and args.task not in DECLARED_BEHAVIOURS:
        get_task(args.task)
    loaded = load_model(args.model, device=args.device)
    extra = declared_tasks(loaded.source)
    if args.task == "all":
        tasks = {name: get_task(name) for name in TASK_NAMES} | extra
    elif args.task in extra:
        tasks = {args.task: extra[args.task]}
    elif args.task in DECLARED_BEHAVIOURS:
        raise UserInputError(f"model {args.model!r} declares no {args.task!r} behaviour (no ground_truth.json)")
    else:
        tasks = {args.task: get_task(args.task)}
    rows = check_behaviours(loaded.hf_model, loaded.tokenizer, tasks, n=args.n, seed=args.seed)
    if args.task != "all" and rows[0].score is None:
        raise UserInputError(f"task {args.task!r} cannot be measured on {args.model!r}: {rows[0].reason}")
    if args.json:
        table = {}
        for r in rows:
            if r.score is None:
                table[r.task] = {"accuracy": None, "logit_diff": None, "n": 0, "reason": r.reason}
            else:
                s = r.score
                table[r.task] = {"accuracy": round(s.accuracy, 4), "logit_diff": round(s.logit_diff, 4),
                                 "prob_diff": round(s.prob_diff, 4), "n": s.n}
        print(json.dumps({"model": loaded.model_id, "weights_hash": loaded.weights_hash, "tasks": table}, indent=1))
    else:
        print(f"model: {loaded.model_id}  (weights {loaded.weights_hash[:12]})  held-out split, seed {args.seed}")
        print(f"{'task':<14}{'accuracy':>10}{'logit diff':>12}{'prob diff':>11}{'n':>6}")
        for r in rows:
            if r.score is None:
                print(f"{r.task:<14}{'—':>10}{'—':>12}{'—':>11}{0:>6}   not expressible: {r.reason}")
            else:
                s = r.score
                print(f"{r.task:<14}{s.accuracy:>10.3f}{s.logit_diff:>12.2f}{s.prob_diff:>11.3f}{s.n:>6}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from evals.bench import run_bench  # benchmarks live with the evals (they import TransformerLens)

    report = run_bench(quick=args.quick, repeats=args.repeats, only=args.only or (),
                       threads=args.threads)
    if args.json:
        print(json.dumps(report.as_json(), indent=1))
    else:
        print(report.table())
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    workspace = Workspace.open(args.workspace)
    rows = RunStore(workspace).list()
    if args.json:
        print(json.dumps({"workspace": str(workspace.path),
                          "runs": [r.model_dump(mode="json") for r in rows]}, indent=1))
        return 0
    print(f"workspace: {workspace.path}  ({len(rows)} run{'s' * (len(rows) != 1)})")
    if not rows:
        return 0
    print(f"{'run':<24}{'status':<18}{'model':<22}{'sup':>4}{'ref':>4}{'exp':>5}{'hits':>5}{'wall s':>8}{'$':>7}  question")
    for r in rows:
        if r.damaged:
            print(f"{r.id:<24}{'DAMAGED':<18}{r.damaged}")
            continue
        c = r.cost
        question = r.question if len(r.question) <= 60 else r.question[:57] + "..."
        print(f"{r.id:<24}{r.status:<18}{r.model_id[:21]:<22}{r.supported:>4}{r.refuted:>4}"
              f"{c.experiments:>5}{c.cache_hits:>5}{c.wall_s:>8.1f}{c.dollars:>7.2f}  {question}")
    return 0


def _cmd_memory_search(args: argparse.Namespace) -> int:
    from memory.vector import CHROMA_URL_ENV, VectorMemory
    from memory.workspace import Workspace
    from tools.errors import StorageError

    if not args.text.strip():
        raise UserInputError("memory search needs some text to search for")
    if args.k < 1:
        raise UserInputError(f"-k must be at least 1, not {args.k}")
    url = args.chroma_url or os.environ.get(CHROMA_URL_ENV)
    workspace = None
    if not url:
        workspace = Workspace.open(args.workspace)
        if not workspace.chroma_dir.is_dir():
            raise StorageError(f"workspace {workspace.path} has no vector memory yet (no investigation has stored findings)")
    memory = VectorMemory.open(workspace, url=url, namespace=args.namespace)
    hits = memory.search(args.text, model_id=args.model, k=args.k)
    if args.json:
        print(json.dumps({"query": args.text, "model": args.model,
                          "hits": [h.model_dump(mode="json") for h in hits]}, indent=1))
        return 0
    if not hits:
        print("no stored findings" + (f" for model {args.model}" if args.model else ""))
    for h in hits:
        m = h.metadata
        where = " ".join(f"{k}={m[k]}" for k in ("model_id", "run_id", "verdict") if k in m)
        comps = ",".join(m.get("components", []))
        print(f"{1 - h.distance:6.3f}  {h.collection:<11} {h.text}")
        print(f"        {where}{'  components=' + comps if comps else ''}")
    return 0


def _print_summary(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=1))
        return
    print(f"run {out['run_id']}: {out['status']}")
    if out.get("note"):
        print(f"note: {out['note']}")
    print(f"answer: {out['answer']}")
    for c in out["claims"]:
        low, high = c["ci"]
        print(f"  [{c['verdict']}] {c['statement']}  (measured {c['effect']:.3f}, 95% CI {low:.3f}-{high:.3f}, n={c['n']})")
    cost = out["cost"]
    print(f"cost: {cost['experiments']} experiments, {cost['forward_passes']} forward passes, {cost['wall_s']:.1f} s")
    print(f"report: {out['report']['html']} (also {out['report']['md']})")


def _cmd_ask(args: argparse.Namespace) -> int:
    from agents.budget import Budget
    from agents.investigate import ask
    from agents.progress import Progress

    budget = Budget.from_flags(max_experiments=args.max_experiments, max_time=args.max_time,
                               max_tokens=args.max_tokens, max_dollars=args.max_dollars)
    llm = _llm_settings(args) if args.brain == "openai" else None
    out = ask(args.question, model=args.model, spec_file=args.spec, workspace=args.workspace,
              chroma_url=args.chroma_url, seed=args.seed, n=args.n, budget=budget, brain=args.brain, llm=llm,
              remote=args.remote, lock_timeout=args.lock_timeout, progress=Progress())
    _print_summary(out, args.json)
    return 0


def _llm_settings(args: argparse.Namespace):
    """The openai brain's settings: the environment's, overridden by the --llm-* flags."""
    from agents.llm.settings import LLMSettings

    overrides = {k: v for k, v in (("model", args.llm_model), ("base_url", args.llm_base_url),
                                   ("timeout_s", args.llm_timeout)) if v is not None}
    try:
        return LLMSettings(**overrides)
    except ValueError as error:  # pydantic's ValidationError: a bad environment variable or flag
        raise UserInputError(f"LLM settings: {str(error).splitlines()[-1].strip()}") from None


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    # the benchmark lives with the evals (which may import everything); imported here only
    from evals.harness import PLAN_FILE, format_scoreboard, resume_plan, run_benchmark
    from evals.questions import BENCHMARK, eval_questions
    from memory.runstore import new_run_id
    from tools.atomic import atomic_write_text

    if args.resume:
        given = [flag for flag, value in (("--questions", args.questions), ("--only", args.only),
                                          ("--workspace", args.workspace),
                                          ("--seed-shift", args.seed_shift is not None)) if value]
        if given:
            raise UserInputError(f"--resume goes on with the eval's own questions and folder; drop {', '.join(given)}")
        root = Path(args.resume).resolve()
        plan, questions = resume_plan(root)
        if args.brain is not None and args.brain != plan.brain:
            raise UserInputError(f"--brain {args.brain}: the eval in {root} began with --brain {plan.brain}")
        brain, path = plan.brain, Path(plan.questions_file)
    else:
        plan, brain = None, args.brain or "heuristic"
        path = Path(args.questions) if args.questions else BENCHMARK
        questions = eval_questions(path, args.only or (), args.seed_shift or 0)
        root = Path(args.workspace or "sleuth-eval") / new_run_id()
        if root.parent.exists() and not root.parent.is_dir():
            raise UserInputError(f"--workspace {root.parent} is a file, not a folder")
    llm = _llm_settings(args) if brain == "openai" else None
    if args.threads is not None:
        if args.threads < 1:
            raise UserInputError(f"--threads must be at least 1, not {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    try:
        board = run_benchmark(questions, root=root, questions_file=path, brain=brain, llm=llm, only=args.only or (),
                              seed_shift=args.seed_shift or 0, resume=plan,
                              log=lambda line: print(f"eval: {line}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        if not (root / PLAN_FILE).exists():  # stopped before it began: nothing to go on from
            raise
        raise Interrupted(f"the eval keeps what it scored in {root}, `sleuth eval --resume {root}` goes on") from None
    text = board.model_dump_json(indent=1)  # run_benchmark wrote it to root/scoreboard.json
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    if args.json:
        print(text)
    else:
        print(format_scoreboard(board))
        print(f"\nscoreboard: {Path(board.workspace) / 'scoreboard.json'}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from agents.investigate import resume
    from agents.progress import Progress

    _print_summary(resume(args.run_id, workspace=args.workspace, chroma_url=args.chroma_url,
                          lock_timeout=args.lock_timeout, progress=Progress()), args.json)
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from agents.diff import diff_models

    out = diff_models(args.question, base=args.base, model=args.model, spec_file=args.spec, workspace=args.workspace,
                      seed=args.seed, n=args.n, lock_timeout=args.lock_timeout)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"run {out['run_id']}: {out['base']['model_id']} -> {out['model']['model_id']} on {out['behaviour']} "
          f"(n={out['n']}, delta {out['margins']['logit']:.3f} logits / {out['margins']['attention']} attention)")
    print(f"{out['significant']} of {out['tests']} component measures changed significantly")
    for c in [c for c in out["changes"] if c["significant"]][:12]:
        print(f"  {c['component']:<12}{c['measure']:<22}{c['a']:>9.3f} -> {c['b']:>9.3f}  delta {c['delta']:+.3f} "
              f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]  p(Holm) {c['adjusted_p']:.3g}")
    for item in out["investigation"]:
        for kind in ("transfer", "necessity"):
            c = item.get(kind)
            if c:
                print(f"  investigated {item['component']} ({kind}): {c['effect']:.3f} (CI {c['ci'][0]:.3f}-"
                      f"{c['ci'][1]:.3f}) vs >= {c['threshold']:.2f}: {c['verdict']}")
    print(f"report: {out['report']['html']} (also {out['report']['md']})")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from agents.watch import watch

    out = watch(args.checkpoints, behaviours=args.behaviours, workspace=args.workspace, n=args.n, seed=args.seed,
                lock_timeout=args.lock_timeout)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"run {out['run_id']}: {len(out['checkpoints'])} checkpoints")
    for name, b in out["behaviours"].items():
        if b["appears"]:
            heads = ", ".join(b["rising_heads"][:4]) or "none"
            print(f"  {name}: appears at {b['appears']['checkpoint']}; heads rising with it: {heads}")
        elif b["present_throughout"]:
            print(f"  {name}: present at every checkpoint")
        else:
            print(f"  {name}: does not appear (last logit diff {b['readings'][-1]['logit_diff']:.2f})")
        print(f"    {len(b['shifts'])} mechanism shift(s)")
    print(f"report: {out['report']['html']} (also {out['report']['md']})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from agents.investigate import open_run, report_text

    fmt = args.format or ("html" if args.open else "md")
    if fmt not in ("md", "html"):
        raise UserInputError(f"--format must be md or html, not {fmt!r}")
    if not args.open:
        print(report_text(args.run_id, workspace=args.workspace, fmt=fmt), end="")
        return 0
    from agents.report.render import write_reports

    run = open_run(args.run_id, workspace=args.workspace)
    if run.investigation() is None:
        raise UserInputError(f"run {run.id} has no report yet (status {run.record.status})")
    # the reports are derived files: refresh them in place (atomic writes, no lock needed)
    paths = write_reports(run, folder=run.folder / "reports")
    path = paths[fmt]
    print(path)
    import webbrowser

    if not webbrowser.open(path.resolve().as_uri()):
        print(f"note: no browser could be started here; open {path} yourself", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from agents.serve import serve

    if not 0 <= args.port <= 65535:
        raise UserInputError(f"--port must be between 0 and 65535, not {args.port}")
    serve(args.workspace, port=args.port)
    return 0


def _seed(text: str) -> int:
    """argparse type of every ``--seed``: `tools.tasks.check_seed` on the number given."""
    from tools.tasks import MAX_SEED, check_seed

    try:
        return check_seed(int(text))
    except (ValueError, UserInputError):
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, not {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported like every other: one line, exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"sleuth: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sleuth", description="circuitsleuth: an autonomous interpretability lab")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="behaviour table of a model on the task generators' held-out split")
    c.add_argument("--model", default=DEFAULT_MODEL,
                   help="local model folder, hub id, 'gemma-3-270m' (default), 'organism-default' or 'organism-planted'")
    c.add_argument("--task", default="all", help="ioi, induction, facts, greater_than, pronoun, trigger, or all (default)")
    c.add_argument("--n", type=int, default=200, help="prompts per task (default 200)")
    c.add_argument("--seed", type=_seed, default=1, help="prompt-set seed (default 1)")
    c.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_check)

    b = sub.add_parser("bench", help="time our experiments against TransformerLens 4 and bare "
                       "Hugging Face on the same weights (ratios and max abs diffs)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: tiny prompt sets and models, no gemma, one repeat")
    b.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per side after one warm-up (default 3; 1 with --quick)")
    b.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only the cases whose name contains one of these (e.g. gemma, behaviour)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the run (default: torch's own choice)")
    b.set_defaults(func=_cmd_bench)

    workspace_help = "workspace folder (default: $SLEUTH_WORKSPACE, else ./sleuth-workspace)"
    lock_help = ("how long to wait for another writer of the workspace to finish "
                 "(default: $SLEUTH_LOCK_TIMEOUT, else 10 s)")
    r = sub.add_parser("runs", help="list the runs of a workspace: question, model, status, claims, cost")
    r.add_argument("--workspace", default=None, help=workspace_help)
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=_cmd_runs)

    a = sub.add_parser("ask", help="investigate why a model does something (heuristic brain, offline)")
    a.add_argument("question", metavar="QUESTION", nargs="?", default="",
                   help='e.g. \'Why does the model complete "When Mary and John went to the store, John gave a '
                   'drink to" with "Mary"?\' or "indirect object identification"')
    a.add_argument("--model", default=DEFAULT_MODEL, help="model folder, hub id, gemma-3-270m (default), organism-default")
    a.add_argument("--spec", default=None, metavar="FILE", help="a YAML/JSON behaviour spec instead of a question")
    a.add_argument("--seed", type=_seed, default=0, help="prompt-generator seed (default 0)")
    a.add_argument("--n", type=int, default=None,
                   help="prompts per set (discovery, fresh): default a spec file's own n, else 64 for models "
                        "under 100M parameters and 32 above")
    a.add_argument("--brain", default="heuristic", choices=("heuristic", "openai"),
                   help="who plans: the offline playbook (default) or an OpenAI-compatible LLM")
    a.add_argument("--remote", action="store_true", help="run the model's traces on NDIF (needs NDIF_API_KEY)")
    a.add_argument("--max-experiments", type=int, default=None, help="stop after this many experiments")
    a.add_argument("--max-time", default=None, metavar="DURATION",
                   help="stop planning after this much wall time (8h, 1h30m, 90s); the report says what is left")
    a.add_argument("--llm-model", default=None, help="openai brain: the model (default $SLEUTH_LLM_MODEL, else gpt-4o-mini)")
    a.add_argument("--llm-base-url", default=None,
                   help="openai brain: an OpenAI-compatible endpoint (default $OPENAI_BASE_URL, else OpenAI)")
    a.add_argument("--llm-timeout", type=float, default=None, help="openai brain: seconds per call (default 60)")
    a.add_argument("--max-tokens", type=int, default=None, help="LLM brains: stop after this many tokens")
    a.add_argument("--max-dollars", type=float, default=None, help="LLM brains: stop after this much spend")
    rs = sub.add_parser("resume", help="continue a killed or interrupted run from its last checkpoint")
    rs.add_argument("run_id", metavar="RUN_ID", help="a run id, or 'latest' for the workspace's newest run")
    for writer, command in ((a, _cmd_ask), (rs, _cmd_resume)):  # both write to a workspace
        writer.add_argument("--workspace", default=None, help=workspace_help)
        writer.add_argument("--chroma-url", default=None,
                            help="a chroma server for the vector memory (default: embedded)")
        writer.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS", help=lock_help)
        writer.add_argument("--json", action="store_true", help="end with one JSON object")
        writer.set_defaults(func=command)

    d = sub.add_parser("diff", help="what changed inside a model against a base model, for one behaviour")
    d.add_argument("question", metavar="QUESTION", nargs="?", default="",
                   help='the behaviour, as for ask: "indirect object identification", "the trigger", a quoted prompt')
    d.add_argument("--base", required=True, help="the base model (folder, hub id, organism-default, ...)")
    d.add_argument("--model", required=True, help="the changed model (fine-tuned, planted, ...)")
    d.add_argument("--spec", default=None, metavar="FILE", help="a YAML/JSON behaviour spec instead of a question")
    d.add_argument("--seed", type=_seed, default=0, help="prompt-sampling seed (default 0)")
    d.add_argument("--n", type=int, default=None,
                   help="prompts per set (discovery, fresh): default a spec file's own n, else 64 for models "
                        "under 100M parameters and 32 above")
    wt = sub.add_parser("watch", help="canary behaviours and mechanism fingerprints across checkpoints")
    wt.add_argument("checkpoints", metavar="CHECKPOINT_DIR", nargs="+",
                    help="checkpoint folders in order, or folders of checkpoint-<step> folders (expanded by step)")
    wt.add_argument("--behaviours", default=None, metavar="FILE",
                    help="YAML/JSON list of behaviours (task names or prompt specs); default: every task the "
                    "tokenizer can express")
    wt.add_argument("--n", type=int, default=32, help="prompts per canary (default 32)")
    wt.add_argument("--seed", type=_seed, default=1, help="seed of the canaries' held-out prompts (default 1)")
    for writer, command in ((d, _cmd_diff), (wt, _cmd_watch)):
        writer.add_argument("--workspace", default=None, help=workspace_help)
        writer.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS", help=lock_help)
        writer.add_argument("--json", action="store_true", help="print one JSON object")
        writer.set_defaults(func=command)

    e = sub.add_parser("eval", help="the benchmark: investigations scored against answer keys, with baselines")
    e.add_argument("--brain", default=None, choices=("heuristic", "openai"),
                   help="who plans the investigations (default heuristic; with --resume, the eval's own)")
    e.add_argument("--questions", default=None, metavar="FILE",
                   help="a question file with answer keys (YAML/JSON; default: the shipped benchmark)")
    e.add_argument("--only", nargs="+", metavar="TEXT",
                   help="only questions whose id or model contains one of these (e.g. organism, gemma)")
    e.add_argument("--seed-shift", type=int, default=None, metavar="K",
                   help="ask every question again with other seeds: each question's seeds move by K times their "
                   "span, so K = 1, 2, ... give disjoint seed sets (default 0: the question file's own)")
    e.add_argument("--workspace", default=None, metavar="DIR",
                   help="where each eval makes a folder of its investigations and scoreboard.json "
                   "(default ./sleuth-eval)")
    e.add_argument("--resume", default=None, metavar="DIR",
                   help="go on with a stopped eval: DIR is its folder (the one holding eval.json); runs it scored "
                   "are kept, the others run again from scratch")
    e.add_argument("--out", default=None, metavar="FILE", help="also write the scoreboard JSON here")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    e.add_argument("--llm-model", default=None, help="openai brain: the model")
    e.add_argument("--llm-base-url", default=None, help="openai brain: an OpenAI-compatible endpoint")
    e.add_argument("--llm-timeout", type=float, default=None, help="openai brain: seconds per call")
    e.add_argument("--json", action="store_true", help="print the scoreboard as one JSON object")
    e.set_defaults(func=_cmd_eval)

    rp = sub.add_parser("report", help="print a run's report, rebuilt from its stored results")
    rp.add_argument("run_id", metavar="RUN_ID", help="a run id, or 'latest' for the workspace's newest run")
    rp.add_argument("--format", default=None,
                    help="md or html (self-contained, opens offline); default md, html with --open")
    rp.add_argument("--open", action="store_true",
                    help="write the report files into the run's reports/ folder and open one in a browser")
    rp.add_argument("--workspace", default=None, help=workspace_help)
    rp.set_defaults(func=_cmd_report)

    sv = sub.add_parser("serve", help="a read-only local web page of the workspace's runs and their reports")
    sv.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    sv.add_argument("--workspace", default=None, help=workspace_help)
    sv.set_defaults(func=_cmd_serve)

    m = sub.add_parser("memory", help="query the vector memory of findings")
    msub = m.add_subparsers(dest="memory_command", required=True)
    ms = msub.add_parser("search", help="stored findings, experiments, hypotheses and questions nearest to TEXT")
    ms.add_argument("text", metavar="TEXT")
    ms.add_argument("--model", default=None, help="only records about this model id")
    ms.add_argument("-k", type=int, default=10, help="how many hits (default 10)")
    ms.add_argument("--workspace", default=None, help=workspace_help)
    ms.add_argument("--chroma-url", default=None,
                    help="a chroma server (http://HOST:PORT) instead of the workspace's embedded store "
                    "(default: $SLEUTH_CHROMA_URL)")
    ms.add_argument("--namespace", default=None, help="collection prefix (default: $SLEUTH_MEMORY_NAMESPACE, else sleuth)")
    ms.add_argument("--json", action="store_true", help="print one JSON object")
    ms.set_defaults(func=_cmd_memory_search)
    return p


def _quiet_libraries(verbose: bool) -> None:
    """Progress bars and library chatter off unless --verbose (set here, never at import)."""
    if verbose:
        return
    import warnings

    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # its retry warnings would precede our one line
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_libraries(args.verbose)
    try:
        return args.func(args)
    except UserInputError as e:
        print(f"sleuth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C: where things were left, not a traceback
        told = f"; {stop}" if isinstance(stop, Interrupted) else ""
        print(f"sleuth: interrupted{told}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
