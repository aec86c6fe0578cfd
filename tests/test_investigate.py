"""`sleuth ask` / `sleuth resume` end to end on the default organism (heuristic brain, offline)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agents.cli import main as sleuth
from tests._files import stored_files

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Why does the model do indirect object identification?"
ASK = ["ask", QUESTION, "--model", "organism-default", "--n", "32", "--json"]


def _ask(capsys, workspace, *extra):
    assert sleuth([*ASK, "--workspace", str(workspace), *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted investigation (its summary and workspace), shared by the tests."""
    from agents.investigate import ask

    workspace = tmp_path_factory.mktemp("ask") / "ws"
    out = ask(QUESTION, model="organism-default", workspace=str(workspace), n=32)
    return out, workspace


def test_an_investigation_of_ioi_ends_answered_with_critic_verdicts(finished):
    out, workspace = finished
    assert out["status"] == "answered"
    verdicts = {c["verdict"] for c in out["claims"]}
    assert verdicts <= {"supported", "refuted", "inconclusive"} and "supported" in verdicts
    for c in out["claims"]:
        assert c["ci"][0] <= c["effect"] <= c["ci"][1] and c["n"] == 32
    report = Path(out["report"]["md"]).read_text()
    assert QUESTION in report and "## Claims" in report
    for c in out["claims"]:
        assert c["statement"] in report
    run = json.loads((workspace / "runs" / out["run_id"] / "run.json").read_text())
    assert run["cost"]["cache_misses"] == run["cost"]["experiments"] == out["cost"]["experiments"] > 5


def test_asking_again_pays_for_nothing_and_finds_the_same(finished, capsys):
    out, workspace = finished
    again = _ask(capsys, workspace)
    assert again["run_id"] != out["run_id"]
    assert [(c["statement"], c["verdict"], c["effect"]) for c in again["claims"]] == \
        [(c["statement"], c["verdict"], c["effect"]) for c in out["claims"]]
    run = json.loads((workspace / "runs" / again["run_id"] / "run.json").read_text())
    assert run["cost"]["cache_misses"] == 0 and run["cost"]["cache_hits"] == out["cost"]["experiments"]


def test_a_budget_stops_the_run_cleanly_with_a_report(tmp_path, capsys):
    out = _ask(capsys, tmp_path / "ws", "--max-experiments", "2")
    assert out["status"] == "budget_exhausted"
    assert out["cost"]["experiments"] <= 3 and Path(out["report"]["md"]).exists()


@pytest.mark.parametrize(("flags", "n"), [([], 6), (["--n", "4"], 4)])
def test_a_spec_file_of_explicit_prompts_keeps_its_own_n_unless_n_is_given(tmp_path, capsys, flags, n):
    spec = yaml.safe_load((ROOT / "evals" / "questions" / "specs" / "pronoun.yaml").read_text())
    path = tmp_path / "pronoun.yaml"
    path.write_text(yaml.safe_dump({**spec, "n": 6}))
    assert sleuth(["ask", "--spec", str(path), "--model", "organism-default", "--max-experiments", "1",
                   "--workspace", str(tmp_path / "ws"), "--json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    run = json.loads((tmp_path / "ws" / "runs" / out["run_id"] / "run.json").read_text())
    assert run["settings"]["behavior"]["n"] == n


@pytest.mark.parametrize("kill_after", [1, 12, 33])  # confirm, the circuit search, the critic
def test_a_killed_investigation_resumes_to_the_same_claims_without_rerunning_stored_experiments(
        finished, tmp_path, capsys, kill_after):
    out, _ = finished
    workspace = tmp_path / "ws"
    child = subprocess.Popen([sys.executable, "-m", "agents.cli", *ASK, "--workspace", str(workspace)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    # generous: on a loaded 2-core machine the child's imports and model load alone can take minutes
    deadline = time.monotonic() + 900
    run_json, killed = None, False
    try:
        while time.monotonic() < deadline and child.poll() is None:
            found = list((workspace / "runs").glob("*/run.json")) if (workspace / "runs").exists() else []
            if found:
                run_json = found[0]
                try:
                    if json.loads(run_json.read_text())["cost"]["experiments"] >= kill_after:
                        os.kill(child.pid, signal.SIGKILL)
                        killed = True
                        break
                except (ValueError, KeyError):
                    pass
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL or killed, \
        f"the child exited by itself (code {child.returncode}) before {kill_after} experiments were stored"
    assert killed, f"no run.json counted {kill_after} experiments within the deadline (run.json: {run_json})"
    before = json.loads(run_json.read_text())
    assert before["status"] == "running"
    run_id = before["id"]
    assert sleuth(["resume", run_id, "--workspace", str(workspace), "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["status"] == "answered"
    assert [(c["statement"], c["verdict"], c["effect"]) for c in resumed["claims"]] == \
        [(c["statement"], c["verdict"], c["effect"]) for c in out["claims"]]
    after = json.loads(run_json.read_text())["cost"]
    # every experiment was computed exactly once across the kill: re-requests were cache hits
    assert after["cache_misses"] == out["cost"]["experiments"]
    assert after["cache_hits"] == after["experiments"] - after["cache_misses"]


def test_a_run_that_stops_on_an_exception_is_stored_as_failed_with_its_reason_and_resumes(
        finished, tmp_path, capsys, monkeypatch):
    from agents.steps import Toolbox

    out, _ = finished
    workspace = tmp_path / "ws"

    def broken(self, job):
        raise RuntimeError("a bug in the circuit step\nsecond line")

    monkeypatch.setattr(Toolbox, "_do_circuit", broken)
    with pytest.raises(RuntimeError, match="a bug in the circuit step"):
        sleuth([*ASK, "--workspace", str(workspace)])
    (run_json,) = (workspace / "runs").glob("*/run.json")
    stopped = json.loads(run_json.read_text())
    assert stopped["status"] == "failed", stopped["status"]
    assert stopped["error"] == "RuntimeError: a bug in the circuit step"
    assert stopped["cost"]["experiments"] > 0  # it had been working: what it stored is kept
    capsys.readouterr()
    assert sleuth(["runs", "--workspace", str(workspace)]) == 0
    assert "failed" in capsys.readouterr().out
    monkeypatch.undo()  # the bug fixed, the run goes on from its checkpoint ("latest": the newest run)
    assert sleuth(["resume", "latest", "--workspace", str(workspace), "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["status"] == "answered" and resumed["run_id"] == stopped["id"]
    assert [(c["statement"], c["verdict"]) for c in resumed["claims"]] == \
        [(c["statement"], c["verdict"]) for c in out["claims"]]
    assert json.loads(run_json.read_text())["error"] is None


@pytest.mark.parametrize("run_id", ["latest", "20990101-000000-abcdef"])
def test_resume_in_a_workspace_that_does_not_exist_says_so_and_creates_nothing(tmp_path, capfd, run_id):
    missing = tmp_path / "no-workspace-here"
    assert sleuth(["resume", run_id, "--workspace", str(missing)]) == 2
    err = capfd.readouterr().err
    assert err.startswith("sleuth: error: no workspace at") and err.count("\n") == 1, err
    assert not missing.exists()


def test_two_prompts_support_no_claim_however_large_the_effects(tmp_path, capsys):
    """On two fresh prompts the bootstrap sees no draw against a large effect and once gave
    p = 1/2001, so seven claims were supported on two prompts; no p-value may now go below
    2^-n (`tools.stats._floored`), and after Holm nothing is decided on so little."""
    out = _ask(capsys, tmp_path / "ws", "--n", "2")
    assert out["claims"] and {c["verdict"] for c in out["claims"]} == {"inconclusive"}
    assert all(c["n"] == 2 for c in out["claims"])
    assert sleuth(["report", "latest", "--workspace", str(tmp_path / "ws")]) == 0
    adjusted = [float(p) for p in re.findall(r"Holm-adjusted p ([0-9.]+)", capsys.readouterr().out)]
    assert len(adjusted) == len(out["claims"]) and min(adjusted) >= 0.25, adjusted
    assert sleuth(["report", "latest", "--workspace", str(tmp_path / "ws")]) == 0
    assert "The critic had 2 fresh prompts: no p-value goes below 2^-2 = 0.25" in capsys.readouterr().out


def test_resume_latest_names_the_run_it_found_when_that_run_is_not_an_investigation(tmp_path, capfd):
    from memory.session import Memory

    with Memory.open(str(tmp_path / "ws"), writer=True) as memory:  # as `sleuth diff` leaves one
        run = memory.runs.create("what changed for IOI", "organism-default", weights_hash="0" * 64,
                                 settings={"base": "organism-default"})
    capfd.readouterr()  # the embedder's loading bar above, outside sleuth
    assert sleuth(["resume", "latest", "--workspace", str(tmp_path / "ws")]) == 2
    err = capfd.readouterr().err
    assert err == f"sleuth: error: run {run.id} was not started by `sleuth ask`; nothing to resume\n"


def test_ctrl_c_stores_the_run_as_interrupted_says_so_in_one_line_and_resume_finishes_it(finished, tmp_path, capsys):
    out, _ = finished
    workspace = tmp_path / "ws"
    # Ctrl-C's default action, as at a terminal: a test run started in the background (CI, `make test &`)
    # inherits SIGINT ignored, and a Python started so never turns it into KeyboardInterrupt
    child = subprocess.Popen([sys.executable, "-m", "agents.cli", *ASK, "--workspace", str(workspace)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and child.poll() is None:
            found = list((workspace / "runs").glob("*/run.json")) if (workspace / "runs").exists() else []
            try:
                if found and json.loads(found[0].read_text())["cost"]["experiments"] >= 33:  # in the critic's job
                    child.send_signal(signal.SIGINT)
                    break
            except (ValueError, KeyError):
                pass
            time.sleep(0.02)
        _, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 130, err
    record = json.loads(found[0].read_text())
    assert record["status"] == "interrupted"
    # it stopped where it was, not after the critic's whole job (which asyncio's own handling waited for)
    assert record["cost"]["experiments"] < out["cost"]["experiments"]
    assert err.strip() == (f"sleuth: interrupted; run {record['id']} is stored as interrupted, "
                           f"`sleuth resume {record['id']}` goes on from its last checkpoint")
    assert sleuth(["resume", record["id"], "--workspace", str(workspace), "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["status"] == "answered"
    assert [(c["statement"], c["verdict"]) for c in resumed["claims"]] == \
        [(c["statement"], c["verdict"]) for c in out["claims"]]
    # none computed twice: at most one miss per experiment of the uninterrupted run. One fewer when
    # Ctrl-C landed between caching an experiment and counting it (the resumed run then finds it
    # cached: computed once, counted as a hit)
    misses = json.loads(found[0].read_text())["cost"]["cache_misses"]
    assert out["cost"]["experiments"] - 1 <= misses <= out["cost"]["experiments"]


LONG = " ".join(["the"] * 80)  # the organism's context is 64 tokens
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def stored(finished, tmp_path_factory):
    """A copy of a workspace holding one finished investigation, and its files."""
    import shutil

    _, workspace = finished
    copy = tmp_path_factory.mktemp("stored") / "ws"
    shutil.copytree(workspace, copy)
    return copy, stored_files(copy / "runs"), stored_files(copy / "cache")


BAD_INPUTS = [
    (["ask", "--model", "organism-default"], "needs a question"),
    (["ask", "why is the sky blue?", "--model", "organism-default"], "quotes no prompt"),
    (["ask", 'Why does the model complete "" with "Mary"?', "--model", "organism-default"], "prompt is empty"),
    (["ask", f'Why does the model complete "{IOI_PROMPT}" with "Mary Ann"?', "--model", "organism-default"],
     "not a single token"),
    (["ask", f'Why does the model complete "{LONG}" with "river" rather than "table"?', "--model", "organism-default"],
     "more than the model's context"),
    (["ask", f'complete "{IOI_PROMPT}" with "Mary" rather than "Mary"', "--model", "organism-default"],
     "is the answer itself"),
    (["ask", 'Why does the model complete "Mary said that" with "she"?', "--model", "organism-default"],
     "no corrupted prompt"),
    (["ask", "indirect object identification", "--model", "./no-such-model-folder"], "no-such-model-folder"),
    (["ask", "indirect object identification", "--model", "nobody/no-such-model-anywhere"], "no-such-model-anywhere"),
    (["ask", "Why does the trigger word produce its token?", "--model", "organism-default"], "declares none"),
    (["ask", "--spec", "missing.yaml", "--model", "organism-default"], "no such spec file"),
    (["ask", "--spec", "{spec_bad_yaml}", "--model", "organism-default"], "not valid YAML"),
    (["ask", "--spec", "{spec_unknown_field}", "--model", "organism-default"], "unknown field"),
    (["ask", "--spec", "{spec_both}", "--model", "organism-default"], "not both"),
    (["resume", "20990101-000000-abcdef"], "no run"),
    (["resume", "../../etc"], "run id"),
    (["ask", "indirect object identification", "--model", "organism-default", "--max-experiments", "0"],
     "--max-experiments must be at least 1"),
    (["ask", "indirect object identification", "--model", "organism-default", "--max-time", "0"],
     "--max-time must be"),
    (["ask", "indirect object identification", "--model", "organism-default", "--max-dollars", "-1"],
     "--max-dollars must be more than zero"),
    (["ask", "indirect object identification", "--model", "organism-default", "--n", "0"], "--n must be at least 2"),
    (["ask", "indirect object identification", "--model", "organism-default", "--n", "1"], "--n must be at least 2"),
    (["ask", "--spec", "{spec_one_prompt}", "--model", "organism-default"], "field 'n': Input should be greater than or equal to 2"),
    (["ask", "indirect object identification", "--model", "organism-default", "--brain", "oracle"],
     "invalid choice: 'oracle'"),
    (["ask", "indirect object identification", "--model", "organism-default", "--workspace", "{file}/ws"],
     "workspace"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2_and_leaves_the_workspace_intact(stored, tmp_path, capfd, monkeypatch,
                                                                         argv, message):
    workspace, runs, cache = stored
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id is looked up in the local cache only: no network
    files = {"spec_bad_yaml": ("bad.yaml", "prompts: [unclosed\n"),
             "spec_unknown_field": ("unknown.yaml", "task: ioi\ncolour: blue\n"),
             "spec_one_prompt": ("one.yaml", "task: ioi\nn: 1\n"),
             "spec_both": ("both.json", '{"task": "ioi", "prompts": ["a"], "answers": [" b"], "foils": [" c"]}'),
             "file": ("a-file", "not a folder")}
    for key, (name, text) in files.items():
        (tmp_path / name).write_text(text)
    argv = [a.format(**{k: str(tmp_path / name) for k, (name, _) in files.items()}) for a in argv]
    if "--workspace" not in argv:
        argv += ["--workspace", str(workspace)]
    try:
        code = sleuth(argv)
    except SystemExit as stop:  # argparse's own checks (choices) exit instead of returning
        code = stop.code
    assert code == 2
    err = capfd.readouterr().err
    assert err.startswith("sleuth: error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert stored_files(workspace / "runs") == runs and stored_files(workspace / "cache") == cache
    assert sleuth(["runs", "--workspace", str(workspace)]) == 0 and "DAMAGED" not in capfd.readouterr().out


@pytest.mark.parametrize("text, seconds", [("8h", 28800), ("1h30m", 5400), ("90s", 90), ("2.5m", 150), ("600", 600)])
def test_durations(text, seconds):
    from agents.budget import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "8x", "-5", "0", "1h 30"])
def test_bad_durations(text):
    from agents.budget import parse_duration
    from tools.errors import UserInputError

    with pytest.raises(UserInputError, match="--max-time"):
        parse_duration(text)


def test_a_time_budget_stops_the_run_and_the_report_says_where(tmp_path, capsys):
    out = _ask(capsys, tmp_path / "ws", "--max-time", "0.001s")
    assert out["status"] == "budget_exhausted"
    assert out["answer"].startswith("The budget ran out during the confirm phase")
    assert sleuth(["report", out["run_id"], "--workspace", str(tmp_path / "ws")]) == 0
    text = capsys.readouterr().out
    assert "budget_exhausted" in text and "The budget ran out" in text


def test_sleuth_report_prints_the_stored_report(finished, capsys):
    out, workspace = finished
    assert sleuth(["report", out["run_id"], "--workspace", str(workspace)]) == 0
    assert capsys.readouterr().out == Path(out["report"]["md"]).read_text()
    assert sleuth(["report", "nope", "--workspace", str(workspace)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_the_planted_trigger_question_is_grounded_and_its_circuit_contains_the_planted_mlp(tmp_path, capsys):
    truth = json.loads((ROOT / "evals" / "organisms" / "planted" / "ground_truth.json").read_text())
    assert sleuth(["ask", "Why does the trigger word produce its token?", "--model", "organism-planted",
                   "--n", "32", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "answered"
    supported = [c for c in out["claims"] if c["verdict"] == "supported"]
    assert any(truth["component"] in c["components"] for c in supported), out["claims"]
    # a model that declares no trigger cannot be asked about one
    assert sleuth(["ask", "Why does the trigger word produce its token?", "--model", "organism-default",
                   "--workspace", str(tmp_path / "ws")]) == 2
    assert "declares none" in capsys.readouterr().err


def test_a_second_concurrent_writer_waits_then_gives_one_line(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom memory.workspace import Workspace\n"
         "w = Workspace.open(sys.argv[1], writer=True)\nprint('locked', flush=True)\ntime.sleep(60)",
         str(tmp_path / "ws")], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert sleuth([*ASK, "--workspace", str(tmp_path / "ws"), "--lock-timeout", "0.3"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sleuth: error: workspace") and "in use by another writer" in err
        assert err.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()
    assert not list((tmp_path / "ws").glob("runs/*"))


def test_the_ioi_explanation_names_writers_readers_and_a_faithful_circuit(finished):
    """What carries the answer to the output (path patching, agreeing with direct logit
    attribution), how the model tells the repeated name from the other (heads that attend to
    the token the corruption changes, whose path into a writer carries the effect), and a
    circuit that keeps >= 80% of the logit difference — each supported on fresh prompts."""
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.experiments import AttentionPatternSpec, DirectLogitAttributionSpec, PromptPairs
    from tools.loading import load_model

    out, workspace = finished
    claims = {c["id"]: c for c in out["claims"]}
    for name in ("writers", "readers", "circuit-faithful"):
        assert claims[name]["verdict"] == "supported", claims
    assert claims["circuit-faithful"]["effect"] >= 0.8 and claims["circuit-faithful"]["ci"][0] > 0.8
    # an independent check of the roles on fresh prompts of the held-out split
    model = load_model("organism-default")
    fresh = PromptPairs(task="ioi", n=32, seed=77)
    with Workspace.open(workspace, writer=True) as ws:
        run = RunStore(ws).open(out["run_id"])
        dla = run.experiment(model, DirectLogitAttributionSpec(prompts=fresh))
        attention = run.experiment(model, AttentionPatternSpec(prompts=fresh, from_last=True, saved_prompts=0))
    by_dla = {s.component: s.dla for s in dla.top}
    circuit = claims["circuit-faithful"]["components"]
    in_circuit = sorted((c for c in circuit if c in by_dla), key=lambda c: -by_dla[c])
    assert in_circuit[0] in claims["writers"]["components"]  # the largest direct contributor is a writer
    for head in claims["readers"]["components"]:
        layer, index = (int(x) for x in head.split(".")[1:])
        assert float(attention.tensors["score.to_changed"][layer, index]) >= 0.2
    assert "repeat of an earlier token" in claims["readers"]["statement"]


@pytest.mark.parametrize("question", ["induction", "factual recall", "greater-than", "pronoun agreement"])
def test_each_behaviour_of_the_default_organism_is_answered(tmp_path, capsys, question):
    out = _ask_question(capsys, tmp_path / "ws", question)
    assert out["status"] == "answered"
    supported = [c for c in out["claims"] if c["verdict"] == "supported"]
    assert supported and all(c["ci"][0] <= c["effect"] <= c["ci"][1] for c in out["claims"])
    assert out["cost"]["forward_passes"] > out["cost"]["experiments"]


def _ask_question(capsys, workspace, question, model="organism-default"):
    assert sleuth(["ask", question, "--model", model, "--n", "32", "--workspace", str(workspace), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_top_supported_claim_about_the_trigger_names_the_planted_component(tmp_path, capsys):
    truth = json.loads((ROOT / "evals" / "organisms" / "planted" / "ground_truth.json").read_text())
    out = _ask_question(capsys, tmp_path / "ws", "Why does the trigger word produce its token?", "organism-planted")
    top = next(c for c in out["claims"] if c["verdict"] == "supported")
    assert top["components"][0] == truth["component"], out["claims"]
    # a component the circuit search did not need but the model feels the loss of gets a claim
    # of its own (on this organism: mlp.3, which noising finds and the 3-component circuit omits)
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.experiments import ActivationPatchingSpec, PromptPairs
    from tools.experiments.registry import run_experiment
    from tools.loading import load_model
    from tools.tasks.declared import declared_tasks

    circuit = next(c for c in out["claims"] if c["id"] == "circuit-faithful")["components"]
    alone = [c for c in out["claims"] if c["id"].startswith("alone-")]
    assert alone, out["claims"]
    model = load_model("organism-planted")
    for claim in alone:
        (component,) = claim["components"]
        assert component not in circuit
        if claim["verdict"] == "supported":  # checked apart from the critic: noising on other prompts
            items = declared_tasks(Path(model.source))["trigger"].generate(32, split="heldout", seed=77,
                                                                            tokenizer=model.tokenizer)
            prompts = PromptPairs(clean=[i.clean for i in items], corrupted=[i.corrupted for i in items],
                                  answer=[i.answer for i in items], foil=[i.foil for i in items])
            noised = run_experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=(), mode="noising",
                                                                  component_sets=((component,),)))
            assert 1 - noised.component_sets[0].effect >= 0.1
    assert any(c["verdict"] == "supported" for c in alone), alone
    # and one that works against the answer (mlp.1: its key removes -0.25) gets a claim saying so,
    # checked the same way: noising it on other prompts raises the logit difference
    against = [c for c in out["claims"] if c["id"].startswith("against-")]
    assert [c["components"] for c in against if c["verdict"] == "supported"] == [["mlp.1"]], against
    noised = run_experiment(model, ActivationPatchingSpec(prompts=prompts, sweeps=(), mode="noising",
                                                          component_sets=((("mlp.1",)),)))
    assert 1 - noised.component_sets[0].effect <= -0.1
    # the critic's controls stay outside every component the run's claims name
    named = {c for claim in out["claims"] for c in claim["components"]}
    with Workspace.open(tmp_path / "ws") as ws:
        store = RunStore(ws)
        sets = [c for c in store.open(out["run_id"]).claims() if c.details.get("kind") in ("necessity", "faithfulness")]
        assert len(sets) >= 4
        for claim in sets:  # evidence: replication, second method, then the controls
            assert claim.details["control_kind"].endswith("outside every claim's components"), claim.id
            controls = [store.cache.get(key).spec.components for key in claim.evidence[2:]]
            assert len(controls) == 3 and not any(set(c) & named for c in controls), (claim.id, controls)


def test_the_report_says_what_each_step_cost_and_the_steps_add_up_to_the_run(finished):
    out, _ = finished
    cost = out["cost"]
    assert {"rank", "circuit", "examine"} <= set(cost["by_step"])
    for field in ("experiments", "forward_passes", "forward_rows"):
        assert sum(c[field] for c in cost["by_step"].values()) == cost[field] > 0, field
    report = Path(out["report"]["md"]).read_text()
    assert f"forward passes ({cost['forward_rows']} sequences)" in report
    for step, c in cost["by_step"].items():
        assert f"| {step} | {c['jobs']} | {c['experiments']} | {c['forward_passes']} | {c['forward_rows']} |" in report


def test_the_critic_draws_other_controls_for_another_run_seed(tmp_path, capsys):
    """Seeds of one question are separate measurements: the critic's controls follow the run's seed."""
    from pydantic import TypeAdapter

    from agents.claims import AnyClaim
    from agents.critic import control_sets, critic_seed
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    assert sleuth(["ask", "Why does the trigger word produce its token?", "--model", "organism-planted",
                   "--n", "32", "--seed", "3", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    named = frozenset(c for claim in out["claims"] for c in claim["components"])
    pool = [f"head.{layer}.{h}" for layer in range(4) for h in range(4)] + [f"mlp.{layer}" for layer in range(4)]
    with Workspace.open(tmp_path / "ws") as ws:
        store = RunStore(ws)
        claims = store.open(out["run_id"]).claims()
        seeds = [c.details["seed"] for c in claims]
        parse = TypeAdapter(AnyClaim).validate_python
        tested = [parse(c.details["claim"]) for c in claims]
        assert seeds == [critic_seed(3, c) for c in tested] and len(set(seeds)) == len(seeds), seeds
        moved = 0
        for claim in claims:
            if claim.details["kind"] != "necessity":
                continue
            stored = [list(store.cache.get(key).spec.components) for key in claim.evidence[2:]]
            drawn = control_sets(pool, set(claim.components), 3, seed=claim.details["seed"], avoid=named)
            assert sorted(map(sorted, stored)) == sorted(map(sorted, drawn)), claim.id
            seed_zero = control_sets(pool, set(claim.components), 3,
                                     seed=critic_seed(0, parse(claim.details["claim"])), avoid=named)
            moved += sorted(map(sorted, seed_zero)) != sorted(map(sorted, drawn))
        assert moved, "every control set is the one run seed 0 draws"


def test_memory_is_read_before_planning_and_written_after(finished, capsys):
    """A second question about the same model and behaviour finds the first run's findings."""
    out, workspace = finished
    again = _ask(capsys, workspace, "--seed", "0")
    report = Path(again["report"]["md"]).read_text()
    assert "## What memory knew before this run" in report and out["run_id"] in report
    assert sleuth(["memory", "search", "which heads write the answer?", "--model", "organism-default",
                   "--workspace", str(workspace), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert any(h["metadata"].get("verdict") == "supported" for h in hits)


def test_progress_is_shown_on_a_terminal_and_quiet_otherwise():
    import io

    from agents.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown, piped = Terminal(), io.StringIO()
    for stream in (shown, piped):
        p = Progress(stream=stream)
        p.update(phase="rank", queued=1, experiments=4, budget="10 experiments", hypothesis="head.1.2 matters")
        p.close()
    assert piped.getvalue() == ""
    text = shown.getvalue()
    assert "rank" in text and "experiments    4" in text and "budget left: 10 experiments" in text
    assert "leading: head.1.2 matters" in text and text.endswith("\n")


def test_individual_claims_take_only_needed_components_the_circuit_and_top_claim_leave_out():
    from agents.playbook import HeuristicBrain

    last = {"rank": {"order": ["mlp.0", "mlp.2", "mlp.1", "head.3.3", "mlp.3"],
                     "removes": {"mlp.0": 0.9, "mlp.2": 0.6, "mlp.3": 0.27, "head.3.1": 0.12, "head.1.0": 0.06,
                                 "mlp.1": -0.25, "head.2.2": 0.5},
                     "necessary": ["mlp.0", "mlp.2", "head.2.2", "mlp.3", "mlp.1", "head.3.1", "head.1.0"]},
            "circuit": {"components": ["mlp.2", "mlp.1"]}}
    claims = HeuristicBrain(max_individual=2)._individual_claims(last)
    # mlp.0 is the top claim's, mlp.2 and mlp.1 the circuit's; head.1.0 removes too little
    assert [c.claim.components for c in claims] == [("head.2.2",), ("mlp.3",)]
    assert [c.claim.threshold for c in claims] == [0.25, 0.1]  # half the discovery share, never below 0.1
    assert all(c.role == "individual" and c.claim.kind == "necessity" for c in claims)
    assert [c.claim.components for c in HeuristicBrain()._individual_claims(last)][-1] == ("head.3.1",)


def test_components_whose_removal_raises_the_logit_difference_get_opposition_claims_circuit_or_not():
    from agents.playbook import HeuristicBrain

    last = {"rank": {"order": ["mlp.0", "mlp.2", "mlp.1", "head.3.3", "mlp.3"],
                     "removes": {"mlp.0": 0.9, "mlp.2": 0.6, "mlp.1": -0.25, "head.3.3": -0.12, "head.1.1": -0.3,
                                 "head.2.2": -0.06, "mlp.3": 0.27},
                     "necessary": ["mlp.0", "mlp.2", "head.1.1", "mlp.3", "mlp.1", "head.3.3", "head.2.2"]},
            "circuit": {"components": ["mlp.2", "mlp.1"]}}
    roles = {"head.1.1": {"direct": -0.2}, "mlp.1": {"direct": -0.04}}
    claims = HeuristicBrain()._opposition_claims(last, roles)
    # largest first; mlp.1 is a circuit member and still claimed; head.2.2 adds too little
    assert [c.claim.components for c in claims] == [("head.1.1",), ("mlp.1",), ("head.3.3",)]
    assert [c.claim.threshold for c in claims] == pytest.approx([0.15, 0.1, 0.1])  # half the discovery share, at least 0.1
    assert all(c.role == "opposition" and c.claim.kind == "opposition" for c in claims)
    assert "direct path to the logits carried -0.20" in claims[0].statement
    assert "direct path" not in claims[1].statement  # -0.04 is no writer's share
    assert [c.claim.components for c in HeuristicBrain(max_individual=1)._opposition_claims(last, {})] == \
        [("head.1.1",)]
    last["rank"]["necessary"].remove("head.1.1")  # not clear of zero: no claim
    assert ("head.1.1",) not in [c.claim.components for c in HeuristicBrain()._opposition_claims(last, roles)]


def test_a_circuit_the_critic_did_not_support_grows_by_its_helpers_before_what_works_against_the_answer():
    from agents.playbook import HeuristicBrain

    rank = {"order": ["mlp.3", "head.12.2", "head.11.3", "head.13.3", "head.11.2", "mlp.5", "head.9.1", "mlp.0"],
            "effects": {"mlp.3": 0.9, "head.12.2": 0.76, "head.11.3": -0.23, "head.13.3": -0.18, "head.11.2": 0.18,
                        "mlp.5": 0.11, "head.9.1": -0.01, "mlp.0": 0.001},
            "significant": ["mlp.3", "head.12.2", "head.11.3", "head.13.3", "head.11.2", "mlp.5"]}
    circuit = {"step": "circuit", "components": ["mlp.3", "head.12.2"], "faithfulness": 0.83}
    claim = {"claim": {"id": "circuit-faithful", "components": ["mlp.3", "head.12.2"]}}
    state = {"phase": "critic", "outcomes": [{"step": "rank", **rank}, circuit], "claims": [claim],
             "verdicts": {"circuit-faithful": "inconclusive"}}
    plan = HeuristicBrain(target=0.8, max_circuit=4, max_share=1.0).plan(state)
    assert plan["phase"] == "extend"
    (job,) = plan["jobs"]
    # the circuit itself, then the significant helpers, the other helpers, and last what opposes
    assert job["order"] == ["mlp.3", "head.12.2", "head.11.2", "mlp.5", "mlp.0", "head.11.3", "head.13.3", "head.9.1"]
    assert job["target"] == pytest.approx(0.9) and job["max_size"] == 8
    # no prefix reached the target on the discovery prompts: the ranking itself gets more room
    unclaimed = {**state, "claims": [], "verdicts": {}}
    (job,) = HeuristicBrain(target=0.8, max_circuit=4, max_share=1.0).plan(unclaimed)["jobs"]
    assert job["order"] == ["mlp.3", "head.12.2", "head.11.3", "head.13.3", "head.11.2", "mlp.5", "head.9.1", "mlp.0"]
    assert job["target"] == pytest.approx(0.8)
    state["verdicts"]["circuit-faithful"] = "supported"
    assert HeuristicBrain().plan(state) == {"phase": "report", "jobs": []}


def test_no_circuit_search_goes_past_half_of_the_model_and_none_repeats_one_with_no_more_room():
    from agents.playbook import HeuristicBrain

    names = [f"head.{layer}.{h}" for layer in range(4) for h in range(4)] + [f"mlp.{layer}" for layer in range(4)]
    rank = {"order": names, "effects": {c: 0.5 - 0.01 * i for i, c in enumerate(names)}, "significant": names[:6]}
    brain = HeuristicBrain(target=0.8, max_circuit=24)
    (job,) = brain.plan({"phase": "rank", "outcomes": [{"step": "rank", **rank}]})["jobs"]
    assert job["max_size"] == 10  # half of 20, under max_circuit

    def after_critic(components, claims, verdicts):
        circuit = {"step": "circuit", "components": components, "faithfulness": 0.85}
        return brain.plan({"phase": "critic", "outcomes": [{"step": "rank", **rank}, circuit],
                           "claims": claims, "verdicts": verdicts})

    faithful = [{"claim": {"id": "circuit-faithful", "components": names[:4]}}]
    plan = after_critic(names[:4], faithful, {"circuit-faithful": "inconclusive"})
    assert plan["phase"] == "extend" and plan["jobs"][0]["max_size"] == 10
    # a circuit at the cap is not grown; nor is one whose search had all the room there is
    assert after_critic(names[:10], faithful, {"circuit-faithful": "inconclusive"})["phase"] == "report"
    assert after_critic(names[:7], [], {})["phase"] == "report"
    # on a model of 90 components the unreached search gets more room, up to 45
    big = [f"head.{layer}.{h}" for layer in range(18) for h in range(4)] + [f"mlp.{layer}" for layer in range(18)]
    rank = {"order": big, "effects": {c: 0.5 for c in big}, "significant": big[:30]}
    plan = after_critic(big[:24], [], {})
    assert plan["phase"] == "extend" and plan["jobs"][0]["max_size"] == 45 and plan["jobs"][0]["target"] == 0.8


def test_the_graph_not_the_brain_says_which_components_the_critics_controls_avoid():
    from agents.graph import dispatched

    claims = [{"claim": {"id": "a", "components": ["mlp.0", "head.1.2"]}}, {"claim": {"id": "r", "components": []}}]
    job = {"step": "examine", "claim": {"id": "a"}, "named": ["head.0.0"]}
    assert dispatched(job, claims) == {**job, "named": ["head.1.2", "mlp.0"]}
    assert dispatched({"step": "rank"}, claims) == {"step": "rank"}


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_ask_refuses_a_seed_out_of_range_before_it_loads_a_model_or_opens_a_workspace(tmp_path, seed):
    from agents.investigate import ask
    from tools.errors import UserInputError

    with pytest.raises(UserInputError, match="--seed must be a whole number from 0 to 4294967295"):
        ask("indirect object identification", model="/no/such/model", workspace=str(tmp_path / "ws"), seed=seed)
    assert not (tmp_path / "ws").exists()
