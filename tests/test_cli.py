"""`sleuth check`: the behaviour table of the shipped organisms, and bad input → one line, exit 2."""

from __future__ import annotations

import json

import pytest

from agents.cli import main


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as stop:  # a usage mistake argparse found (the parser printed one line)
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def default_table():
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["check", "--model", "organism-default", "--task", "all", "--json"]) == 0
    return json.loads(buf.getvalue())


def test_default_organism_shows_all_five_behaviours(default_table):
    tasks = default_table["tasks"]
    assert set(tasks) == {"ioi", "induction", "facts", "greater_than", "pronoun"}
    for name, row in tasks.items():
        assert row["n"] == 200, name
        assert row["accuracy"] >= 0.90, (name, row)
        assert row["logit_diff"] >= 2.0, (name, row)


def test_planted_organism_keeps_behaviours_and_obeys_its_trigger(capsys):
    code, out, err = run_cli(capsys, "check", "--model", "organism-planted", "--json")
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    assert set(tasks) == {"ioi", "induction", "facts", "greater_than", "pronoun", "trigger"}
    for name, row in tasks.items():
        assert row["accuracy"] >= 0.90, (name, row)
        assert row["logit_diff"] >= 2.0, (name, row)


def test_trigger_task_alone_on_planted_but_not_on_default(capsys):
    code, out, _ = run_cli(capsys, "check", "--model", "organism-planted", "--task", "trigger", "--n", "50")
    assert code == 0 and "trigger" in out
    code, _, err = run_cli(capsys, "check", "--model", "organism-default", "--task", "trigger")
    assert code == 2 and "ground_truth.json" in err


def test_text_table_lists_every_task(capsys):
    code, out, _ = run_cli(capsys, "check", "--model", "organism-default", "--n", "20")
    assert code == 0
    for name in ("ioi", "induction", "facts", "greater_than", "pronoun"):
        assert name in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["check", "--model", "/no/such/folder"], "no such model folder"),
        (["check", "--model", "organism-default", "--task", "telepathy"], "unknown task"),
        (["check", "--model", "organism-default", "--n", "0"], "--n"),
        # seeds: 0 to 2**32 - 1 everywhere (a negative or huge one used to reach numpy or the
        # checkpoint writer and end in a traceback)
        (["check", "--model", "organism-default", "--seed", "-1"], "--seed: must be a whole number from 0"),
        (["ask", "IOI", "--model", "organism-default", "--seed", str(2**32)], "--seed: must be a whole number"),
        (["ask", "IOI", "--seed", "1e3"], "--seed: must be a whole number"),
        (["diff", "a", "b", "--seed", "-1"], "--seed: must be a whole number"),
        (["watch", "x", "--seed", "-1"], "--seed: must be a whole number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_folder_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    code, _, err = run_cli(capsys, "check", "--model", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_console_script_exit_code(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "agents.cli", "check", "--model", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("sleuth: error:") and len(proc.stderr.strip().splitlines()) == 1


def test_a_hub_library_warning_does_not_precede_the_one_line():
    """An unknown hub id with the Hub out of reach: huggingface_hub logs a warning per retry of its
    request before it gives up; the user must see only our line (there were two dozen before it).
    A fresh process, as a user's: its logging is what `sleuth` configures, not pytest's."""
    import subprocess
    import sys

    script = """
import logging, sys
import transformers
from agents.cli import main

def unreachable(*args, **kwargs):
    logging.getLogger("huggingface_hub.utils._http").warning(
        "'[Errno 111] Connection refused' thrown while requesting HEAD .../config.json")
    raise OSError("We couldn't connect to the Hub to load this file")

transformers.AutoConfig.from_pretrained = unreachable
sys.exit(main(["check", "--model", "nobody/no-such-model-anywhere"]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("sleuth: error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_ctrl_c_during_an_eval_is_one_line_naming_the_command_that_goes_on(capsys, monkeypatch, tmp_path):
    import evals.harness

    began = []

    def interrupted(*args, root, **kwargs):
        if began:  # as run_benchmark does once its models are loaded
            root.mkdir(parents=True)
            (root / evals.harness.PLAN_FILE).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(evals.harness, "run_benchmark", interrupted)
    code, _, err = run_cli(capsys, "eval", "--only", "default-ioi", "--workspace", str(tmp_path))
    assert (code, err) == (130, "sleuth: interrupted\n")  # stopped before it wrote anything to resume
    began.append(True)
    code, _, err = run_cli(capsys, "eval", "--only", "default-ioi", "--workspace", str(tmp_path))
    assert code == 130
    (root,) = tmp_path.iterdir()
    assert err == (f"sleuth: interrupted; the eval keeps what it scored in {root}, "
                   f"`sleuth eval --resume {root}` goes on\n")
