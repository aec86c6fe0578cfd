"""`sleuth watch` on a real short training run: induction appears, and the heads that carry it are named.

The run is the organism recipe's ``watch`` preset (a 2-layer model on repeated word sequences,
`evals.organisms.recipe.train.WATCH_PRESET`) with seed 2 for 400 steps, a checkpoint every 40:
ten checkpoints, made here in a temporary folder (never committed). Whether and where the
behaviour appears is read from what ``watch`` reports, not from a step written in the test; the
heads it names are checked against an independent measurement (activation patching of every
head at the last checkpoint).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from agents.cli import main

SEED, STEPS, EVERY = 2, 400, 40


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from evals.organisms.recipe.train import WATCH_PRESET, train_default

    out = tmp_path_factory.mktemp("watch") / "run"
    threads = torch.get_num_threads()
    settings = {**WATCH_PRESET, "steps": STEPS}
    try:
        log = train_default(out, seed=SEED, threads=1, checkpoint_every=EVERY, eval_n=4, **settings)
    finally:
        torch.set_num_threads(threads)
    return out, log


@pytest.fixture(scope="module")
def watched(series, tmp_path_factory):
    out, _ = series
    folder = tmp_path_factory.mktemp("watch-ws")
    behaviours = folder / "behaviours.yaml"
    behaviours.write_text("- induction\n")
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["watch", str(out), "--behaviours", str(behaviours), "--workspace", str(folder / "ws"), "--json"])
    assert code == 0
    return json.loads(buf.getvalue()), folder / "ws"


def test_the_recipe_writes_a_series_of_ordinary_model_folders(series):
    from tools.loading import load_model

    out, log = series
    steps = [c["step"] for c in log["checkpoints"]]
    assert steps == list(range(EVERY, STEPS + 1, EVERY))
    for step in (EVERY, STEPS):
        model = load_model(str(out / f"checkpoint-{step}"))
        assert model.adapter.n_layers == 2
    assert json.loads((out / "training_log.json").read_text())["checkpoints"] == log["checkpoints"]


def test_watch_sees_induction_appear_and_names_the_heads_that_carry_it(watched, series):
    out, workspace = watched
    assert [c["step"] for c in out["checkpoints"]] == list(range(EVERY, STEPS + 1, EVERY))  # expanded in step order
    induction = out["behaviours"]["induction"]
    readings = induction["readings"]
    appears = induction["appears"]
    assert appears is not None, [(r["checkpoint"], r["logit_diff"], r["ci"]) for r in readings]
    i = appears["index"]
    assert 0 < i and not readings[i - 1]["present"] and all(r["present"] for r in readings[i:])
    assert not readings[0]["present"] and readings[-1]["logit_diff"] > readings[0]["logit_diff"] + 0.3
    heads = induction["rising_heads"]
    assert heads, induction["rising"]

    # independent check: at the last checkpoint, activation patching (not the attribution estimate
    # watch used) finds the most important head among the named ones, and that head barely
    # mattered at the first checkpoint
    from tools.experiments import ActivationPatchingSpec, PatchSweep, PromptPairs, run_activation_patching
    from tools.loading import load_model

    run_dir, _ = series
    prompts = PromptPairs(task="induction", n=32, split="heldout", seed=1)

    def head_effects(step: int) -> dict[str, float]:
        result = run_activation_patching(load_model(str(run_dir / f"checkpoint-{step}")), ActivationPatchingSpec(
            prompts=prompts, sweeps=(PatchSweep(site="head"),)))
        raw = (result.tensors["logit_diff.head"] - result.tensors["corrupted_logit_diff"]).mean(-1)
        return {f"head.{l}.{h}": float(raw[l, h]) for l in range(raw.shape[0]) for h in range(raw.shape[1])}

    last, first = head_effects(STEPS), head_effects(EVERY)
    strongest = max(last, key=lambda c: abs(last[c]))
    assert strongest in heads, (strongest, heads, last)
    assert last[strongest] > 3 * abs(first[strongest]) and last[strongest] > induction["threshold"]


def test_watch_run_is_stored_with_a_timeline_report(watched):
    out, workspace = watched
    run = workspace / "runs" / out["run_id"]
    record = json.loads((run / "run.json").read_text())
    assert record["settings"]["kind"] == "watch" and record["status"] == "answered"
    html = (run / "reports" / "report.html").read_text()
    assert 'id="figure-timeline-induction"' in html and "appears" in html and "<script" not in html
    assert (run / "reports" / "figures" / "timeline-induction.svg").is_file()
    code = main(["report", out["run_id"], "--workspace", str(workspace), "--format", "md"])
    assert code == 0


@pytest.mark.parametrize("case", ["not_a_model", "one_checkpoint", "missing", "unknown_behaviour",
                                  "missing_behaviours", "mixed_tokenizers", "same_twice"])
def test_watch_bad_input_is_one_line_and_exit_2(case, capsys, tmp_path):
    from tests.test_adapters import tiny_model, tiny_tokenizer
    from tools.loading import resolve_model_source

    organism, _ = resolve_model_source("organism-default")
    planted, _ = resolve_model_source("organism-planted")
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "notes.txt").write_text("hello")
    args = [organism, planted]
    extra: list[str] = []
    if case == "not_a_model":
        args = [organism, str(notmodel)]
    elif case == "one_checkpoint":
        args = [organism]
    elif case == "missing":
        args = [organism, str(tmp_path / "gone")]
    elif case == "unknown_behaviour":
        (tmp_path / "b.yaml").write_text("[induction, telepathy]")
        extra = ["--behaviours", str(tmp_path / "b.yaml")]
    elif case == "missing_behaviours":
        extra = ["--behaviours", str(tmp_path / "none.yaml")]
    elif case == "mixed_tokenizers":
        other = tmp_path / "tiny"
        tiny_model("gpt2").save_pretrained(other)
        tiny_tokenizer().save_pretrained(other)
        args = [organism, str(other)]
    elif case == "same_twice":
        args = [organism, organism]
    workspace = tmp_path / "ws"
    code = main(["watch", *args, *extra, "--workspace", str(workspace)])
    _, err = capsys.readouterr()
    assert code == 2, (case, err)
    assert err.count("\n") == 1 and err.startswith("sleuth: error:") and "Traceback" not in err, err
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
