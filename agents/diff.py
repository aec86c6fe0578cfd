"""``sleuth diff``: what changed inside a model, against a base model, for one behaviour.

1. Both models are loaded and checked to share a tokenizer and an architecture (one clear line
   otherwise). The behaviour is read from the question (or a spec file) as ``sleuth ask`` reads
   it; a behaviour a model folder declares (the planted trigger) comes from whichever of the
   two declares it. The discovery and fresh prompt sets are drawn as an investigation draws them
   (`agents.steps.Toolbox`), and both models run on the *same* prompts.
2. On the discovery prompts, for each model: the behaviour, activation patching of every head
   and MLP, direct logit attribution, the last token's attention; and cross-model patching of
   every head, attention sublayer and MLP from the model into the base. Every experiment goes
   through the workspace's content-addressed cache.
3. The comparisons (`tools.model_diff`): per (measure, component) a paired bootstrap over
   prompts of B − A against a smallest change of interest, Holm-corrected across all of them;
   significant changes ranked. Weight-change norms (`tools.weight_diff`) are reported beside.
4. The investigation of the top changed components, on the fresh prompts, two pre-registered
   claims each (predictions: half of the discovery value, rounded down to 0.05), Holm-corrected
   together:
   - *transfer*: patching the component's output from the model into the base moves the base's
     logit difference by at least the predicted share of the difference between the models
     (second method: the other direction, the base's component patched into the model; controls:
     three random other components of the same sweep);
   - *necessity* in the model: resample-ablating the component removes at least the predicted
     share of the model's logit difference, examined by the critic (`agents.critic`: the other
     ablation, three random component sets), with the same ablation on the base as a contrast.
5. The run is stored in the workspace (``run.json`` settings ``kind: diff``; ``investigation.json``
   names every experiment it rests on; the claims in ``claims.jsonl``) and its report written;
   `diff_summary` (what ``--json`` prints) is rebuilt from those stored files, like the report.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from agents.behavior import BehaviorSpec, default_prompt_count, load_spec_file, with_prompt_count
from agents.intake import intake
from agents.report.build import prompt_examples
from tools.errors import UserInputError
from tools.stats import Interval
from tools.tasks import check_prompt_count

if TYPE_CHECKING:
    from memory.runstore import Run
    from tools.loading import LoadedModel

TOP_K = 3
"""How many of the top changed components the investigation examines."""


def diff_models(question: str, *, base: str, model: str, spec_file: str | None = None,
                workspace: str | None = None, seed: int = 0, n: int | None = None,
                lock_timeout: float | None = None) -> dict[str, Any]:
    """Run a diff to the end; return `diff_summary` of the stored run."""
    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.experiments.cross_model_patching import check_comparable
    from tools.loading import load_model

    check_prompt_count(n)
    if not question.strip() and spec_file is None:
        raise UserInputError("diff needs a question naming the behaviour (or --spec FILE)")
    behavior = load_spec_file(spec_file) if spec_file is not None else None
    started = time.monotonic()
    a, b = load_model(base), load_model(model)
    check_comparable(a, b)
    behavior, declarer = _behaviour(question, behavior, a, b, seed=seed, n=n)
    with Workspace.open(workspace, writer=True, timeout=lock_timeout) as ws:
        store = RunStore(ws)
        run = store.create(f"what changed from {a.model_id} to {b.model_id}: {behavior.question}", b.model_id,
                           weights_hash=b.weights_hash,
                           settings={"kind": "diff", "base": base, "model": model,
                                     "base_weights_hash": a.weights_hash, "behavior": behavior.model_dump(mode="json"),
                                     "seed": seed, "top_k": TOP_K})
        run.update(status="running")
        from agents.report.render import reported

        from tools.experiments.memo import SharedRuns, sharing_runs

        # the diff's experiments share unpatched runs and ablation baselines, per model, as an
        # investigation's do (`tools.experiments.memo`: keyed by the model's weights)
        with reported(run, started), sharing_runs(SharedRuns()):
            run.write_investigation(measure_diff(run, a, b, behavior, declarer, seed=seed))
        return diff_summary(run)


def _behaviour(question: str, behavior: BehaviorSpec | None, a: "LoadedModel", b: "LoadedModel", *,
               seed: int, n: int | None) -> tuple[BehaviorSpec, "LoadedModel"]:
    """The behaviour (checked against the shared tokenizer) and the model whose folder declares it
    (the model B unless only the base declares it)."""
    from tools.tasks.declared import declared_tasks

    declared_b, declared_a = declared_tasks(b.source), declared_tasks(a.source)
    declared = {**declared_a, **declared_b}
    context = getattr(b.hf_model.config, "max_position_embeddings", None)
    prompts_n = n or default_prompt_count(b.hf_model)
    if behavior is not None:
        behavior = with_prompt_count(behavior, n, prompts_n)
        behavior.check(b.tokenizer, context, generator=declared.get(behavior.task or ""))
    else:
        behavior = intake(question, tokenizer=b.tokenizer, n=prompts_n, seed=seed, max_length=context,
                          declared=declared)
    if behavior.task is None and not behavior.corrupted:
        raise UserInputError("the behaviour has no corrupted prompt; the comparisons patch clean into corrupted "
                             "runs, so quote one (corrupted: \"...\") or give one in a spec file")
    declarer = b if (behavior.task or "") in declared_b or (behavior.task or "") not in declared_a else a
    return behavior, declarer


def measure_diff(run: "Run", a: "LoadedModel", b: "LoadedModel", behavior: BehaviorSpec,
                 declarer: "LoadedModel", *, seed: int = 0) -> dict[str, Any]:
    """Every experiment of the diff, through ``run``'s cache; returns ``investigation.json``."""
    from agents.critic import critic_seed, examine_claim
    from agents.diff_readout import read_diff
    from agents.playbook import preregister
    from agents.positions import scope_positions
    from agents.steps import Toolbox
    from tools.experiments import (
        AblationSpec,
        ActivationPatchingSpec,
        AttentionPatternSpec,
        BehaviourExperimentSpec,
        CrossModelPatchingSpec,
        DirectLogitAttributionSpec,
        PatchSweep,
    )
    from tools.weight_diff import weight_change_norms

    toolbox = Toolbox(model=declarer, run=run, behavior=behavior)
    discovery, fresh = toolbox.prompts, toolbox.fresh_prompts
    evidence: dict[str, Any] = {}
    for side, m in (("base", a), ("model", b)):
        evidence[side] = {
            "behaviour": run.experiment(m, BehaviourExperimentSpec(prompts=discovery)).key,
            "patching": run.experiment(m, ActivationPatchingSpec(
                prompts=discovery, sweeps=(PatchSweep(site="head"), PatchSweep(site="mlp")))).key,
            "dla": run.experiment(m, DirectLogitAttributionSpec(prompts=discovery)).key,
            "attention": run.experiment(m, AttentionPatternSpec(prompts=discovery, saved_prompts=0,
                                                                from_last=True)).key,
        }
    cross = CrossModelPatchingSpec(prompts=discovery, source_model_id=b.model_id, source_weights_hash=b.weights_hash)
    evidence["cross_model"] = _cross(run, a, b, cross).key
    record: dict[str, Any] = {
        "kind": "diff", "evidence": evidence, "seed": seed,
        "base": {"model_id": a.model_id, "weights_hash": a.weights_hash},
        "model": {"model_id": b.model_id, "weights_hash": b.weights_hash},
        "weights": weight_change_norms(a, b).model_dump(mode="json"),
        "prompts": {"discovery": discovery.model_dump(mode="json"), "fresh": fresh.model_dump(mode="json"),
                    "fresh_kind": toolbox.fresh_kind, "examples": prompt_examples(a.tokenizer, {"discovery": discovery, "fresh": fresh})},
        "investigation": [],
    }
    readout = read_diff(run, record)
    top = readout["top_changed"]
    if top:
        positions = scope_positions(b, discovery)
        necessity, seeds = [], []
        for component in top:
            found = run.experiment(b, AblationSpec(prompts=discovery, components=(component,), method="resample",
                                                   mode="ablate", positions=positions))
            from agents.claims import SetClaim

            claim = SetClaim(id=f"necessity-{component}", kind="necessity", components=(component,),
                             threshold=preregister(found.necessity), method="resample")
            seeds.append(critic_seed(seed, claim))  # the component's transfer test draws from it too
            necessity.append(examine_claim(_Experiments(run), b, claim, fresh, seed=seeds[-1], named=top))
            contrast = run.experiment(a, AblationSpec(prompts=fresh, components=(component,), method="resample",
                                                      mode="ablate", positions=scope_positions(a, fresh)))
            record["investigation"].append({"component": component, "discovery": found.key,
                                            "discovery_necessity": found.necessity, "contrast": contrast.key,
                                            "seed": seeds[-1]})
        forward = _cross(run, a, b, cross.model_copy(update={"prompts": fresh}))
        reverse = _cross(run, b, a, CrossModelPatchingSpec(prompts=fresh, source_model_id=a.model_id,
                                                           source_weights_hash=a.weights_hash))
        discovered = run.load_experiment(evidence["cross_model"])
        transfer = [transfer_test(discovered, forward, reverse, component, seed=s, named=top)
                    for component, s in zip(top, seeds)]
        record["transfer"] = {"forward": forward.key, "reverse": reverse.key}
        _store_claims(run, b, behavior, necessity, transfer, record)
    return record


class TransferTest(BaseModel):
    """The critic's test of a transfer claim: patching the component from the model into the base moves
    the base's logit difference by at least ``threshold`` of the difference between them (fresh prompts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str
    threshold: float
    """Half of the share measured on the discovery prompts, rounded down to 0.05 (at most 0.5)."""
    discovery_share: float
    replication: Interval
    """The share on fresh prompts, patching the model's component into the base (ratio-of-means CI)."""
    second: Interval
    """The other direction: the share removed from the model by patching the base's component into it."""
    controls: tuple[float, ...]
    """The shares transferred by three random other components of the same sweep."""
    control_kind: str
    """How the controls were drawn, in words (outside the other examined components when possible)."""
    p_value: float
    adjusted_p: float | None = None
    evidence: tuple[str, ...]

    def verdict(self, alpha: float = 0.05) -> str:
        if self.replication.high < self.threshold:
            return "refuted"
        if (self.replication.low > self.threshold and self.second.low > self.threshold and self.adjusted_p is not None
                and self.adjusted_p < alpha and all(self.replication.estimate > c for c in self.controls)):
            return "supported"
        return "inconclusive"


def transfer_test(discovered, forward, reverse, component: str, *, seed: int, n_controls: int = 3,
                  named: Sequence[str] = ()) -> TransferTest:
    """Measure a transfer claim from stored cross-model patching results (see `TransferTest`).
    ``named``: the components the diff's claims name, kept out of the controls when possible."""
    from agents.critic import control_sets, controls_outside
    from agents.playbook import preregister
    from tools.stats import ratio_bootstrap_ci, ratio_bootstrap_pvalue

    def terms(result, name: str, removed: bool):
        base = result.tensors["base_logit_diff"].double().numpy()
        source = result.tensors["source_logit_diff"].double().numpy()
        patched = _patched(result, name)
        if removed:  # the model (base of this result) with the component from the base model
            return base - patched, base - source
        return patched - base, source - base

    share = float(_patched(discovered, component).mean() - discovered.tensors["base_logit_diff"].double().mean())
    share /= float(discovered.tensors["source_logit_diff"].double().mean()
                   - discovered.tensors["base_logit_diff"].double().mean())
    threshold = preregister(share)
    pool = [_name(sweep, i) for sweep in forward.sweeps for i in range(_cells(sweep))]
    controls = [float(np.mean(terms(forward, c[0], False)[0]) / np.mean(terms(forward, c[0], False)[1]))
                for c in control_sets(pool, {component}, n_controls, seed=seed, avoid=named)]
    num, den = terms(forward, component, False)
    replication = ratio_bootstrap_ci(num, den, seed=seed)
    second = ratio_bootstrap_ci(*terms(reverse, component, True), seed=seed)
    p = ratio_bootstrap_pvalue(num, den, threshold=threshold, seed=seed)
    return TransferTest(component=component, threshold=threshold, discovery_share=share, replication=replication,
                        second=second, controls=tuple(controls),
                        control_kind=f"{n_controls} random other components" + controls_outside(pool, {component}, named),
                        p_value=p, evidence=(forward.key, reverse.key))


def _cells(sweep) -> int:
    return len(sweep.layers) * (len(sweep.heads) or 1)


def _name(sweep, i: int) -> str:
    if sweep.heads:
        layer, head = divmod(i, len(sweep.heads))
        return f"head.{sweep.layers[layer]}.{sweep.heads[head]}"
    return f"{sweep.site}.{sweep.layers[i]}"


def _patched(result, component: str) -> np.ndarray:
    """Per prompt, the base's logit difference with ``component`` from the source."""
    for sweep in result.sweeps:
        for i in range(_cells(sweep)):
            if _name(sweep, i) == component:
                values = result.tensors[f"logit_diff.{sweep.name}"].double()
                return values.reshape(-1, values.shape[-1])[i].numpy()
    raise UserInputError(f"cross-model patching has no component {component}")


def _cross(run: "Run", base: "LoadedModel", source: "LoadedModel", spec):
    """Cross-model patching through the run's cache; the source model's forward passes are
    counted in ``run.json`` too (the cache counts only the base model's)."""
    from tools.experiments import run_cross_model_patching

    mark = source.forwards.mark()
    result = run.experiment(base, spec, runner=lambda m, s: run_cross_model_patching(m, source, s))
    extra, rows = source.forwards.since(mark)
    if extra:
        cost = run.record.cost
        run.update(cost={"forward_passes": cost.forward_passes + extra, "forward_rows": cost.forward_rows + rows})
    return result


class _Experiments:
    """``run`` as the critic uses it (``experiment(model, spec)``)."""

    def __init__(self, run: "Run") -> None:
        self._run = run

    def experiment(self, model, spec):
        return self._run.experiment(model, spec)


def _store_claims(run: "Run", b: "LoadedModel", behavior: BehaviorSpec, necessity: list, transfer: list,
                  record: dict) -> None:
    """Holm across every claim of the investigation; each claim stored with its measurements."""
    from agents.critic import verdict_for
    from memory.records import Claim
    from tools.stats import holm

    adjusted = holm([t.p_value for t in necessity] + [t.p_value for t in transfer])
    necessity = [t.model_copy(update={"adjusted_p": p}) for t, p in zip(necessity, adjusted)]
    transfer = [t.model_copy(update={"adjusted_p": p}) for t, p in zip(transfer, adjusted[len(necessity):])]
    for entry, t, x in zip(record["investigation"], necessity, transfer):
        component = t.claim.components[0]
        entry["claim"], entry["transfer_claim"] = t.claim.id, f"transfer-{component}"
        run.add_claim(Claim(
            id=t.claim.id, run_id=run.id, components=list(t.claim.components),
            statement=(f"{component} is necessary for the behaviour in {b.model_id}: resample-ablating it (from the "
                       f"first changed token on) removes at least {t.claim.threshold:.2f} of the logit difference "
                       "on fresh prompts."),
            prediction=f"share of the logit difference removed by ablating {component} >= {t.claim.threshold:g} "
                       "on fresh prompts, resample ablation",
            verdict=verdict_for(t), effect=t.replication.estimate, ci_low=t.replication.low,
            ci_high=t.replication.high, n=t.n, evidence=list(t.evidence), model_id=b.model_id,
            weights_hash=b.weights_hash, task=behavior.task,
            details={"kind": t.claim.kind, "role": "diff", "threshold": t.claim.threshold,
                     "second_method": t.second_method, "second_ablation": t.second_ablation.model_dump(),
                     "control_kind": t.control_kind, "controls": list(t.controls), "p_value": t.p_value,
                     "adjusted_p": t.adjusted_p, "seed": entry["seed"], "claim": t.claim.model_dump(mode="json")}))
        run.add_claim(Claim(
            id=f"transfer-{component}", run_id=run.id, components=[component],
            statement=(f"The change in {component} carries the behaviour change: patching its output from "
                       f"{b.model_id} into the base moves the base's logit difference by at least {x.threshold:.2f} "
                       "of the difference between the two models on fresh prompts."),
            prediction=f"share of the model − base difference transferred by {component} >= {x.threshold:g} on "
                       "fresh prompts",
            verdict=x.verdict(), effect=x.replication.estimate, ci_low=x.replication.low, ci_high=x.replication.high,
            n=x.replication.n, evidence=list(x.evidence), model_id=b.model_id, weights_hash=b.weights_hash,
            task=behavior.task,
            details={"kind": "transfer", "role": "diff", "threshold": x.threshold,
                     "discovery_share": x.discovery_share,
                     "second_method": "the other direction (the base's component patched into the model)",
                     "second_ablation": x.second.model_dump(), "control_kind": x.control_kind,
                     "controls": list(x.controls), "p_value": x.p_value, "adjusted_p": x.adjusted_p,
                     "seed": entry["seed"]}))


def diff_summary(run: "Run") -> dict[str, Any]:
    """What ``sleuth diff --json`` prints, rebuilt from the stored run (see the README)."""
    from agents.diff_readout import read_diff

    investigation = run.investigation()
    if not investigation or investigation.get("kind") != "diff":
        raise UserInputError(f"run {run.id} is not a diff")
    readout = read_diff(run, investigation)
    claims = {c.id: c for c in run.claims()}
    report = run.folder / "reports"
    return {
        "run_id": run.id, "status": run.record.status,
        "base": investigation["base"], "model": investigation["model"],
        "behaviour": run.record.settings.get("behavior", {}).get("task") or run.record.question,
        "n": readout["n"], "scale": readout["scale"], "margins": readout["margins"],
        "significant": sum(c["significant"] for c in readout["changes"]),
        "tests": len(readout["changes"]),
        "changes": readout["changes"],
        "top_changed": readout["top_changed"],
        "investigation": [_investigated(entry, claims, readout) for entry in readout["investigation"]],
        "weight_changes": [w for w in investigation["weights"]["changes"] if w["norm"] > 0],
        "report": {"md": str(report / "report.md") if (report / "report.md").exists() else None,
                   "html": str(report / "report.html") if (report / "report.html").exists() else None},
        "cost": {"experiments": run.record.cost.experiments, "forward_passes": run.record.cost.forward_passes,
                 "wall_s": round(run.record.cost.wall_s, 2)},
    }


def _investigated(entry: dict, claims: dict, readout: dict) -> dict[str, Any]:
    out = {"component": entry["component"], "discovery_necessity": entry["discovery_necessity"],
           "base_necessity": entry.get("base_necessity"), "base_ci": entry.get("base_ci")}
    for key, claim_id in (("necessity", entry.get("claim")), ("transfer", entry.get("transfer_claim"))):
        claim = claims.get(claim_id or "")
        if claim is None:
            continue
        out[key] = {"claim": claim.id, "statement": claim.statement, "threshold": claim.details.get("threshold"),
                    "verdict": claim.verdict, "effect": claim.effect, "ci": [claim.ci_low, claim.ci_high],
                    "p": claim.details.get("p_value"), "adjusted_p": claim.details.get("adjusted_p"),
                    "controls": claim.details.get("controls"), "second_method": claim.details.get("second_method"),
                    "second": claim.details.get("second_ablation")}
    return out
