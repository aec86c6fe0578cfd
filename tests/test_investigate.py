"""`sleuth ask` / `sleuth resume` end to end on the default organism (heuristic brain, offline)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.cli import main as sleuth

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


@pytest.mark.parametrize("kill_after", [1, 6, 14])
def test_a_killed_investigation_resumes_to_the_same_claims_without_rerunning_stored_experiments(
        finished, tmp_path, capsys, kill_after):
    out, _ = finished
    workspace = tmp_path / "ws"
    child = subprocess.Popen([sys.executable, "-m", "agents.cli", *ASK, "--workspace", str(workspace)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 240
    run_json = None
    try:
        while time.monotonic() < deadline and child.poll() is None:
            found = list((workspace / "runs").glob("*/run.json")) if (workspace / "runs").exists() else []
            if found:
                run_json = found[0]
                try:
                    if json.loads(run_json.read_text())["cost"]["experiments"] >= kill_after:
                        os.kill(child.pid, signal.SIGKILL)
                        break
                except (ValueError, KeyError):
                    pass
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL and run_json is not None, "the child finished before the kill"
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


@pytest.mark.parametrize("argv, message", [
    (["ask", "--model", "organism-default"], "needs a question"),
    (["ask", "why is the sky blue?", "--model", "organism-default"], "quoted prompt"),
    (["ask", "indirect object identification", "--model", "./no-such-model-folder"], "no-such-model-folder"),
    (["ask", "indirect object identification", "--model", "organism-default", "--max-experiments", "0"],
     "--max-experiments must be at least 1"),
    (["ask", "--spec", "missing.yaml", "--model", "organism-default"], "no such spec file"),
    (["resume", "20990101-000000-abcdef"], "no run"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "ws").mkdir()
    assert sleuth([*argv, "--workspace", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sleuth: error: ") and err.count("\n") == 1 and message in err, err
    assert not list((tmp_path / "ws").glob("runs/*"))


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
