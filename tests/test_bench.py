"""``sleuth bench``: the JSON it prints, and that both sides of every case computed the same numbers.

No timing is asserted (this machine is shared and slow); the smoke run (``--quick``: the
default organism with 4 prompt pairs, a 2-layer random GPT-2, one repeat) checks the shape
of the report and that ours and the reference — TransformerLens 4 or a bare Hugging Face
forward, independent computations — agree on every compared number.
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from agents.cli import main

MAX_DIFF = 1e-3
CASE_KEYS = {"name", "ours_s", "reference_s", "ratio", "max_abs_diff"}


@pytest.fixture(scope="module")
def quick_report() -> dict:
    """One ``sleuth bench --json --quick`` run shared by the module."""
    pytest.importorskip("transformer_lens", reason="TransformerLens 4 is a dev dependency")
    with pytest.MonkeyPatch.context() as patch:
        captured: list[str] = []
        patch.setattr(sys, "stdout", _Capture(captured))
        code = main(["bench", "--json", "--quick", "--threads", "1"])
    assert code == 0
    return json.loads("".join(captured))


class _Capture:
    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def write(self, text: str) -> int:
        self.sink.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_json_has_the_issue_shape(quick_report):
    assert {"cases", "spearman_attr_vs_act"} <= quick_report.keys()
    names = [case["name"] for case in quick_report["cases"]]
    assert names == ["act_patch_heads.organism-default", "act_patch_heads.gpt2-small-random",
                     "attribution_patching.organism-default", "behaviour.organism-default"]
    for case in quick_report["cases"]:
        assert CASE_KEYS <= case.keys()
        assert case["ours_s"] > 0 and case["reference_s"] > 0
        assert math.isclose(case["ratio"], case["ours_s"] / case["reference_s"], rel_tol=1e-9)
        assert case["meets"] == (case["ratio"] <= case["max_ratio"])
    spearman = quick_report["spearman_attr_vs_act"]
    assert spearman is None or -1.0 <= spearman <= 1.0


def test_ours_and_the_reference_agree(quick_report):
    for case in quick_report["cases"]:
        assert case["max_abs_diff"] is not None and case["max_abs_diff"] <= MAX_DIFF, case


def test_cases_skip_with_a_reason_without_transformer_lens(monkeypatch):
    from evals.bench import run_bench

    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import now raises ImportError
    report = run_bench(quick=True, only=["act_patch_heads.organism", "behaviour"])
    patching, behaviour = report.cases
    assert patching.ours_s is None and "TransformerLens" in patching.note and patching.meets is None
    assert behaviour.ours_s is not None and behaviour.max_abs_diff <= MAX_DIFF
    assert report.spearman_attr_vs_act is None  # not asked for


@pytest.mark.parametrize("argv, message", [
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--only", "no-such-case"], "matches no case"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sleuth: error: ") and message in err and err.count("\n") == 1
