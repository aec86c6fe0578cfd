"""Baselines with no agent, run in the harness on the investigation's own discovery prompts.

* **exhaustive** (the cost ceiling of patching): the answer key's component rule
  (`evals.keys.compute.component_table`: every head and MLP patched alone, both directions,
  the key's threshold and interval) applied on the discovery prompts the investigation used.
  It reports the components that pass. Its forward passes are counted, not estimated.
* **attribution top-k**: attribution patching (gradient × activation difference, two forward
  passes and one backward for every head and MLP) on the same prompts, and the ``k``
  components of largest |estimate|, ``k`` being the number of components the investigation
  reported.
* **random**: ``k`` components drawn uniformly from every head and MLP (seeded draws); no
  forward pass.

Forward passes are read from the model's counter (`tools.loading.ForwardCounter`) around the
baseline's experiments: ``calls`` (batched forward passes, the unit ``run.json`` counts) and
``rows`` (sequences forwarded). A backward pass is not a forward pass and is not counted.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict

from evals.keys.compute import component_table
from evals.keys.schema import KeyMethod

if TYPE_CHECKING:
    from tools.experiments.prompts import PromptPairs
    from tools.loading import LoadedModel

BASELINES = ("exhaustive", "attribution_topk", "random")


class BaselineRun(BaseModel):
    """What one baseline reported and what it cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    components: tuple[str, ...]
    forward_passes: int = 0
    """Batched forward calls (the unit of the agents' ``forward_passes``)."""
    forward_rows: int = 0
    """Sequences forwarded, summed over calls."""
    wall_s: float = 0.0


class Cost(BaseModel):
    """A forward-pass and wall-clock tally (filled when the `counting` block ends)."""

    forward_passes: int = 0
    forward_rows: int = 0
    wall_s: float = 0.0


@contextmanager
def counting(model: "LoadedModel") -> Iterator[Cost]:
    """``with counting(model) as cost:`` — the model's forward passes and the wall time inside."""
    cost = Cost()
    mark, start = model.forwards.mark(), time.monotonic()
    try:
        yield cost
    finally:
        cost.forward_passes, cost.forward_rows = model.forwards.since(mark)
        cost.wall_s = time.monotonic() - start


def run_exhaustive(model: "LoadedModel", prompts: "PromptPairs", method: KeyMethod) -> BaselineRun:
    """The key's component rule on ``prompts`` (see the module docstring)."""
    with counting(model) as cost:
        table, _, _ = component_table(model, prompts, method)
    ranked = sorted((row for row in table if row.matters),
                    key=lambda row: -max(abs(row.restores.estimate), abs(row.removes.estimate)))
    return BaselineRun(name="exhaustive", components=tuple(row.component for row in ranked), **cost.model_dump())


def run_attribution_topk(model: "LoadedModel", prompts: "PromptPairs", k: int) -> BaselineRun:
    """The ``k`` heads and MLPs of largest |attribution-patching estimate| on ``prompts``."""
    from agents.localize import component_effects
    from tools.experiments import AttributionPatchingSpec, PatchSweep
    from tools.experiments.registry import run_experiment

    with counting(model) as cost:
        result = run_experiment(model, AttributionPatchingSpec(
            prompts=prompts, sweeps=(PatchSweep(site="head"), PatchSweep(site="mlp"))))
    effects = component_effects(result)
    ranked = sorted(effects, key=lambda c: (-abs(effects[c]), c))
    return BaselineRun(name="attribution_topk", components=tuple(ranked[:k]), **cost.model_dump())


def draw_random(model: "LoadedModel", k: int, *, seed: int) -> BaselineRun:
    """``k`` heads and MLPs drawn uniformly (without replacement) with ``seed``."""
    from tools.experiments.ablation import universe_components

    adapter = model.adapter
    pool = [str(c) for c in universe_components(("head", "mlp"), adapter.n_layers, adapter.n_heads)]
    picked = np.random.default_rng(seed).choice(len(pool), size=min(k, len(pool)), replace=False)
    return BaselineRun(name="random", components=tuple(pool[i] for i in sorted(picked)))
