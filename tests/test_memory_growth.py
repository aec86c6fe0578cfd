"""500 consecutive experiments in one process must not leak.

Leaks in interpretability code come from references that outlive a run: hooks never removed
(TransformerLens PR #156 / #1636), traces or frames kept alive by a saved value, caches keyed
by tensors. They show up as resident memory that climbs with every experiment. The test
runs a mix of behaviour, logit lens, direct logit attribution and activation patching on the
default organism, warms up for 50 experiments, then checks that over the next 450

* resident memory (RSS, after ``gc.collect()``) grows by less than 10% (the issue's bar), and
* the number of live tensors does not climb — a sharper check: one tensor kept per
  experiment would be 450 more, far below what RSS can see on a small model.

Torch runs single-threaded here: on a shared, busy CPU its thread pool spends more time
waiting than computing, and this test is about memory, not speed.
"""

from __future__ import annotations

import gc

import pytest
import torch

from tools.experiments import (
    ActivationPatchingSpec,
    BehaviourExperimentSpec,
    DirectLogitAttributionSpec,
    LogitLensSpec,
    PatchSweep,
    PromptPairs,
    run_experiment,
)
from tools.loading import load_model

psutil = pytest.importorskip("psutil")

N_EXPERIMENTS = 500
WARM_UP = 50
MAX_RSS_GROWTH = 0.10
MAX_NEW_TENSORS = 45  # fewer than one per ten experiments


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_500_experiments_do_not_grow_memory(single_thread):
    model = load_model("organism-default")
    pairs = PromptPairs(task="ioi", n=2, seed=0)
    specs = [
        BehaviourExperimentSpec(prompts=pairs),
        LogitLensSpec(prompts=pairs),
        DirectLogitAttributionSpec(prompts=pairs),
        ActivationPatchingSpec(prompts=pairs, sweeps=(PatchSweep(site="head"), PatchSweep(site="mlp"))),
        ActivationPatchingSpec(prompts=pairs, mode="noising", positions=(-1, -2),
                               sweeps=(PatchSweep(site="resid_pre", per_position=True),)),
    ]
    results = []
    for i in range(WARM_UP):
        results.append(run_experiment(model, specs[i % len(specs)]))
    results.clear()
    rss_start, tensors_start = _rss(), _live_tensors()
    for i in range(WARM_UP, N_EXPERIMENTS):
        result = run_experiment(model, specs[i % len(specs)])
        assert result.spec == specs[i % len(specs)]
    del result
    rss_end, tensors_end = _rss(), _live_tensors()
    growth = (rss_end - rss_start) / rss_start
    assert growth < MAX_RSS_GROWTH, (
        f"resident memory grew {growth:.1%} over {N_EXPERIMENTS - WARM_UP} experiments "
        f"({rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB)")
    assert tensors_end - tensors_start < MAX_NEW_TENSORS, (
        f"{tensors_end - tensors_start} more live tensors after {N_EXPERIMENTS - WARM_UP} experiments")
