"""`evals.prune_study` on a small finished eval: it reads the eval's runs without changing them,
prunes only by the growth test, and scores the result as the scoreboard scores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agents.cli import main as sleuth
from evals.prune_study import main as study


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    questions = root / "q.yaml"
    questions.write_text("questions:\n  - id: ioi\n    question: \"Which heads move the indirect object's name "
                         "(IOI)?\"\n    key: default-ioi\n    n: 24\n    judge_n: 48\n")
    assert sleuth(["eval", "--questions", str(questions), "--workspace", str(root / "ev"), "--out",
                   str(root / "board.json")]) == 0
    return root / "board.json", root / "ev"


@pytest.mark.parametrize("two_sided", [False, True])
def test_the_study_prunes_by_the_growth_test_and_leaves_the_eval_untouched(board, tmp_path, capsys, two_sided):
    path, eval_dir = board
    before = _digest(eval_dir)
    capsys.readouterr()
    assert study([str(path), "--json", "--workspace", str(tmp_path / "study"), *(["--two-sided"] * two_sided)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert _digest(eval_dir) == before  # the eval's workspaces are only read
    (row,) = out["runs"]
    (scored,) = json.loads(path.read_text())["questions"][0]["runs"]
    assert (row["recall_before"], row["precision_before"]) == (scored["recall"], scored["precision"])
    assert row["circuit"] is not None, "the critic supported no circuit: nothing to study"
    dropped = [component for component, _, kept in row["trials"] if kept]
    assert row["pruned"] == row["circuit"] - len(dropped) >= 1
    for component, low, kept in row["trials"]:  # a drop is kept exactly when the rest passes the growth test
        passes = low is not None and low >= 0.8
        assert kept == passes if not two_sided else (not kept or passes), component
    assert row["pruning_calls"] >= 2 * len(row["trials"]) > 0
    assert set(row["verdicts"]) <= {"supported", "refuted", "inconclusive"}
    assert row["replaced"] == (row["verdicts"] == ["supported", "supported"])
    if not row["replaced"]:
        assert (row["recall_after"], row["precision_after"]) == (row["recall_before"], row["precision_before"])
    assert out["summary"]["precision_before"] == pytest.approx(scored["precision"])


def test_a_file_that_is_not_a_scoreboard_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "board.json"
    bad.write_text("{}")
    assert study([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prune_study:") and "\n" not in err
