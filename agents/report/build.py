"""A run's report as data, rebuilt from the run folder alone.

`build_report(run)` reads ``run.json`` (question, model, status, cost), ``claims.jsonl`` (the
critic's verdicts and measurements), ``investigation.json`` (which step ran which experiments)
and the stored experiment results, and recomputes every number it shows from those results
with the same functions the worker used (`agents.readouts`). Nothing comes from a process's
memory, so ``sleuth report`` on a finished run, a served report and the file written at the
end of the run agree, and a stored result edited by hand shows up in every format.

Text is carried in two kinds (`Prose`): ``md`` — written by trusted code, Markdown whose only
markup is code spans around untrusted pieces (tokens, the user's words) — and ``llm`` — an
LLM's words, shown verbatim and escaped. Strings that come from outside (the question, the
prompts, notes, memory) are kept raw and escaped by the renderers.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.readouts import (
    head_effects,
    read_circuit_sizes,
    read_confirm,
    read_lens,
    read_paths,
    read_roles,
    read_steer,
)
from agents.report.answer import ROLE_ORDER, compose_answer, no_behaviour_answer, ordered
from agents.report.charts import Chart, Diagram, Edge, Heatmap, LineChart, Node, Series
from memory.records import Claim, Cost
from tools.stats import smallest_pvalue

if TYPE_CHECKING:
    from memory.runstore import Run

log = logging.getLogger(__name__)


class Prose(BaseModel):
    model_config = ConfigDict(frozen=True)
    text: str
    kind: Literal["md", "llm"] = "md"


class ClaimRow(BaseModel):
    """One claim as the report shows it."""

    model_config = ConfigDict(frozen=True)
    id: str
    statement: Prose
    role: str
    kind: str
    verdict: str
    prediction: str
    threshold: float | None
    effect: float | None
    ci: tuple[float | None, float | None]
    n: int | None
    second_method: str | None
    second: tuple[float, float, float] | None
    control_kind: str | None
    controls: list[float]
    p_value: float | None
    adjusted_p: float | None
    components: list[str]
    evidence: list[str]


class Figure(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    title: str
    caption: Prose
    chart: Chart = Field(discriminator="kind")
    evidence: list[str]


class Missing(BaseModel):
    """A figure this run has no data for, and why."""

    model_config = ConfigDict(frozen=True)
    title: str
    why: str


class ExperimentRow(BaseModel):
    """One stored experiment, for the methods section."""

    model_config = ConfigDict(frozen=True)
    key: str
    kind: str
    prompts: str
    spec: dict[str, Any]
    """The spec's fields other than its prompts."""
    seed: int | None


class ReportData(BaseModel):
    model_config = ConfigDict(frozen=True)
    run_id: str
    question: str
    status: str
    model_id: str
    weights_hash: str
    brain: str
    created_at: str
    updated_at: str
    answer: Prose
    stopped_in: str | None
    claims: list[ClaimRow]
    figures: list[Figure]
    missing: list[Missing]
    findings: list[Prose]
    """What the exploration measured, before any claim."""
    prior: list[dict[str, Any]]
    reading: list[str]
    """How intake read the question (raw notes: untrusted)."""
    scope: list[Prose]
    prompts: dict[str, Any]
    experiments: list[ExperimentRow]
    seeds: list[Prose]
    versions: dict[str, list[str]]
    cost: Cost
    llm: dict[str, Any] | None
    llm_events: list[dict[str, Any]]
    limitations: list[Prose]

    @property
    def negative(self) -> list[ClaimRow]:
        return [c for c in self.claims if c.verdict in ("refuted", "inconclusive")]


class _Results:
    """Stored results of one run by key, loaded once each; a missing or damaged one is None."""

    def __init__(self, run: "Run") -> None:
        self.run = run
        self._seen: dict[str, Any] = {}

    def get(self, key: str | None):
        if key is None:
            return None
        if key not in self._seen:
            try:
                self._seen[key] = self.run.load_experiment(key)
            except Exception as e:  # noqa: BLE001 - a damaged result costs its figure, not the report
                log.warning("run %s: experiment %s does not load (%s)", self.run.id, key[:12], e)
                self._seen[key] = None
        return self._seen[key]

    def all(self, keys) -> list | None:
        out = [self.get(k) for k in keys]
        return None if any(r is None for r in out) else out


def build_report(run: "Run") -> ReportData:
    """The report of ``run`` from its stored files (see the module docstring)."""
    record = run.record
    investigation = run.investigation() or {}
    outcomes = investigation.get("outcomes") or []
    last = {o["step"]: o for o in outcomes}
    results = _Results(run)
    claims = ordered(run.claims())
    rows = [_claim_row(c) for c in claims]
    measured = _measure(last, outcomes, results)
    figures, missing = _figures(measured, last, claims, record.model_id)
    status = record.status
    stopped_in = investigation.get("stopped_in")
    settings = record.settings
    behavior = settings.get("behavior") or {}
    return ReportData(
        run_id=record.id, question=record.question, status=status, model_id=record.model_id,
        weights_hash=record.weights_hash or "", brain=settings.get("brain", "heuristic"),
        created_at=record.created_at, updated_at=record.updated_at,
        answer=_answer(investigation, claims, measured, status, stopped_in),
        stopped_in=stopped_in, claims=rows, figures=figures, missing=missing,
        findings=_findings(measured), prior=_prior(investigation.get("prior") or [], claims),
        reading=[str(n) for n in behavior.get("notes") or []],
        scope=_scope(investigation.get("context") or {}),
        prompts=_prompt_summary(investigation.get("context") or {}),
        experiments=_experiments(run, investigation.get("context") or {}),
        seeds=_seeds(behavior, investigation.get("context") or {}, claims),
        versions=_versions(run), cost=record.cost,
        llm=settings.get("llm") if settings.get("brain") == "openai" else None,
        llm_events=list(investigation.get("llm_events") or []),
        limitations=_limitations(record, investigation, measured, claims))


# -- numbers, recomputed from the stored results ------------------------------------------------------


def _measure(last: dict, outcomes: list, results: _Results) -> dict[str, Any]:
    """Each step's readout from its stored results (a step whose results do not load is left out)."""
    out: dict[str, Any] = {}
    if "confirm" in last and (r := results.get(last["confirm"]["evidence"][0])) is not None:
        out["confirm"] = read_confirm(r)
    if "lens" in last and (rs := results.all(last["lens"]["evidence"][:2])) is not None:
        out["lens"] = {**read_lens(*rs), "tokens": last["lens"].get("tokens") or {},
                       "labels": last["lens"].get("labels") or {}}
    if "rank" in last:
        rank = last["rank"]
        stored = results.all(rank["evidence"])
        if stored is not None:
            from agents.localize import component_effects

            effects = component_effects(stored[0])
            if rank["method"] == "attribution_patching" and len(stored) > 1:
                confirmed = {s.components[0]: s.effect for s in stored[1].component_sets}
            else:
                confirmed = {}
            order = sorted(effects, key=lambda c: (-abs(effects[c]), c))
            out["rank"] = {"method": rank["method"], "effects": effects, "order": order, "confirmed": confirmed,
                           "significant": list(rank.get("significant") or []), "grid": head_effects(stored[0]),
                           "evidence": list(rank["evidence"])}
    circuits = [o for o in outcomes if o["step"] == "circuit"]
    if circuits:
        keys = [k for o in circuits for k in o.get("evidence") or []]
        stored = [r for r in (results.get(k) for k in keys) if r is not None]
        final = circuits[-1]
        out["circuit"] = {"components": list(final["components"]), "target": final["target"],
                          "reached": final["reached"], "sizes": read_circuit_sizes(stored),
                          "targets": sorted({o["target"] for o in circuits}), "evidence": keys,
                          "by_method": _by_method(stored, final["components"])}
    if "roles" in last and (rs := results.all(last["roles"]["evidence"])) is not None:
        components = list(last["roles"]["roles"].keys())
        out["roles"] = {**read_roles(components, *rs), "tokens": last["roles"].get("tokens") or [],
                        "attention": rs[1]}
    if "paths" in last and (rs := results.all(last["paths"]["evidence"])) is not None:
        out["paths"] = read_paths(last["paths"]["receiver"], rs)
    if "steer" in last and (r := results.get(last["steer"]["evidence"][0])) is not None:
        out["steer"] = read_steer(r)
    return out


def _by_method(stored: list, components: list[str]) -> dict[str, float | None]:
    return {r.spec.method: r.faithfulness for r in stored
            if r.spec.mode == "keep" and list(r.spec.components) == list(components)}


def _answer(investigation: dict, claims: list[Claim], measured: dict, status: str, stopped_in: str | None) -> Prose:
    source = (investigation.get("answer") or {}).get("source", "claims")
    if source == "no_behaviour" and "confirm" in measured:
        answer = Prose(text=no_behaviour_answer(measured["confirm"]))
    elif source == "narrative":
        from agents.narrative import Narrative, fill_narrative

        narrative = Narrative.model_validate(investigation["answer"]["narrative"])
        answer = Prose(text=fill_narrative(narrative, claims), kind="llm")
    elif source == "text":
        answer = Prose(text=investigation["answer"].get("text") or "", kind="llm")
    else:
        answer = Prose(text=compose_answer(claims, (measured.get("lens") or {}).get("tokens")))
    if status == "budget_exhausted":
        prefix = f"The budget ran out during the {stopped_in}; what is below is what was established by then. "
        answer = Prose(text=prefix + answer.text, kind=answer.kind) if answer.kind == "md" else answer
    return answer


def _claim_row(c: Claim) -> ClaimRow:
    d = c.details
    second = d.get("second_ablation")
    return ClaimRow(
        id=c.id, statement=Prose(text=c.statement, kind="llm" if d.get("role") == "llm" else "md"),
        role=d.get("role", ""), kind=d.get("kind", ""), verdict=c.verdict, prediction=c.prediction,
        threshold=d.get("threshold"), effect=c.effect, ci=(c.ci_low, c.ci_high), n=c.n,
        second_method=d.get("second_method"),
        second=(second["estimate"], second["low"], second["high"]) if second else None,
        control_kind=d.get("control_kind"), controls=list(d.get("controls") or []), p_value=d.get("p_value"),
        adjusted_p=d.get("adjusted_p"), components=list(c.components), evidence=list(c.evidence))


def _findings(m: dict[str, Any]) -> list[Prose]:
    """What the exploration measured (before claims): behaviour, lens, ranking, circuit, roles, steering."""
    lines = []
    if "confirm" in m:
        c = m["confirm"]
        lines.append(f"Behaviour on the discovery prompts: logit difference {c['logit_diff']:.2f}, the answer "
                     f"preferred to the foil on {c['prefers_answer']:.0%}, top-1 accuracy {c['accuracy']:.2f} "
                     f"(n={c['n']}).")
    if "lens" in m:
        lens = m["lens"]["lens"]
        first = next((l["site"] for l in lens if l["logit_diff"] > 0 and l["top1"] >= 0.5), None)
        lines.append(f"Logit lens: the answer is top-1 on most prompts from {first or 'no layer'} on "
                     f"(final logit difference {lens[-1]['logit_diff']:.2f}).")
    if "rank" in m:
        r = m["rank"]
        top = ", ".join(f"{c} {r['effects'][c]:.2f}" for c in r["order"][:8])
        lines.append(f"Patching ({r['method'].replace('_', ' ')}), largest effects: {top}; "
                     f"{len(r['significant'])} of {len(r['order'])} components clear of zero.")
    if "circuit" in m:
        c = m["circuit"]
        methods = ", ".join(f"{k} {v:.2f}" for k, v in c["by_method"].items() if v is not None)
        sizes = sorted({s["size"] for s in c["sizes"]})
        missed = ("" if c["reached"] or not sizes else
                  f" No prefix of up to {max(sizes)} components reached the target; this is the best one tried.")
        lines.append(f"Circuit search: {len(c['components'])} components, faithfulness {methods or 'not measured'} "
                     f"(target {c['target']:.2f}; sizes tried {sizes}).{missed}")
    if "roles" in m:
        parts = []
        for name, r in m["roles"]["roles"].items():
            bits = [f"DLA {r['dla']:.2f}"] + ([f"direct {r['direct']:.2f}"] if r.get("direct") is not None else [])
            bits += [f"{k} {r[k]:.2f}" for k in ("to_answer", "to_foil", "to_changed") if r.get(k) is not None]
            parts.append(f"{name} ({', '.join(bits)})")
        lines.append("Roles: " + "; ".join(parts) + ".")
    if "steer" in m and m["steer"]["removed"] is not None:
        s = m["steer"]
        control = "not run" if s["control_removed"] is None else f"{s['control_removed']:.2f}"
        lines.append(f"Steering at {s['site']}: subtracting the direction removes {s['removed']:.2f} of the logit "
                     f"difference (random direction of the same norm: {control}).")
    return [Prose(text=t) for t in lines]


# -- figures ---------------------------------------------------------------------------------------------


def _figures(m: dict[str, Any], last: dict, claims: list[Claim], model_id: str) -> tuple[list[Figure], list[Missing]]:
    figures: list[Figure] = []
    missing: list[Missing] = []

    def add(title: str, builder, why: str) -> None:
        try:
            figure = builder()
        except (KeyError, IndexError, ValueError, TypeError) as e:  # incomplete data: say so, keep the rest
            log.warning("figure %r not drawn: %s", title, e)
            figure, why = None, f"its stored data is incomplete ({type(e).__name__})"
        if figure is None:
            missing.append(Missing(title=title, why=why))
        else:
            figures.append(figure)

    add("The mechanism", lambda: _diagram(m, claims), "no circuit was found in this run")
    add("Residual stream patching (layer × position)", lambda: _resid_figure(m),
        "the lens step did not run")
    add("Head and MLP patching (layer × head)", lambda: _head_figure(m), "the ranking step did not run")
    add("Logit lens", lambda: _lens_figure(m), "the lens step did not run")
    add("Attention of the key heads", lambda: _attention_figure(m), "the roles step did not run")
    add("Steering dose-response", lambda: _steer_figure(m),
        "the steering step did not run (no layer at which restoring the final token restores 80%)")
    add("Faithfulness against circuit size", lambda: _faithfulness_figure(m), "the circuit search did not run")
    return figures, missing


def _diagram(m: dict, claims: list[Claim]) -> Figure | None:
    if "circuit" not in m:
        return None
    by_id = {c.id: c for c in claims}
    effects = m.get("rank", {}).get("effects", {})
    roles = m.get("roles", {}).get("roles", {})
    writers_claim = by_id.get("writers")
    readers_claim = by_id.get("readers")
    writers = set(writers_claim.components) if writers_claim else set()
    readers = set(readers_claim.components) if readers_claim else set()
    names = list(dict.fromkeys(list(m["circuit"]["components"]) + list(roles)))
    if not names:
        return None
    n_layers = 1 + max(_layer(c) for c in names)
    nodes = [Node(id=c, layer=_layer(c), label=c,
                  detail=f"patch {effects[c]:.2f}" if c in effects else "",
                  role="writer" if c in writers else "reader" if c in readers else "other") for c in names]
    nodes.append(Node(id="logits", layer=n_layers, label="logits", detail="answer − foil", role="output"))
    edges = []
    supported = {cid: (c.verdict == "supported") for cid, c in by_id.items()}
    for c, r in roles.items():
        if r.get("direct") is not None and abs(r["direct"]) >= 0.05:
            edges.append(Edge(source=c, target="logits", value=r["direct"], label="direct",
                              supported=supported.get("writers") if c in writers else None))
    paths = m.get("paths")
    evidence = list(m["circuit"]["evidence"][-2:]) + list(m.get("roles", {}).get("evidence", [])[-1:])
    if paths:
        receiver = paths["receiver"]
        claimed = set(readers_claim.components) if readers_claim and readers_claim.details.get("kind") == "path" else set()
        for part, carried in paths["carried"].items():
            for sender, value in carried.items():
                if value is not None and abs(value) >= 0.05:
                    edges.append(Edge(source=sender, target=receiver, value=value, label=part,
                                      supported=supported.get("readers") if sender in claimed else None))
        evidence += paths["evidence"]
    caption = ("Circuit components by layer (boxes; `patch` is each component's activation-patching effect), "
               "and the paths measured by path patching between them (arrows; the label is the share of the logit "
               "difference the path carries, into a head's query `q`, key `k` or value `v` input, or directly to "
               "the logits). Solid arrows belong to a claim the critic supported; dashed ones were not claimed or "
               "not supported. Paths carrying under 0.05 are not drawn.")
    return Figure(id="mechanism", title="The mechanism", caption=Prose(text=caption),
                  chart=Diagram(nodes=nodes, edges=edges), evidence=evidence)


def _layer(component: str) -> int:
    return int(component.split(".")[1])


def _resid_figure(m: dict) -> Figure | None:
    if "lens" not in m:
        return None
    lens = m["lens"]
    tokens = lens["tokens"]
    cols, marked = [], []
    for j, p in enumerate(lens["positions"]):
        t = tokens.get(str(p))
        cols.append(f"{p}: {t['token']!r}" if t else str(p))
        if t and t.get("changed"):
            marked.append(j)
    rows = [f"resid_pre.{i}" for i in range(len(lens["resid"]))]
    caption = ("Restoring the clean residual stream at one layer (row) and position (column) in the corrupted run: "
               "1 restores the clean logit difference, 0 leaves the corrupted one. Positions count from the end of "
               "each prompt; the tokens are the first prompt's, bold where the corruption changes them.")
    return Figure(id="resid", title="Residual stream patching (layer × position)", caption=Prose(text=caption),
                  chart=Heatmap(rows=rows, cols=cols, values=lens["resid"], row_title="layer", col_title="position",
                                marked_cols=marked), evidence=[lens["evidence"][1]])


def _head_figure(m: dict) -> Figure | None:
    grid = m.get("rank", {}).get("grid")
    if grid is None:
        return None
    cols = [f"H{h}" for h in grid["heads"]]
    values = [list(row) for row in grid["head"]]
    separator = None
    if grid["mlp"] is not None:
        mlp = dict(zip(grid["mlp_layers"], grid["mlp"]))
        cols.append("MLP")
        separator = len(grid["heads"])
        values = [row + [mlp.get(layer)] for row, layer in zip(values, grid["layers"])]
    method = m["rank"]["method"].replace("_", " ")
    caption = (f"Effect of patching each head's output (columns H0…) and each MLP's output (last column) from the "
               f"clean run into the corrupted run, all positions at once ({method}); 1 = the whole clean logit "
               "difference.")
    return Figure(id="heads", title="Head and MLP patching (layer × head)", caption=Prose(text=caption),
                  chart=Heatmap(rows=[f"layer {l}" for l in grid["layers"]], cols=cols, values=values,
                                separator_before_col=separator), evidence=m["rank"]["evidence"][:1])


def _lens_figure(m: dict) -> Figure | None:
    if "lens" not in m:
        return None
    lens = m["lens"]["lens"]
    xs = list(range(len(lens)))
    ticks = [(float(i), "emb" if l["site"] == "embed" else l["site"].split(".")[-1]) for i, l in enumerate(lens)]
    chart = LineChart(series=[Series(name="logit difference", x=xs, y=[l["logit_diff"] for l in lens]),
                              Series(name="answer top-1 (×10)", x=xs, y=[10 * l["top1"] for l in lens],
                                     color="#1a9850", dashed=True)],
                      x_label="after layer (resid_post.L)", y_label="logit difference answer − foil", x_ticks=ticks)
    caption = ("The residual stream after each layer read through the final norm and the unembedding: the mean "
               "logit difference between answer and foil, and the share of prompts on which the answer is the top "
               "token (scaled by 10 to share the axis).")
    return Figure(id="lens", title="Logit lens", caption=Prose(text=caption), chart=chart,
                  evidence=[m["lens"]["evidence"][0]])


def _attention_figure(m: dict) -> Figure | None:
    roles = m.get("roles")
    if not roles or not roles["tokens"]:
        return None
    attention = roles["attention"]
    if "pattern" not in attention.tensors:
        return None
    heads = [c for c in roles["roles"] if c.startswith("head.")]
    if not heads:
        return None
    layers = list(attention.spec.layers or range(attention.tensors["pattern"].shape[1]))
    all_heads = list(attention.spec.heads or range(attention.tensors["pattern"].shape[2]))
    length = len(roles["tokens"])
    values = []
    for name in heads:
        _, layer, head = name.split(".")
        pattern = attention.tensors["pattern"][0, layers.index(int(layer)), all_heads.index(int(head))]
        values.append([float(v) for v in pattern[length - 1, :length]])
    cols = [f"{i}: {t!r}" for i, t in enumerate(roles["tokens"])]
    caption = ("What the final token attends to in each key head of the circuit, over the first discovery prompt's "
               "tokens (rows sum to 1).")
    return Figure(id="attention", title="Attention of the key heads", caption=Prose(text=caption),
                  chart=Heatmap(rows=heads, cols=cols, values=values, scale="sequential", vmax=1.0,
                                row_title="head", col_title="key position (token)"),
                  evidence=[attention.key])


def _steer_figure(m: dict) -> Figure | None:
    s = m.get("steer")
    if not s or len(s["alphas"]) < 2:
        return None
    series = [Series(name="clean − corrupted", x=s["alphas"], y=s["logit_diff"])]
    if s["control_logit_diff"]:
        series.append(Series(name="random, same norm", x=s["alphas"], y=s["control_logit_diff"],
                             color="#7f7f7f", dashed=True))
    chart = LineChart(series=series, x_label="α (multiple of the direction added)",
                      y_label="logit difference", hlines=[(s["baseline"], "unsteered")])
    caption = (f"Adding α times the mean clean − corrupted difference of the residual stream at {s['site']} "
               f"(final token; norm {s['norm']:.2f}) on the discovery prompts, against a random direction of the same "
               "norm: a causal direction moves the logit difference, the control should not.")
    return Figure(id="steering", title="Steering dose-response", caption=Prose(text=caption), chart=chart,
                  evidence=s["evidence"])


def _faithfulness_figure(m: dict) -> Figure | None:
    c = m.get("circuit")
    if not c or not c["sizes"]:
        return None
    methods = sorted({s["method"] for s in c["sizes"]})
    colours = {"resample": "#1f5fa8", "mean": "#d95f02", "zero": "#7570b3"}
    series = [Series(name=f"{method} ablation", x=[s["size"] for s in c["sizes"] if s["method"] == method],
                     y=[s["faithfulness"] for s in c["sizes"] if s["method"] == method],
                     color=colours.get(method, "#333333")) for method in methods]
    chart = LineChart(series=series, x_label="circuit size (a prefix of the ranking)",
                      y_label="faithfulness (share kept)",
                      hlines=[(t, f"target {t:.2f}") for t in c["targets"]])
    caption = ("The share of the logit difference a prefix of the component ranking keeps when every other head and "
               "MLP is ablated, for every size the search tried, under each ablation; the circuit is the smallest "
               "prefix that reaches the target under all of them.")
    return Figure(id="faithfulness", title="Faithfulness against circuit size", caption=Prose(text=caption),
                  chart=chart, evidence=c["evidence"])


# -- context, methods, limitations ---------------------------------------------------------------------------


def prompt_examples(tokenizer, sets: dict[str, Any]) -> dict[str, dict]:
    """Per named prompt set (`PromptPairs`): its size and first example, for the report."""
    from tools.experiments.prompts import resolve_prompts

    out = {}
    for name, pairs in sets.items():
        items = resolve_prompts(pairs, tokenizer)
        if items:
            first = items[0]
            out[name] = {"n": len(items), "clean": first.clean, "corrupted": first.corrupted,
                         "answer": first.answer, "foil": first.foil}
    return out


def stored_results(run: "Run"):
    """``(key, JSON of the stored result)`` for every experiment of ``run`` whose JSON parses."""
    for key in run.experiment_keys():
        try:
            yield key, json.loads((run.folder / "experiments" / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue


def describe_discovery(toolbox) -> str:
    """Where the components were found, in words (stored in ``investigation.json``)."""
    b = toolbox.behavior
    if b.task is not None:
        return f"the generator's train split (seed {b.seed}, n={b.n})"
    n = len(toolbox.prompts.clean)
    return f"the user's prompts with variants of them ({n} prompts)" if n > len(b.prompts) else "the user's prompts"


def _prior(prior: list[dict], claims: list[Claim]) -> list[dict[str, Any]]:
    supported = {tuple(c.components) for c in claims if c.verdict == "supported"}
    out = []
    for p in prior:
        entry = dict(p)
        if p.get("kind") == "finding":
            entry["agrees"] = tuple(p.get("components") or ()) in supported
        out.append(entry)
    return out


def _scope(context: dict) -> list[Prose]:
    lines = []
    if context.get("discovery"):
        lines.append(Prose(text=f"Components were found on {context['discovery']}; the critic tested every claim on "
                                f"{context.get('fresh', 'fresh prompts')}."))
    positions = context.get("positions")
    if positions:
        lines.append(Prose(text=f"Ablations act at the last {len(positions)} positions (from the first token where a "
                                "clean prompt and its corrupted twin differ; earlier positions are identical in both "
                                "runs)."))
    return lines


def _prompt_summary(context: dict) -> dict[str, Any]:
    """The size and first example of the discovery and fresh prompt sets."""
    return {name: dict(example) for name, example in (context.get("examples") or {}).items()}


def _experiments(run: "Run", context: dict) -> list[ExperimentRow]:
    named = {}
    for name in ("discovery", "fresh"):
        prompts = context.get(f"{name}_prompts")
        if prompts:
            named[json.dumps(prompts, sort_keys=True)] = name
    rows = []
    for key, data in stored_results(run):
        spec = dict(data.get("spec") or {})
        prompts = spec.pop("prompts", None) or {}
        which = named.get(json.dumps(prompts, sort_keys=True))
        count = len(prompts.get("clean") or []) or prompts.get("n") or "?"
        label = f"{which} set, n={count}" if which else f"n={count}"
        if prompts.get("task"):
            label += f" (task {prompts['task']}, seed {prompts.get('seed')})"
        kind = spec.pop("kind", "?")
        rows.append(ExperimentRow(key=key, kind=kind, prompts=label, spec=spec,
                                  seed=(data.get("provenance") or {}).get("seed")))
    order = {k: i for i, k in enumerate(["behaviour", "logit_lens", "activation_patching", "attribution_patching",
                                         "ablation", "direct_logit_attribution", "attention_patterns",
                                         "path_patching", "steering"])}
    return sorted(rows, key=lambda r: (order.get(r.kind, 99), r.key))


def _seeds(behavior: dict, context: dict, claims: list[Claim]) -> list[Prose]:
    lines = []
    if behavior.get("task"):
        lines.append(Prose(text=f"Prompt generator `{behavior['task']}`: seed {behavior.get('seed', 0)} for discovery "
                                f"(train split), seed {behavior.get('seed', 0) + 1000} for the critic (held-out split)."))
    elif behavior:
        lines.append(Prose(text=f"Variants of the user's prompts drawn with seed {behavior.get('seed', 0)}."))
    critic = sorted({c.details["seed"] for c in claims if "seed" in c.details})
    if critic:
        lines.append(Prose(text=f"Critic seeds (random control sets, random directions, bootstrap resamples): "
                                f"{', '.join(map(str, critic))} — one per claim (a hash of the run's seed and the claim)."))
    return lines


def _versions(run: "Run") -> dict[str, list[str]]:
    versions: dict[str, set[str]] = {}
    for _, data in stored_results(run):
        prov = data.get("provenance") or {}
        for package, version in (prov.get("versions") or {}).items():
            versions.setdefault(package, set()).add(str(version))
        for field in ("device", "dtype"):
            if prov.get(field):
                versions.setdefault(field, set()).add(str(prov[field]))
    return {k: sorted(v) for k, v in sorted(versions.items())}


def _limitations(record, investigation: dict, m: dict, claims: list[Claim]) -> list[Prose]:
    context = investigation.get("context") or {}
    out = []
    fresh = context.get("fresh") or ""
    if "not an independent replication" in fresh:
        out.append("The critic could not vary the user's prompts, so its tests re-use the discovery prompts: the "
                   "verdicts are not an independent replication.")
    elif (record.settings.get("behavior") or {}).get("task"):
        out.append("Every claim is about the task generator's prompt distribution (its templates, names and "
                   "entities); it may not hold for other phrasings of the behaviour.")
    else:
        out.append("Every claim is about the user's prompts and variants of them (other names or entities in the "
                   "same template); other templates were not tested.")
    if context.get("positions"):
        out.append("Ablations act only from the first position where clean and corrupted prompts differ; what "
                   "components do at earlier positions (identical in both runs) is not measured.")
    if m.get("rank", {}).get("method") == "attribution_patching":
        out.append("Components were ranked by attribution patching (a first-order estimate); only the top candidates "
                   "were confirmed by activation patching.")
    if context.get("family") in ("gemma2", "gemma3"):
        out.append("On Gemma 2/3 a head's write to the residual stream is linearised through the post-attention norm "
                   "with the clean run's scale: per-head effects are exact on the clean run and approximate on "
                   "patched runs.")
    if "gemma-3-270m" in record.model_id:
        out.append("gemma-3-270m runs from the Q4_K_M GGUF weights, dequantised to float32: the quantised model's "
                   "mechanism, which may differ in detail from the original weights'.")
    steer = m.get("steer")
    if steer and not any(c.details.get("kind") == "steering" for c in claims):
        out.append("Steering along the mean clean − corrupted direction was measured but not claimed: where names or "
                   "entities vary across prompts that mean direction averages them out.")
    n_controls = {len(c.details.get("controls") or []) for c in claims}
    if n_controls:
        out.append(f"Each claim was compared with {max(n_controls)} random controls; beating that few controls is "
                   "weak evidence on its own, which is why the CI must also clear the pre-registered prediction.")
    out.append("Predictions are pre-registered at half of what discovery measured (rounded down to 0.05): a "
               "supported claim replicates at a substantial size, not necessarily at the size first seen.")
    tested = [c.n for c in claims if c.n]
    n, k = max(tested, default=0), len(tested)
    if tested and smallest_pvalue(n) * k >= 0.05:  # Holm's first step cannot clear alpha
        out.append(f"The critic had {n} fresh prompts: no p-value goes below 2^-{n} = {smallest_pvalue(n):.3g} (the "
                   f"most an exact sign test can say from {n} prompts), and Holm's correction over {k} claims asks "
                   f"for less than {0.05 / k:.3g}, so no claim could be supported on so few; more fresh prompts "
                   "(`--n`, or a prompt with more variants) are needed to decide.")
    if record.status == "budget_exhausted":
        out.append(f"The budget ran out in the {investigation.get('stopped_in')}; later phases, and the critic's "
                   "tests of claims not yet made, did not run.")
    if record.status == "degraded":
        out.append("The LLM brain failed in some steps; the heuristic brain did them instead (see the LLM section).")
    if not claims:
        out.append("No claim was made, so nothing here was tested by the critic.")
    return [Prose(text=t) for t in out]


__all__ = ["ClaimRow", "Figure", "Prose", "ReportData", "ROLE_ORDER", "build_report"]
