"""The benchmark: a brute-force key recomputed equals the shipped one; scores on a report whose
right answer is counted by hand; `sleuth eval` end to end (heuristic and openai brains); bad
question files -> one line, exit 2; a killed eval resumed with `--resume`."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.cli import main as sleuth
from evals.keys import KEYS_DIR, load_key
from evals.keys.compute import SHIPPED, compute_key
from evals.score import (
    ReportedClaim,
    planted_first,
    recall_precision,
    reported_components,
    reported_edges,
    verdict_accuracy,
)
from tests._files import stored_files
from tests._scripted_llm import ScriptedLLM, playbook

QUESTION_FIELDS = {"id", "recall", "precision", "verdict_accuracy", "faithfulness", "forward_passes", "wall_s"}


# -- answer keys ---------------------------------------------------------------------------------


def test_a_recomputed_key_equals_the_shipped_one():
    from tools.loading import load_model

    shipped = load_key("default-pronoun")
    target = SHIPPED["default-pronoun"]
    assert shipped.method is not None and shipped.method.recipe == f"python -m evals.keys.compute --key {target.name}"
    fresh = compute_key(load_model(target.model), target)
    assert fresh.method == shipped.method  # thresholds, interval level, resamples, seed, recipe
    assert fresh.prompts == shipped.prompts and fresh.weights_hash == shipped.weights_hash
    assert fresh.components == shipped.components and len(shipped.components) > 0
    assert {e.pair for e in fresh.edges} == {e.pair for e in shipped.edges}
    assert fresh.planted == shipped.planted == ()
    for new, old in zip(fresh.component_table, shipped.component_table, strict=True):
        assert new.component == old.component and new.matters == old.matters
        for a, b in ((new.restores, old.restores), (new.removes, old.removes)):
            assert a.estimate == pytest.approx(b.estimate, abs=1e-4)
            assert a.low == pytest.approx(b.low, abs=1e-4) and a.high == pytest.approx(b.high, abs=1e-4)
    for new, old in zip(fresh.edge_table, shipped.edge_table, strict=True):
        assert new.pair == old.pair
        assert new.carried.estimate == pytest.approx(old.carried.estimate, abs=1e-4)


def test_a_key_of_your_own_records_the_command_that_recomputes_it_and_sleuth_eval_scores_against_it(
        tmp_path, capsys):
    from evals.keys.compute import main as compute

    mine = tmp_path / "mine"
    assert compute(["--model", "organism-default", "--task", "pronoun", "--name", "my-pronoun", "--n", "64",
                    "--out-dir", str(mine)]) == 0
    key = load_key(str(mine / "my-pronoun.json"))
    assert key.method.recipe == ("python -m evals.keys.compute --model organism-default --task pronoun --n 64 "
                                 "--name my-pronoun")
    assert key.prompts.n == 64 and key.prompts.split == "heldout" and key.components and key.planted == ()
    # the recorded command, run again, writes the same key
    again = tmp_path / "again"
    assert compute([*key.method.recipe.split()[3:], "--out-dir", str(again)]) == 0
    assert (again / "my-pronoun.json").read_text() == (mine / "my-pronoun.json").read_text()
    questions = _write(mine / "q.yaml", "questions:\n  - {id: mine, question: 'Which pronoun does the model "
                                        "pick?', key: my-pronoun.json, n: 16}\n")
    board = _eval(capsys, "--questions", str(questions), "--workspace", str(tmp_path / "ev"))
    (q,) = board["questions"]
    assert q["id"] == "mine" and q["recall"] is not None and q["runs"][0]["status"] == "answered"


def test_a_key_of_your_own_prompts_is_computed_on_exactly_those_prompts(tmp_path, monkeypatch):
    from evals.keys.compute import main as compute
    from tools.loading import load_model
    from tools.tasks import get_task

    model = load_model("organism-default")
    items = get_task("pronoun").generate(24, split="heldout", seed=77, tokenizer=model.tokenizer)
    lists = {"clean": [i.clean for i in items], "corrupted": [i.corrupted for i in items],
             "answer": [i.answer for i in items], "foil": [i.foil for i in items]}
    _write(tmp_path / "held-out.json", json.dumps(lists))
    monkeypatch.chdir(tmp_path)  # the recipe names the prompts file as given
    assert compute(["--model", "organism-default", "--prompts", "held-out.json", "--name", "mine",
                    "--out-dir", "a"]) == 0
    key = load_key(str(tmp_path / "a" / "mine.json"))
    assert key.method.recipe == "python -m evals.keys.compute --model organism-default --prompts held-out.json --name mine"
    assert key.prompts.task is None and list(key.prompts.clean) == lists["clean"]
    assert list(key.prompts.foil) == lists["foil"] and key.components
    assert compute([*key.method.recipe.split()[3:], "--out-dir", "b"]) == 0
    assert (tmp_path / "b" / "mine.json").read_text() == (tmp_path / "a" / "mine.json").read_text()


@pytest.mark.parametrize("argv, problem", [
    (["--model", "organism-default", "--task", "pronoun"], "needs --name too"),
    (["--model", "organism-default", "--name", "x"], "needs --task or --prompts too"),
    (["--model", "organism-default", "--task", "ioi", "--prompts", "p.json", "--name", "x"], "not both"),
    (["--model", "organism-default", "--prompts", "p.json", "--n", "4", "--name", "x"], "--n goes with --task"),
    (["--model", "organism-default", "--prompts", "missing.json", "--name", "x"], "no such prompts file"),
    (["--model", "organism-default", "--prompts", "p.json", "--name", "x"], "a prompts file is a mapping"),
    (["--model", "organism-default", "--task", "pronoun", "--name", "../up"], "it names the file"),
    (["--model", "organism-default", "--task", "pronoun", "--name", "default-ioi"], "a shipped key's"),
    (["--key", "default-ioi", "--model", "organism-default"], "not both"),
    (["--model", "organism-default", "--task", "pronoun", "--name", "x", "--n", "0"], "--n must be at least 2"),
    (["--model", "organism-default", "--task", "pronoun", "--name", "x", "--n", "1"], "--n must be at least 2"),
    (["--model", "organism-default", "--prompts", "one.json", "--name", "x"], "at least two prompts"),
    (["--model", "organism-default", "--task", "no-such-task", "--name", "x", "--n", "4"], "neither a known task"),
    (["--model", "/no/such/model", "--task", "ioi", "--name", "x"], "no such model"),
])
def test_a_bad_key_command_is_one_line_and_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, argv,
                                                                     problem):
    from evals.keys.compute import main as compute

    _write(tmp_path / "p.json", json.dumps({"clean": ["a"], "corrupted": ["b"], "answer": [" x"]}))
    _write(tmp_path / "one.json", json.dumps({"clean": ["a b"], "corrupted": ["c b"], "answer": [" x"],
                                              "foil": [" y"]}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        code = compute([*argv, "--out-dir", str(tmp_path / "out")])
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and problem in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_every_shipped_key_loads_and_names_its_planted_component_only_where_one_was_planted():
    keys = {name: load_key(name) for name in SHIPPED if (KEYS_DIR / f"{name}.json").exists()}
    assert {"default-ioi", "planted-trigger"} <= set(keys)
    assert keys["planted-trigger"].planted == ("mlp.2",)  # evals/organisms/planted/ground_truth.json
    assert all(k.planted == () for name, k in keys.items() if name != "planted-trigger")
    for key in keys.values():
        rule = key.method.component_threshold
        for row in key.component_table:  # the stored table and the stored answer agree
            passes = any(abs(e.estimate) >= rule and (e.low > 0 or e.high < 0) for e in (row.restores, row.removes))
            assert passes == row.matters == (row.component in key.components), (key.name, row.component)


# -- scores on a constructed report ---------------------------------------------------------------


def _claim(id: str, kind: str, verdict: str, components=(), *, threshold=None, measured=None, receivers=()):
    return ReportedClaim(id=id, kind=kind, verdict=verdict, components=tuple(components), threshold=threshold,
                         measured=measured, receivers=tuple(receivers))


def test_the_benchmark_loads_and_each_seed_shift_asks_it_again_with_seeds_no_other_shift_uses(tmp_path, capsys):
    from evals.questions import BENCHMARK, load_questions, shift_seeds
    from tools.errors import UserInputError

    def asked(questions):  # everything but the seeds
        return [(q.id, q.question.question, q.spec_path, q.key.name, q.model) for q in questions]

    benchmark = load_questions(BENCHMARK)
    assert len(benchmark) >= 12 and shift_seeds(benchmark, 0) == benchmark
    seen = [set(q.question.seeds) for q in benchmark]
    for shift in (1, 2, 3):
        again = shift_seeds(benchmark, shift)
        assert asked(again) == asked(benchmark)
        for i, (before, after) in enumerate(zip(benchmark, again)):  # new seeds, as many, spaced alike
            gaps = [b - a for a, b in zip(before.question.seeds, before.question.seeds[1:])]
            assert [b - a for a, b in zip(after.question.seeds, after.question.seeds[1:])] == gaps
            assert not set(after.question.seeds) & seen[i]
            seen[i] |= set(after.question.seeds)
    planted = next(q for q in benchmark if len(q.question.seeds) > 1)
    assert shift_seeds([planted], 1)[0].question.seeds == tuple(s + len(planted.question.seeds)
                                                               for s in planted.question.seeds)
    spaced = _write(tmp_path / "q.yaml", "questions:\n  - {id: a, question: IOI, key: default-ioi, seeds: [0, 2]}\n")
    assert shift_seeds(load_questions(spaced), 1)[0].question.seeds == (3, 5)  # not (2, 4): 2 is taken
    assert sleuth(["eval", "--questions", str(spaced), "--seed-shift", "-1", "--workspace", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "--seed-shift must be 0 or more" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ev").exists()
    near_the_top = _write(tmp_path / "top.yaml", spaced.read_text().replace("[0, 2]", "[4294967295]"))
    with pytest.raises(UserInputError, match="--seed-shift 1: question a's seeds would pass 4294967295"):
        shift_seeds(load_questions(near_the_top), 1)


def test_scores_of_a_constructed_report_match_a_hand_count():
    key_components = ["mlp.0", "head.1.2", "head.2.0", "mlp.3"]
    key_edges = {("mlp.0", "logits"), ("head.1.2", "head.2.0.q")}
    claims = [
        # supported, holds under the key (0.50 >= 0.40): right; reports mlp.0 and head.0.1
        _claim("writers", "direct", "supported", ["mlp.0", "head.0.1"], threshold=0.4, measured=0.5),
        # supported, does not hold (0.10 < 0.25): wrong; reports head.1.2
        _claim("top", "necessity", "supported", ["head.1.2"], threshold=0.25, measured=0.10),
        # refuted, does not hold: right; reports nothing
        _claim("readers", "path", "refuted", ["head.2.0"], threshold=0.2, measured=0.05, receivers=["mlp.3"]),
        # inconclusive: takes no side, reports nothing
        _claim("circuit", "faithfulness", "inconclusive", key_components, threshold=0.8, measured=0.9),
        # supported but not re-measured: not judged; names no component
        _claim("routing", "routing", "supported", threshold=0.75),
        # supported path claim, holds: right; reports head.1.2 again and an edge into head.2.0.q
        _claim("paths", "path", "supported", ["head.1.2"], threshold=0.1, measured=0.3, receivers=["head.2.0.q"]),
    ]
    reported = reported_components(claims)
    assert reported == ("mlp.0", "head.0.1", "head.1.2")  # supported only, first mention first
    recall, precision = recall_precision(reported, key_components)
    assert recall == 2 / 4 and precision == 2 / 3  # mlp.0 and head.1.2 are in the key; head.0.1 is not
    assert verdict_accuracy(claims) == 3 / 4  # writers, readers, paths right; top wrong
    edges = reported_edges(claims)
    assert edges == {("mlp.0", "logits"), ("head.0.1", "logits"), ("head.1.2", "head.2.0.q")}
    assert recall_precision(edges, key_edges) == (2 / 2, 2 / 3)
    assert planted_first(claims, ["mlp.0"]) is True  # the first supported claim names mlp.0 first
    assert planted_first(claims, ["head.0.1"]) is False
    assert planted_first(claims, []) is None
    assert recall_precision([], key_components) == (0.0, None)
    assert verdict_accuracy([claims[3], claims[4]]) is None


# -- sleuth eval ----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _eval(capsys, *argv: str) -> dict:
    code = sleuth(["eval", *argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _runs(workspace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(workspace.glob("*/*/runs/*/run.json"))]


def test_sleuth_eval_scores_organism_questions_with_baselines_and_writes_the_documented_json(tmp_path, capsys):
    questions = _write(tmp_path / "q.yaml", """
questions:
  - id: trigger
    question: "Why does the trigger word produce its token?"
    key: planted-trigger
    n: 16
    judge_n: 48
""")
    board = _eval(capsys, "--questions", str(questions), "--workspace", str(tmp_path / "ev"))
    assert set(board) >= {"questions", "summary", "baselines"} and board["brain"] == "heuristic"
    (q,) = board["questions"]
    assert QUESTION_FIELDS <= set(q) and q["id"] == "trigger" and len(q["runs"]) == 1
    run = q["runs"][0]
    # the forward-pass counter the harness reads agrees with the run's own count
    (record,) = _runs(tmp_path / "ev")
    assert run["forward_passes"] == record["cost"]["forward_passes"] > 0 and run["status"] == "answered"
    # ... in sequences too, and the per-step tally accounts for every one of them
    assert run["forward_rows"] == record["cost"]["forward_rows"] == sum(run["rows_by_step"].values())
    assert run["rows_by_step"] == {s: c["forward_rows"] for s, c in record["cost"]["by_step"].items()}
    assert record["cost"]["by_step"]["examine"]["jobs"] >= len(run["claims"]) > 0
    assert sum(c["forward_passes"] for c in record["cost"]["by_step"].values()) == run["forward_passes"]
    shares = board["summary"]["rows_by_step"]
    assert sum(shares.values()) == pytest.approx(1, abs=1e-3) and shares["examine"] > 0
    supported = [c for c in run["claims"] if c["verdict"] == "supported"]
    assert run["reported"] == list(dict.fromkeys(x for c in supported for x in c["components"]))
    assert run["planted_first"] == (supported[0]["components"][:1] == ["mlp.2"])
    assert {"exhaustive", "attribution_topk", "random"} <= set(board["baselines"])
    assert run["baselines"]["random"]["forward_passes"] == 0 < run["baselines"]["exhaustive"]["forward_passes"]
    assert run["forward_pass_ratio"] == pytest.approx(
        run["forward_passes"] / run["baselines"]["exhaustive"]["forward_passes"])
    assert run["forward_row_ratio"] == pytest.approx(
        run["forward_rows"] / run["baselines"]["exhaustive"]["forward_rows"])
    assert set(board["summary"]["targets"]) == {"recall", "precision", "verdict_accuracy", "forward_pass_ratio",
                                                "forward_row_ratio", "planted_first"}
    written = json.loads(next((tmp_path / "ev").glob("*/scoreboard.json")).read_text())
    assert written == board


@pytest.mark.parametrize("content, problem", [
    ("questions: [", "not valid YAML"),
    ("questions: []", "non-empty list"),
    ("questions:\n  - {id: a, question: IOI, key: no-such-key}", "unknown answer key 'no-such-key'"),
    ("questions:\n  - {id: a, question: IOI, key: default-ioi, colour: red}", "colour"),
    ("questions:\n  - {id: a, key: default-ioi}", "give either question"),
    ("questions:\n  - {id: a, question: IOI, spec: s.yaml, key: default-ioi}", "give either question"),
    ("questions:\n  - {id: a, question: IOI, key: default-ioi}\n  - {id: a, question: IOI, key: default-ioi}",
     "used twice"),
    ("questions:\n  - {id: a, spec: missing.yaml, key: default-ioi}", "no spec file"),
    ("questions:\n  - {id: a, question: IOI, key: mine.json}", "no such file"),
    ("questions:\n  - {id: a, question: IOI, key: bad.json}", "a key lists heads"),
    ("questions:\n  - {id: a, question: IOI, key: default-ioi, seeds: [0, -1]}", "seeds.1"),
])
def test_a_bad_question_file_is_one_line_and_exit_2(tmp_path, capsys, content, problem):
    _write(tmp_path / "bad.json", json.dumps({"name": "bad", "model": "organism-default", "behaviour": "ioi",
                                              "prompts": {"task": "ioi", "n": 8}, "components": ["resid_pre.1"]}))
    questions = _write(tmp_path / "q.yaml", content)
    code = sleuth(["eval", "--questions", str(questions), "--workspace", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ev").exists()  # nothing ran


def test_a_user_key_naming_a_component_the_model_lacks_stops_before_any_investigation(tmp_path, capsys):
    _write(tmp_path / "mine.json", json.dumps({
        "name": "mine", "model": "organism-default", "behaviour": "ioi", "prompts": {"task": "ioi", "n": 8},
        "components": ["head.9.0"], "edges": [{"sender": "mlp.0", "receiver": "logits"}]}))
    questions = _write(tmp_path / "q.yaml", "questions:\n  - {id: a, question: IOI, key: mine.json}\n")
    code = sleuth(["eval", "--questions", str(questions), "--workspace", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("eval: ")]  # progress lines aside
    assert code == 2 and len(errors) == 1 and "head.9.0" in errors[0] and errors[0].startswith("sleuth: error")
    assert not _runs(tmp_path / "ev")


def test_the_openai_brain_runs_through_the_same_harness(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("SLEUTH_LLM_BACKOFF_S", "0.01")
    questions = _write(tmp_path / "q.yaml", """
questions:
  - id: ioi
    question: "Which heads and MLPs does indirect object identification use?"
    key: default-ioi
    n: 8
    judge_n: 32
""")
    with ScriptedLLM(playbook) as server:
        board = _eval(capsys, "--brain", "openai", "--llm-base-url", server.url, "--llm-model", "scripted",
                      "--questions", str(questions), "--workspace", str(tmp_path / "ev"))
    assert board["brain"] == "openai"
    (q,) = board["questions"]
    (run,) = q["runs"]
    assert run["status"] == "answered" and q["tokens"] > 0
    roles = server.roles
    assert roles[0] == "intake" and roles[-1] == "reporter"
    (record,) = _runs(tmp_path / "ev")
    assert record["settings"]["brain"] == "openai"
    assert record["cost"]["tokens_in"] + record["cost"]["tokens_out"] == q["tokens"]
    assert QUESTION_FIELDS <= set(q) and q["recall"] is not None


def test_an_investigation_that_fails_is_scored_as_reporting_nothing_and_the_eval_goes_on(tmp_path, capsys,
                                                                                        monkeypatch):
    import agents.investigate

    real = agents.investigate.ask
    calls = []

    def first_fails(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 1:
            raise RuntimeError("the model ran out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(agents.investigate, "ask", first_fails)
    questions = _write(tmp_path / "q.yaml", """
questions:
  - id: pronoun
    question: "How does the model pick the right pronoun after a name?"
    key: default-pronoun
    seeds: [0, 1]
    n: 8
    judge_n: 16
""")
    board = _eval(capsys, "--questions", str(questions), "--workspace", str(tmp_path / "ev"))
    failed, ok = board["questions"][0]["runs"]
    assert calls == [0, 1]
    assert failed["status"] == "error" and "RuntimeError: the model ran out of memory" in failed["error"]
    assert failed["recall"] == 0.0 and failed["precision"] is None and failed["faithfulness"] == 0.0
    assert failed["baselines"] == {} and failed["forward_pass_ratio"] is None
    assert ok["status"] == "answered" and ok["error"] is None and ok["baselines"]
    assert board["summary"]["errors"] == 1
    assert board["questions"][0]["recall"] == pytest.approx((0.0 + ok["recall"]) / 2)


ROOT = Path(__file__).resolve().parents[1]


def test_a_killed_eval_resumes_keeping_its_seed_shift_and_the_runs_it_scored_and_rerunning_the_cut_one_afresh(
        tmp_path, capsys):
    questions = _write(tmp_path / "q.yaml", """
questions:
  - id: pronoun
    question: "How does the model pick the right pronoun after a name?"
    key: default-pronoun
    seeds: [0, 1, 2]
    n: 8
    judge_n: 16
""")
    child = subprocess.Popen([sys.executable, "-m", "agents.cli", "eval", "--questions", str(questions),
                              "--workspace", str(tmp_path / "ev"), "--seed-shift", "1", "--threads", "1", "--json"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline, cut = time.monotonic() + 300, None
    try:  # seeds 0-2 shifted by one span: 3-5; kill it once seed 3 is scored and seed 4 has stored something
        while time.monotonic() < deadline and child.poll() is None:
            cut = next((tmp_path / "ev").glob("*/pronoun-seed4/runs/*/run.json"), None)
            if cut is not None:
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL and cut is not None, "the eval finished before the kill"
    (root,) = (tmp_path / "ev").iterdir()
    kept = (root / "scores" / "pronoun-seed3.json").read_bytes()
    assert not (root / "scores" / "pronoun-seed4.json").exists()
    cut_short = stored_files(root / "pronoun-seed4")

    # bad input: one line, exit 2, and nothing in the eval's folder changes
    before = stored_files(root)
    original = questions.read_text()
    questions.write_text(original.replace("judge_n: 16", "judge_n: 20"))
    for argv, problem in ((["--resume", str(root)], "question pronoun changed since the eval"),
                          (["--resume", str(root), "--only", "pronoun"], "drop --only"),
                          (["--resume", str(root), "--seed-shift", "1"], "drop --seed-shift"),
                          (["--resume", str(tmp_path)], "no eval.json there")):
        assert sleuth(["eval", *argv]) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1, err
    questions.write_text(original)
    with open(root / ".lock", "a") as held:  # as while the eval still runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert sleuth(["eval", "--resume", str(root)]) == 2
        err = capsys.readouterr().err
        assert f"the eval in {root} is still running" in err and len(err.strip().splitlines()) == 1, err
    assert stored_files(root) == before

    board = _eval(capsys, "--resume", str(root))
    (q,) = board["questions"]
    assert [r["seed"] for r in q["runs"]] == [3, 4, 5] and board["seed_shift"] == 1 and len(board["resumed_at"]) == 1
    assert board["workspace"] == str(root) and board["questions_file"] == str(questions.resolve())
    # seed 3 kept as scored before the kill; seed 4's cut-short run set aside untouched
    assert json.loads(kept) == q["runs"][0] and (root / "scores" / "pronoun-seed3.json").read_bytes() == kept
    assert stored_files(root / "pronoun-seed4.interrupted") == cut_short
    # seeds 4 and 5 ran whole, each alone in a fresh workspace: each counted every forward pass it made
    for run in q["runs"][1:]:
        (record,) = [json.loads(p.read_text()) for p in Path(run["workspace"]).glob("runs/*/run.json")]
        assert run["status"] == "answered" and record["id"] == run["run_id"]
        assert run["forward_passes"] == record["cost"]["forward_passes"] > 0
        assert json.loads((root / "scores" / f"pronoun-seed{run['seed']}.json").read_text()) == run
    assert json.loads((root / "scoreboard.json").read_text()) == board


def test_compare_boards_skips_only_what_differs_between_runs_and_names_every_changed_score(tmp_path, capsys):
    from evals.compare_boards import main as compare_boards

    run = {"seed": 0, "run_id": "a", "wall_s": 1.5, "workspace": "/x", "recall": 0.5, "reported": ["mlp.0"]}
    board = {"created_at": "t0", "questions_file": "q.yaml", "questions": [{"id": "q", "runs": [run]}],
             "summary": {"recall": 0.5}}
    again = json.loads(json.dumps(board))
    again["questions"][0]["runs"][0].update(run_id="b", wall_s=9.0, workspace="/y")
    again.update(created_at="t1", resumed_at=["t2"])
    a, b = _write(tmp_path / "a.json", json.dumps(board)), _write(tmp_path / "b.json", json.dumps(again))
    assert compare_boards([str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"compared": 5, "differ": []}
    again["questions"][0]["runs"][0]["reported"].append("mlp.1")
    again["summary"]["recall"] = 0.75
    _write(b, json.dumps(again))
    assert compare_boards([str(a), str(b), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["differ"] == [
        {"field": "questions[0].runs[0].reported", "a": ["mlp.0"], "b": ["mlp.0", "mlp.1"]},
        {"field": "summary.recall", "a": 0.5, "b": 0.75}]
    assert compare_boards([str(a), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and len(err.strip().splitlines()) == 1
