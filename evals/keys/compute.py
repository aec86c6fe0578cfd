"""The brute-force recipe of the answer keys: ``python -m evals.keys.compute --key NAME | --all``,
or a key of your own: ``python -m evals.keys.compute --model MODEL --task TASK --name NAME [--n N]``
(or ``--prompts FILE`` instead of a task: your own held-out prompts, answers, foils and corruptions).

For one behaviour of one model, on a large held-out prompt set (the task generator's held-out
split with seed `KEY_SEED`, which no investigation draws: they use the train split with their
seed for discovery and the held-out split with seed + 1000 for the critic):

1. **Components.** Every head (its ``z``) and every MLP (its output) is activation-patched
   alone, at every position, in both directions: *denoising* (its clean value into the
   corrupted run: the share of the clean − corrupted logit difference it *restores*) and
   *noising* (its corrupted value into the clean run: the share it *removes*). Each share is a
   ratio of means over prompts with an expanded percentile bootstrap interval
   (`tools.stats.expanded_tail`). A component **matters**
   when either share is at least `KeyMethod.component_threshold` in size with its interval
   clear of zero. Both directions count because a component can be needed without sufficing
   (it acts only together with others) or suffice without being needed (a backup).
2. **Edges.** Noising path patching (heads and MLPs frozen: the direct path only) from every
   component that matters into the logits, and into the query, key and value inputs of every
   head that matters from every component that matters in an earlier layer. An edge **counts**
   when its path carries at least `KeyMethod.edge_threshold` of the logit difference, interval
   clear of zero. The edge threshold is half the component one: a component's effect is split
   over the paths it writes along, so a component at the threshold feeding two receivers
   equally carries half of it along each.
3. **Planted ground truth.** For a model folder with a ``ground_truth.json`` (the planted
   organism) the component the behaviour was trained into is copied into the key as is.

Thresholds, interval level, resamples and seeds are fixed in `KeyMethod` (and written into
every key), chosen before any agent was scored against a key. A key of your own (any model
``sleuth --model`` loads, any task it knows or the model folder declares) is computed by the
same recipe and records the command that recomputes it; `sleuth eval --questions` takes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from evals.keys.schema import KEYS_DIR, AnswerKey, ComponentEffect, Edge, Effect, KeyMethod, KeyPrompts, save_key
from tools.components import parse_component
from tools.errors import UserInputError, first_problem
from tools.stats import ratio_bootstrap_ci
from tools.tasks import check_prompt_count

if TYPE_CHECKING:
    from tools.experiments.prompts import PromptPairs
    from tools.loading import LoadedModel

log = logging.getLogger(__name__)

KEY_SEED = 9001
"""Seed of the held-out prompt set every shipped key is computed on."""


class KeyTarget(BaseModel):
    """One key: which behaviour of which model, on which prompts (a task's held-out split, or a
    file of explicit prompts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model: str
    task: str | None = None
    n: int | None = None
    """Prompts: 512 on the organisms; 128 on gemma-3-270m, whose forward pass costs about a
    hundred times an organism's (every interval is in the key, so its width shows)."""
    prompts_file: str | None = None
    """Instead of a task: a YAML or JSON file of ``clean``, ``corrupted``, ``answer`` and
    ``foil`` lists (a key's ``prompts`` field)."""

    def key_prompts(self) -> KeyPrompts:
        """The key's prompt set (a file's is read and checked here: one line on any mistake)."""
        if self.prompts_file is None:
            return KeyPrompts(task=self.task, split="heldout", seed=KEY_SEED, n=self.n)
        from agents.behavior import read_data_file

        data = read_data_file(self.prompts_file, "prompts file")
        lists = ("clean", "corrupted", "answer", "foil")
        if not isinstance(data, dict) or set(data) != set(lists):
            raise UserInputError(f"{self.prompts_file}: a prompts file is a mapping of exactly "
                                 f"{', '.join(lists)}: lists of strings, one entry each per prompt")
        try:
            prompts = KeyPrompts.model_validate(data)
        except ValidationError as error:
            raise UserInputError(f"{self.prompts_file}: {first_problem(error)}") from None
        if prompts.size < 2:
            raise UserInputError(f"{self.prompts_file}: a key needs at least two prompts (its tables are "
                                 f"bootstraps over prompts), not {prompts.size}")
        return prompts


SHIPPED: dict[str, KeyTarget] = {t.name: t for t in (
    KeyTarget(name="default-ioi", model="organism-default", task="ioi", n=512),
    KeyTarget(name="default-induction", model="organism-default", task="induction", n=512),
    KeyTarget(name="default-facts", model="organism-default", task="facts", n=512),
    KeyTarget(name="default-greater_than", model="organism-default", task="greater_than", n=512),
    KeyTarget(name="default-pronoun", model="organism-default", task="pronoun", n=512),
    KeyTarget(name="planted-trigger", model="organism-planted", task="trigger", n=512),
    KeyTarget(name="gemma-ioi", model="gemma-3-270m", task="ioi", n=128),
    KeyTarget(name="gemma-facts", model="gemma-3-270m", task="facts", n=128),
)}


USER_N = 128
"""Prompts of a key of your own unless ``--n`` says otherwise (the gemma-3-270m keys' size)."""


def recipe_for(target: KeyTarget) -> str:
    """The command that recomputes ``target``."""
    if SHIPPED.get(target.name) == target:
        return f"python -m evals.keys.compute --key {target.name}"
    source = f"--prompts {target.prompts_file}" if target.prompts_file else f"--task {target.task} --n {target.n}"
    return f"python -m evals.keys.compute --model {target.model} {source} --name {target.name}"


def compute_key(model: "LoadedModel", target: KeyTarget, method: KeyMethod | None = None,
                prompts: KeyPrompts | None = None) -> AnswerKey:
    """The brute-force key of ``target`` on ``model`` (see the module docstring); ``prompts``:
    ``target.key_prompts()``, when the caller has read them already."""
    method = method or KeyMethod(recipe=recipe_for(target))
    prompts = prompts or target.key_prompts()
    pairs = prompts.pairs(model)
    table, clean, corrupted = component_table(model, pairs, method)
    ranked = sorted(table, key=lambda row: -max(abs(row.restores.estimate), abs(row.removes.estimate)))
    components = tuple(row.component for row in ranked if row.matters)
    measured = edge_table(model, pairs, components, method)
    edges = tuple(e for e in measured if counts(e.carried, method.edge_threshold))
    return AnswerKey(name=target.name, model=target.model, weights_hash=model.weights_hash,
                     behaviour=_behaviour(model, target.task) if target.task else
                     f"the prompts of {Path(target.prompts_file or '').name}",
                     prompts=prompts, components=components, edges=edges,
                     planted=planted_components(model, target.task) if target.task else (), method=method,
                     clean_logit_diff=clean, corrupted_logit_diff=corrupted,
                     component_table=tuple(ranked), edge_table=measured)


def counts(effect: Effect | None, threshold: float) -> bool:
    """The key's rule: at least ``threshold`` in size, interval clear of zero."""
    return effect is not None and abs(effect.estimate) >= threshold and effect.clear_of_zero


def component_table(model: "LoadedModel", pairs: "PromptPairs", method: KeyMethod
                    ) -> tuple[list[ComponentEffect], float, float]:
    """Every head and MLP patched alone, both directions; with the mean clean and corrupted
    logit differences."""
    from tools.experiments import ActivationPatchingSpec, PatchSweep
    from tools.experiments.registry import run_experiment

    sweeps = (PatchSweep(site="head"), PatchSweep(site="mlp"))
    shares = {}
    for mode in ("denoising", "noising"):
        result = run_experiment(model, ActivationPatchingSpec(prompts=pairs, sweeps=sweeps, mode=mode))
        clean = result.tensors["clean_logit_diff"].double().numpy()
        corrupted = result.tensors["corrupted_logit_diff"].double().numpy()
        for component, patched in per_component(result).items():
            numerator = patched - corrupted if mode == "denoising" else clean - patched
            shares[component, mode] = _interval(numerator, clean - corrupted, method)
    rows = []
    for component in sorted({c for c, _ in shares}, key=_forward_order):
        restores, removes = shares[component, "denoising"], shares[component, "noising"]
        rows.append(ComponentEffect(component=component, restores=restores, removes=removes, matters=(
            counts(restores, method.component_threshold) or counts(removes, method.component_threshold))))
    return rows, float(clean.mean()), float(corrupted.mean())


def per_component(result) -> dict[str, np.ndarray]:
    """``{"head.L.H" | "mlp.L": per-prompt patched logit difference}`` of a head/MLP sweep result."""
    out = {}
    for sweep in result.sweeps:
        values = result.tensors[f"logit_diff.{sweep.name}"].double().numpy()
        for layer_index, layer in enumerate(sweep.layers):
            if sweep.site == "head":
                for head_index, head in enumerate(sweep.heads):
                    out[f"head.{layer}.{head}"] = values[layer_index, head_index]
            else:
                out[f"{sweep.site}.{layer}"] = values[layer_index]
    return out


def edge_table(model: "LoadedModel", pairs: "PromptPairs", components: Sequence[str],
               method: KeyMethod) -> tuple[Edge, ...]:
    """Every path the key measures (see the module docstring), with the share it carries."""
    from tools.experiments import PathPatchingSpec
    from tools.experiments.registry import run_experiment

    receivers: list[tuple[str, tuple[str, ...]]] = []
    if components:
        receivers.append(("logits", tuple(components)))
    for name in components:
        c = parse_component(name)
        senders = tuple(s for s in components if parse_component(s).layer < c.layer)
        if c.kind == "head" and senders:
            receivers += [(f"{name}.{part}", senders) for part in ("q", "k", "v")]
    edges = []
    for receiver, senders in receivers:
        result = run_experiment(model, PathPatchingSpec(prompts=pairs, receivers=(receiver,), senders=senders,
                                                        freeze_mlps=True, mode="noising"))
        t = result.tensors
        clean, corrupted = t["clean_logit_diff"].double().numpy(), t["corrupted_logit_diff"].double().numpy()
        patched = t["logit_diff.senders"].double().numpy()
        for i, sender in enumerate(result.senders):
            edges.append(Edge(sender=sender, receiver=receiver,
                              carried=_interval(clean - patched[i], clean - corrupted, method)))
    return tuple(edges)


def planted_components(model: "LoadedModel", task: str) -> tuple[str, ...]:
    """The component a model folder's ``ground_truth.json`` says ``task`` was planted in."""
    path = Path(model.source) / "ground_truth.json"
    if not path.is_file():
        return ()
    truth = json.loads(path.read_text(encoding="utf-8"))
    return (truth["component"],) if truth.get("behaviour") == task else ()


def _behaviour(model: "LoadedModel", task: str) -> str:
    from tools.tasks import TASK_NAMES, get_task

    if task in TASK_NAMES:
        return get_task(task).title
    path = Path(model.source) / "ground_truth.json"
    return json.loads(path.read_text(encoding="utf-8"))["description"]


def _interval(numerator: np.ndarray, denominator: np.ndarray, method: KeyMethod) -> Effect:
    ci = ratio_bootstrap_ci(numerator, denominator, confidence=method.confidence,
                            n_resamples=method.n_resamples, seed=method.bootstrap_seed)
    return Effect(estimate=ci.estimate, low=ci.low, high=ci.high)


def _forward_order(name: str) -> tuple[int, int, int]:
    c = parse_component(name)
    return c.layer, c.kind == "mlp", c.head or 0


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line and exit code 2, as in ``sleuth``."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _targets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[KeyTarget]:
    """The keys the command line asks for: shipped ones by name, or one of the user's own."""
    own = [flag for flag, value in (("--model", args.model), ("--task", args.task), ("--name", args.name),
                                    ("--n", args.n), ("--prompts", args.prompts)) if value is not None]
    if own and (args.all or args.key):
        parser.error("give shipped keys (--key, --all) or a key of your own (--model, --task, --name), not both")
    if own:
        if args.task and args.prompts:
            parser.error("give --task or --prompts, not both")
        if args.prompts and args.n is not None:
            parser.error("--n goes with --task; a prompts file's key takes every prompt in it")
        missing = [flag for flag in ("--model", "--name") if flag not in own]
        if not (args.task or args.prompts):
            missing.append("--task or --prompts")
        if missing:
            parser.error(f"a key of your own needs {', '.join(missing)} too")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
            parser.error(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' (it names the file)")
        if args.name in SHIPPED:
            parser.error(f"--name {args.name!r} is a shipped key's; recompute it with --key {args.name}")
        try:
            check_prompt_count(args.n)
        except UserInputError as error:
            parser.error(str(error))
        if args.prompts:
            return [KeyTarget(name=args.name, model=args.model, prompts_file=args.prompts)]
        return [KeyTarget(name=args.name, model=args.model, task=args.task, n=args.n or USER_N)]
    names = sorted(SHIPPED) if args.all else args.key
    if not names:
        parser.error("give --key NAME (repeatable) or --all, or --model, --task and --name for a key of your own")
    return [SHIPPED[name] for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m evals.keys.compute",
                     description="compute answer keys by brute force: the shipped ones, or one of your own for "
                                 "`sleuth eval --questions`")
    parser.add_argument("--key", action="append", choices=sorted(SHIPPED), help="a key to compute (repeatable)")
    parser.add_argument("--all", action="store_true", help="every shipped key")
    parser.add_argument("--model", help="your own key: the model, as `sleuth --model` names it")
    parser.add_argument("--task", help="your own key: a task (ioi, induction, ...) or one the model folder declares")
    parser.add_argument("--prompts", help="your own key, instead of --task: a YAML or JSON file of clean, "
                                          "corrupted, answer and foil lists")
    parser.add_argument("--name", help="your own key: its name (and file name)")
    parser.add_argument("--n", type=int, help=f"your own key: prompts of the held-out split (default {USER_N})")
    parser.add_argument("--out-dir", default=None,
                        help="where to write <name>.json (default: evals/keys for shipped keys, "
                             "the current folder for your own)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    targets = _targets(args, parser)
    out_dir = Path(args.out_dir or (KEYS_DIR if targets[0].name in SHIPPED else "."))
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the log lines above say where it is; a mistake stays one line
    from tools.loading import load_model

    loaded: dict[str, "LoadedModel"] = {}
    try:
        for target in targets:
            prompts = target.key_prompts()  # read once, its mistakes found before the model loads
            model = loaded.get(target.model) or loaded.setdefault(target.model, load_model(target.model))
            start = time.monotonic()
            key = compute_key(model, target, prompts=prompts)
            out_dir.mkdir(parents=True, exist_ok=True)
            path = save_key(key, out_dir / f"{target.name}.json")
            log.info("%s: %d components, %d edges, %.0f s -> %s", target.name, len(key.components),
                     len(key.edges), time.monotonic() - start, path)
    except UserInputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
