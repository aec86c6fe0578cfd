"""`sleuth diff`: cross-model patching, weight-change norms, the paired margin tests, the ranking,
and the whole command on the shipped organisms (the planted one differs from the default in
exactly one component, named in its ground_truth.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cli import main

PLANTED = json.loads((Path(__file__).resolve().parents[1] / "evals" / "organisms" / "planted" /
                      "ground_truth.json").read_text())


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- statistics ------------------------------------------------------------------------------


def test_paired_margin_tests_equal_the_one_sample_bootstrap_functions_row_by_row():
    from tools.stats import bootstrap_ci, bootstrap_pvalue, paired_margin_tests

    rng = np.random.default_rng(4)
    d = rng.normal([[0.0], [0.3], [-0.5], [2.0]], 1.0, size=(4, 40))
    margins = [0.1, 0.2, 0.3, 0.5]
    tests = paired_margin_tests(d, margins, n_resamples=3000, seed=9)
    for row, margin, t in zip(d, margins, tests):
        ci = bootstrap_ci(row, n_resamples=3000, seed=9)
        above = bootstrap_pvalue(row, threshold=margin, n_resamples=3000, seed=9)
        below = bootstrap_pvalue(row, threshold=-margin, alternative="less", n_resamples=3000, seed=9)
        assert t.interval.low == pytest.approx(ci.low, abs=1e-12)
        assert t.interval.high == pytest.approx(ci.high, abs=1e-12)
        assert t.p_value == pytest.approx(min(1.0, 2 * min(above, below)), abs=2 / 3001)
    # a large true change beyond the margin is detected, a zero one is not
    assert tests[3].p_value < 0.01 and tests[0].p_value > 0.5


def test_the_margin_decides_what_counts_as_a_change():
    """A tiny systematic difference is 'significant' against zero but not against a margin."""
    from tools.model_diff import MeasureSamples, compare

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 200)
    b = a + 0.05 + rng.normal(0, 0.01, 200)  # a shift of 0.05, measured very precisely
    zero = compare([MeasureSamples(measure="dla", component="mlp.0", a=tuple(a), b=tuple(b), margin=0.0)])
    tenth = compare([MeasureSamples(measure="dla", component="mlp.0", a=tuple(a), b=tuple(b), margin=0.1)])
    assert zero[0].significant and not tenth[0].significant
    assert tenth[0].ci[0] < 0.05 < tenth[0].ci[1]


# -- cross-model patching and weights ------------------------------------------------------------


@pytest.fixture(scope="module")
def organisms():
    from tools.loading import load_model

    return load_model("organism-default"), load_model("organism-planted")


@pytest.fixture(scope="module")
def trigger_prompts(organisms):
    from tools.experiments import PromptPairs
    from tools.tasks.declared import declared_tasks

    planted = organisms[1]
    items = declared_tasks(planted.source)["trigger"].generate(12, split="train", seed=3, tokenizer=planted.tokenizer)
    return PromptPairs(clean=[i.clean for i in items], corrupted=[i.corrupted for i in items],
                       answer=[i.answer for i in items], foil=[i.foil for i in items])


def test_cross_model_patching_locates_the_only_changed_component(organisms, trigger_prompts):
    """Upstream of the planted MLP every output is the same in both models: exactly zero transfer;
    the planted MLP transfers the whole difference (everything after it is the same function)."""
    from tools.experiments import CrossModelPatchingSpec, run_cross_model_patching

    default, planted = organisms
    spec = CrossModelPatchingSpec(prompts=trigger_prompts, source_model_id=planted.model_id,
                                  source_weights_hash=planted.weights_hash)
    result = run_cross_model_patching(default, planted, spec)
    layer = int(PLANTED["component"].split(".")[1])
    effect = {s: result.tensors[f"effect.{s}"] for s in ("head", "attn", "mlp")}
    assert torch.allclose(effect["mlp"][layer], torch.tensor(1.0), atol=1e-4)
    assert torch.count_nonzero(effect["head"][:layer + 1]) == 0
    assert torch.count_nonzero(effect["attn"][:layer + 1]) == 0
    assert torch.count_nonzero(effect["mlp"][:layer]) == 0
    assert result.source_logit_diff - result.base_logit_diff > 5  # the trigger works only in the planted model
    # a model against itself: nothing to transfer anywhere, and shares are undefined
    same = run_cross_model_patching(default, default, spec.model_copy(update={
        "source_model_id": default.model_id, "source_weights_hash": default.weights_hash}))
    assert not same.normalisable
    for site in ("head", "attn", "mlp"):
        patched = same.tensors[f"logit_diff.{site}"]
        assert torch.allclose(patched, same.tensors["base_logit_diff"].expand_as(patched), atol=1e-4)


def test_cross_model_patching_refuses_another_source(organisms, trigger_prompts):
    from tools.errors import UserInputError
    from tools.experiments import CrossModelPatchingSpec, run_cross_model_patching

    default, planted = organisms
    spec = CrossModelPatchingSpec(prompts=trigger_prompts, source_model_id="x", source_weights_hash="0" * 64)
    with pytest.raises(UserInputError, match="source_weights_hash"):
        run_cross_model_patching(default, planted, spec)


def test_weight_change_norms_name_only_the_planted_component(organisms):
    from tools.weight_diff import weight_change_norms

    result = weight_change_norms(*organisms)
    changed = [c.component for c in result.changes if c.norm > 0]
    assert changed == [PLANTED["component"]]
    assert 0 < result.by_component()[PLANTED["component"]].relative < 10
    total = sum(c.parameters for c in result.changes if not c.component.startswith("head."))
    assert total == sum(p.numel() for p in organisms[0].hf_model.parameters())


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_a_head_owns_exactly_its_slices_of_q_k_v_and_o(family):
    """Change one number in head 1.1's query projection: that head and its layer's attention
    change, no other head."""
    from tests._experiment_models import tiny_loaded
    from tools.weight_diff import weight_change_norms

    base, other = tiny_loaded(family), tiny_loaded(family)
    adapter = other.adapter
    attn = other.hf_model.get_submodule(f"{adapter.paths.blocks}.1.{adapter.paths.attn}")
    d = adapter.d_head
    with torch.no_grad():
        if family == "gpt2":
            attn.c_attn.weight[0, 1 * d] += 1.0  # query column of head 1
        elif family == "gpt_neox":
            attn.query_key_value.weight[1 * 3 * d, 0] += 1.0  # head 1's first (query) row
        else:
            attn.q_proj.weight[1 * d, 0] += 1.0
    changed = [c.component for c in weight_change_norms(base, other).changes if c.norm > 0]
    assert changed == ["head.1.1", "attn.1"]


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trigger_diff(tmp_path_factory):
    import io
    from contextlib import redirect_stdout

    workspace = tmp_path_factory.mktemp("diff") / "ws"
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["diff", "Why does the trigger word produce its token?", "--base", "organism-default",
                     "--model", "organism-planted", "--n", "32", "--seed", "2", "--workspace", str(workspace), "--json"])
    assert code == 0
    return json.loads(buf.getvalue()), workspace


def test_diff_on_the_trigger_ranks_the_planted_component_first(trigger_diff):
    out, workspace = trigger_diff
    assert out["behaviour"] == "trigger" and out["n"] == 32
    first = out["changes"][0]
    assert first["significant"] and first["component"] == PLANTED["component"]
    assert out["top_changed"][0] == PLANTED["component"]
    assert first["ci"][0] > first["margin"]
    # upstream of the planted MLP no computation changed: no cross-model change is significant there
    layer = int(PLANTED["component"].split(".")[1])
    for c in out["changes"]:
        if c["measure"] == "cross_model" and c["component"] != PLANTED["component"] and int(c["component"].split(".")[1]) <= layer:
            assert c["delta"] == pytest.approx(0.0, abs=1e-4) and not c["significant"]
    # the investigation replicated the transfer on fresh prompts
    top = out["investigation"][0]
    assert top["component"] == PLANTED["component"]
    assert top["transfer"]["verdict"] == "supported" and top["transfer"]["ci"][0] > 0.9
    assert top["necessity"]["verdict"] in ("supported", "refuted", "inconclusive")
    assert [w["component"] for w in out["weight_changes"]] == [PLANTED["component"]]
    # adjusted p-values are Holm over every test, and "significant" follows them
    assert all(c["significant"] == (c["adjusted_p"] < 0.05) for c in out["changes"])
    assert out["tests"] == len(out["changes"]) == len({(c["measure"], c["component"]) for c in out["changes"]})


def test_diff_is_stored_as_a_run_with_its_report(trigger_diff):
    out, workspace = trigger_diff
    run = workspace / "runs" / out["run_id"]
    record = json.loads((run / "run.json").read_text())
    assert record["settings"]["kind"] == "diff" and record["status"] == "answered"
    assert record["settings"]["base"] == "organism-default"
    keys = {p.stem for p in (run / "experiments").glob("*.json")}
    assert keys and keys <= {p.stem for p in (workspace / "cache" / "experiments").glob("*.json")}
    html = Path(out["report"]["html"]).read_text()
    md = Path(out["report"]["md"]).read_text()
    assert "What changed" in html and "## What changed" in md
    assert "<script" not in html and "Content-Security-Policy" in html
    for figure in ("changes", "patching-base", "patching-model", "patching-delta", "dla-delta", "cross-model"):
        assert f'id="figure-{figure}"' in html and (run / "reports" / "figures" / f"{figure}.svg").is_file()
    assert html.count("<svg") >= 9


def test_diff_shares_unpatched_runs_and_finds_the_same_with_fewer_forward_passes(trigger_diff, monkeypatch):
    """The diff's experiments share runs per model (`tools.experiments.memo`); with the memo
    holding nothing, the same diff measures the same numbers at a higher forward-pass cost."""
    import io
    from contextlib import redirect_stdout

    import tools.experiments.memo as memo

    out, workspace = trigger_diff
    holds_nothing = memo.SharedRuns
    monkeypatch.setattr(memo, "SharedRuns", lambda: holds_nothing(max_bytes=0))
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["diff", "Why does the trigger word produce its token?", "--base", "organism-default",
                     "--model", "organism-planted", "--n", "32", "--seed", "2", "--workspace",
                     str(workspace.parent / "unshared"), "--json"]) == 0
    unshared = json.loads(buf.getvalue())
    same = ("changes", "top_changed", "investigation", "significant", "weight_changes")
    assert {k: out[k] for k in same} == {k: unshared[k] for k in same}
    assert out["cost"]["forward_passes"] < unshared["cost"]["forward_passes"]


def test_diff_controls_stay_outside_every_examined_component(trigger_diff):
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    out, workspace = trigger_diff
    top = set(out["top_changed"])
    assert len(top) > 1  # otherwise there is nothing to keep out
    with Workspace.open(workspace) as ws:
        store = RunStore(ws)
        claims = store.open(out["run_id"]).claims()
        assert {c.details["kind"] for c in claims} == {"necessity", "transfer"}
        for claim in claims:
            assert claim.details["control_kind"].endswith("outside every claim's components"), claim.id
            if claim.details["kind"] == "necessity":  # evidence: replication, second method, then the controls
                controls = [store.cache.get(key).spec.components for key in claim.evidence[2:]]
                assert len(controls) == 3 and not any(set(c) & top for c in controls), (claim.id, controls)


def test_diff_report_numbers_come_from_the_stored_results(trigger_diff, tmp_path):
    """Edit the stored cross-model result: the summary and the report change with it."""
    import shutil

    from agents.diff import diff_summary
    from agents.report.render import render
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.experiments import load_result

    out, workspace = trigger_diff
    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy)
    run = RunStore(Workspace.open(copy, writer=True)).open(out["run_id"])
    key = run.investigation()["evidence"]["cross_model"]
    path = run.folder / "experiments" / f"{key}.json"
    result = load_result(path)
    (run.folder / "experiments" / f"{key}.json").unlink()
    (run.folder / "experiments" / f"{key}.safetensors").unlink()
    tensors = dict(result.tensors)
    tensors["logit_diff.mlp"] = tensors["base_logit_diff"].expand_as(tensors["logit_diff.mlp"]).clone()
    result.model_copy(update={"tensors": tensors}).save(run.folder / "experiments")
    edited = diff_summary(run)
    assert edited["top_changed"][0] != PLANTED["component"] or edited["changes"][0]["measure"] != "cross_model"
    assert all(not (c["measure"] == "cross_model" and c["component"] == PLANTED["component"] and c["significant"])
               for c in edited["changes"])
    md = render(run, "md")
    assert md != Path(out["report"]["md"]).read_text()
    assert f"| 1 | `{PLANTED['component']}` | cross_model |" in Path(out["report"]["md"]).read_text()
    assert f"| 1 | `{PLANTED['component']}` | cross_model |" not in md


def test_diff_on_an_unrelated_behaviour_finds_no_significant_change(capsys, tmp_path):
    """IOI: the planted organism changed only mlp.2's weights, under a loss that kept every other
    next-token distribution; no component's measure moves by a tenth of the behaviour. The same
    stored data against a zero margin does show (tiny) systematic changes — so the margin, not a
    lack of power, is what the verdict rests on."""
    code, out, err = run_cli(capsys, "diff", "indirect object identification", "--base", "organism-default",
                             "--model", "organism-planted", "--workspace", str(tmp_path / "ws"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["significant"] == 0 and result["top_changed"] == [] and result["investigation"] == []
    assert [w["component"] for w in result["weight_changes"]] == [PLANTED["component"]]
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.model_diff import (attention_samples, compare, cross_model_samples, dla_samples,
                                  patching_samples)

    run = RunStore(Workspace.open(tmp_path / "ws")).open(result["run_id"])
    ev = run.investigation()["evidence"]
    load = run.load_experiment
    samples = (cross_model_samples(load(ev["cross_model"]), 0.0)
               + patching_samples(load(ev["base"]["patching"]), load(ev["model"]["patching"]), 0.0)
               + dla_samples(load(ev["base"]["dla"]), load(ev["model"]["dla"]), 0.0)
               + attention_samples(load(ev["base"]["attention"]), load(ev["model"]["attention"]), 0.0))
    assert sum(c.significant for c in compare(samples)) > 0


# -- bad input: one line, exit 2, nothing stored -----------------------------------------------------


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory):
    """A tiny GPT-2 folder whose word-level tokenizer is not the organisms'."""
    from tests.test_adapters import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("other") / "tiny-gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("case", ["tokenizers", "missing_base", "not_a_model", "no_behaviour", "undeclared_trigger",
                                  "no_question", "bad_n"])
def test_diff_bad_input_is_one_line_and_exit_2(case, capsys, tmp_path, other_tokenizer_model):
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "readme.txt").write_text("not a model")
    base, model, question, extra = "organism-default", "organism-planted", "indirect object identification", []
    if case == "tokenizers":
        model = other_tokenizer_model
    elif case == "missing_base":
        base = str(tmp_path / "nowhere")
    elif case == "not_a_model":
        model = str(notmodel)
    elif case == "no_behaviour":
        question = "why is the sky blue"
    elif case == "undeclared_trigger":
        model = "organism-default"
        question = "Why does the trigger word produce its token?"
    elif case == "no_question":
        question = ""
    elif case == "bad_n":
        extra = ["--n", "1"]
    workspace = tmp_path / "ws"
    code, out, err = run_cli(capsys, "diff", question, "--base", base, "--model", model, "--workspace", str(workspace),
                             *extra)
    assert code == 2, (case, err)
    assert err.count("\n") == 1 and err.startswith("sleuth: error:"), err
    assert "Traceback" not in err
    if case == "tokenizers":
        assert "different tokenizers" in err
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


def test_ctrl_c_during_a_diff_stores_it_as_interrupted_and_the_same_command_reuses_what_it_finished(
        capsys, tmp_path, monkeypatch):
    from memory.runstore import Run

    argv = ["diff", "Why does the trigger word produce its token?", "--base", "organism-default", "--model",
            "organism-planted", "--n", "8", "--seed", "5", "--workspace", str(tmp_path / "ws"), "--json"]
    finished = []
    original = Run.experiment

    def stopped_at_the_fourth(self, *args, **kwargs):
        if len(finished) == 3:
            raise KeyboardInterrupt  # as Ctrl-C does, in the middle of the diff
        finished.append(original(self, *args, **kwargs))
        return finished[-1]

    monkeypatch.setattr(Run, "experiment", stopped_at_the_fourth)
    code, out, err = run_cli(capsys, *argv)
    (first,) = (tmp_path / "ws" / "runs").iterdir()
    record = json.loads((first / "run.json").read_text())
    assert (code, out) == (130, "") and record["status"] == "interrupted"
    assert err == (f"sleuth: interrupted; run {first.name} is stored as interrupted; the same command again reuses "
                   "every experiment it finished (they are in the workspace's cache)\n")
    monkeypatch.setattr(Run, "experiment", original)
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    again = json.loads(out)
    record = json.loads((tmp_path / "ws" / "runs" / again["run_id"] / "run.json").read_text())
    assert record["status"] == "answered" and record["cost"]["cache_hits"] >= 3
