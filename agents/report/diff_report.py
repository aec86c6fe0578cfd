"""The report of a ``sleuth diff`` run: "What changed", rebuilt from the run folder alone.

Every number comes from `agents.diff_readout.read_diff` on the stored results (the same function
``sleuth diff --json`` prints from) and from the claims the critic stored; figures are chart data
(`agents.report.charts`) rendered by the same escaping templates as every report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from agents.report.build import Figure, Prose
from agents.report.charts import Bar, BarChart, Heatmap
from memory.records import Cost

if TYPE_CHECKING:
    from memory.runstore import Run

MEASURE_WORDS = {
    "cross_model": "cross-model patching",
    "patching": "activation patching",
    "dla": "direct logit attribution",
    "attention.to_changed": "attention to the changed tokens",
    "attention.to_answer": "attention to the answer",
}
BARS = 15


class DiffReportData(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: str = "diff"
    run_id: str
    question: str
    status: str
    created_at: str
    updated_at: str
    base_id: str
    base_hash: str
    model_id: str
    model_hash: str
    behaviour: str
    answer: Prose
    n: int
    scale: float
    margins: dict[str, float]
    gaps: dict[str, float]
    behaviours: dict[str, dict[str, Any]]
    tests: int
    significant: list[dict[str, Any]]
    """Every significant change, ranked."""
    nearest: list[dict[str, Any]]
    """The largest changes that were not significant (the closest calls), for the record."""
    investigation: list[dict[str, Any]]
    weights: list[dict[str, Any]]
    figures: list[Figure]
    groups: dict[str, list[str]]
    """Figures drawn side by side (``A | B | B − A``)."""
    prompts: dict[str, Any]
    experiments: list[dict[str, str]]
    methods: list[Prose]
    limitations: list[Prose]
    cost: Cost


def label(change: dict[str, Any]) -> str:
    return f"{change['component']} · {MEASURE_WORDS.get(change['measure'], change['measure'])}"


def build_diff_report(run: "Run") -> DiffReportData:
    from agents.diff_readout import read_diff

    record = run.investigation() or {}
    readout = read_diff(run, record)
    changes = readout["changes"]
    significant = [c for c in changes if c["significant"]]
    nearest = sorted((c for c in changes if not c["significant"]), key=lambda c: -c["size"])[:5]
    claims = {c.id: c for c in run.claims()}
    investigation = []
    for entry in readout["investigation"]:
        for kind, claim_id in (("transfer", entry.get("transfer_claim")), ("necessity", entry.get("claim"))):
            claim = claims.get(claim_id or "")
            if claim is None:
                continue
            investigation.append({
                "component": entry["component"], "kind": kind, "verdict": claim.verdict, "statement": claim.statement,
                "effect": claim.effect, "ci": [claim.ci_low, claim.ci_high],
                "threshold": claim.details.get("threshold"), "adjusted_p": claim.details.get("adjusted_p"),
                "second_method": claim.details.get("second_method"), "second": claim.details.get("second_ablation"),
                "controls": claim.details.get("controls") or [], "evidence": list(claim.evidence),
                "base_necessity": entry.get("base_necessity") if kind == "necessity" else None,
                "base_ci": entry.get("base_ci") if kind == "necessity" else None})
    weights = sorted(record["weights"]["changes"], key=lambda w: -w["relative"])
    base, model = record["base"], record["model"]
    figures, groups = _figures(readout, record, weights)
    settings = run.record.settings
    behaviour = (settings.get("behavior") or {}).get("task") or (settings.get("behavior") or {}).get("question", "")
    return DiffReportData(
        run_id=run.id, question=run.record.question, status=run.record.status, created_at=run.record.created_at,
        updated_at=run.record.updated_at, base_id=base["model_id"], base_hash=base["weights_hash"],
        model_id=model["model_id"], model_hash=model["weights_hash"], behaviour=behaviour,
        answer=_answer(readout, significant, investigation, base["model_id"], model["model_id"]),
        n=readout["n"], scale=readout["scale"], margins=readout["margins"], gaps=readout["gaps"],
        behaviours=readout["behaviour"], tests=len(changes), significant=significant, nearest=nearest,
        investigation=investigation, weights=[w for w in weights if w["norm"] > 0][:20] or weights[:5],
        figures=figures, groups=groups, prompts=(record.get("prompts") or {}).get("examples") or {},
        experiments=_experiments(run), methods=_methods(readout, record), limitations=_limitations(readout, record),
        cost=run.record.cost)


def _answer(readout: dict, significant: list[dict], investigation: list[dict], base: str, model: str) -> Prose:
    m = readout["margins"]
    head = (f"{len(significant)} of {len(readout['changes'])} component measures changed significantly from "
            f"`{base}` to `{model}` (a change counts when it exceeds a tenth of the behaviour — "
            f"{m['logit']:.2f} logits, or 0.1 of attention — at Holm-adjusted p < 0.05; n={readout['n']} prompts).")
    if not significant:
        return Prose(text=head + " No component's patching effect, direct logit attribution, attention role or "
                                 "cross-model patching transfer moved by that much on these prompts; smaller changes "
                                 "are listed as the closest calls.")
    parts = []
    where = [c for c in significant if c["measure"] == "cross_model"]
    if where:
        gap = readout["behaviour"]["model"]["logit_diff"] - readout["behaviour"]["base"]["logit_diff"]
        first = where[0]
        parts.append(f"The computation changed first of all in {first['component']}: patching its output from the "
                     f"model into the base moves the logit difference by {first['delta']:+.2f} "
                     f"(95% CI {first['ci'][0]:+.2f} to {first['ci'][1]:+.2f}), against a difference of {gap:+.2f} "
                     "between the two models" + (f"; then {', '.join(c['component'] for c in where[1:4])}."
                                                 if len(where) > 1 else "."))
    roles = [c for c in significant if c["measure"] != "cross_model"][:3]
    if roles:
        parts.append("Roles that changed most: " + "; ".join(
            f"{c['component']} ({MEASURE_WORDS.get(c['measure'], c['measure'])}: {c['a']:.2f} → {c['b']:.2f})"
            for c in roles) + ".")
    for item in investigation:
        if item["effect"] is None:
            continue
        if item["kind"] == "transfer":
            parts.append(f"On fresh prompts, {item['component']} from the model carries {item['effect']:.2f} of the "
                         f"difference between the models ({item['verdict']} against the prediction ≥ "
                         f"{item['threshold']:.2f}).")
            continue
        contrast = "" if item.get("base_necessity") is None else \
            f"; the same ablation removes {item['base_necessity']:.2f} in the base"
        parts.append(f"Ablating {item['component']} in the model removes {item['effect']:.2f} of its logit "
                     f"difference ({item['verdict']} against the prediction ≥ {item['threshold']:.2f}{contrast}).")
    return Prose(text=head + " " + " ".join(parts))


def _grid(values: dict[str, float], layers, heads, extra: tuple[str, ...] = ("mlp",)) -> tuple[list[str], list[list]]:
    cols = [f"H{h}" for h in heads] + [e.upper() if e == "mlp" else e for e in extra]
    rows = []
    for layer in layers:
        row = [values.get(f"head.{layer}.{h}") for h in heads]
        row += [values.get(f"{e}.{layer}") for e in extra]
        rows.append(row)
    return cols, rows


def _figures(readout: dict, record: dict, weights: list[dict]) -> tuple[list[Figure], dict[str, list[str]]]:
    figures: list[Figure] = []
    groups: dict[str, list[str]] = {}
    changes = readout["changes"]
    ev = record["evidence"]
    ranked = [c for c in changes if c["significant"]][:BARS] or sorted(changes, key=lambda c: -c["size"])[:BARS]
    bars = [Bar(label=label(c), value=c["delta"] / c["margin"], low=c["ci"][0] / c["margin"],
                high=c["ci"][1] / c["margin"], highlight=c["significant"]) for c in ranked]
    figures.append(Figure(
        id="changes", title="The largest changes", chart=BarChart(bars=bars, x_label="change B − A in units of δ",
                                                                  vlines=[(-1.0, "−δ"), (1.0, "+δ")]),
        caption=Prose(text="Each bar is one component's change on one measure, divided by the smallest change of "
                           "interest δ (a tenth of the behaviour for logit measures, 0.1 for attention), with its 95% "
                           "bootstrap CI; coloured when significant (Holm-adjusted p < 0.05 against |Δ| ≤ δ), grey "
                           "otherwise. Ranked as in the table: cross-model patching first."),
        evidence=[ev["cross_model"], ev["base"]["patching"], ev["model"]["patching"]]))
    layers, heads = readout["layers"], readout["heads"]
    for measure, title, unit in (("patching", "Activation patching", "logit difference restored"),
                                 ("dla", "Direct logit attribution", "direct write to the logit difference")):
        grids = readout["grids"][measure]
        shared = max([abs(v) for side in ("base", "model") for v in grids[side].values()] + [1e-9])
        ids = []
        for side, name in (("base", "A (base)"), ("model", "B (model)"), ("delta", "B − A")):
            cols, rows = _grid(grids[side], layers, heads)
            fid = f"{measure}-{side}"
            ids.append(fid)
            figures.append(Figure(
                id=fid, title=f"{title}: {name}",
                chart=Heatmap(rows=[f"layer {l}" for l in layers], cols=cols, values=rows,
                              separator_before_col=len(heads), vmax=shared if side != "delta" else None),
                caption=Prose(text=f"{unit} per head (H…) and MLP, mean over the discovery prompts, logit units; "
                                   f"A and B on one colour scale, B − A on its own."),
                evidence=[ev["base" if side == "base" else "model"][measure]] if side != "delta"
                else [ev["base"][measure], ev["model"][measure]]))
        groups[measure] = ids
    cols, rows = _grid(readout["grids"]["cross_model"], layers, heads, extra=("attn", "mlp"))
    figures.append(Figure(
        id="cross-model", title="Cross-model patching: B's component into A",
        chart=Heatmap(rows=[f"layer {l}" for l in layers], cols=cols, values=rows, separator_before_col=len(heads)),
        caption=Prose(text="The change of the base model's logit difference when one component's output is taken "
                           "from the model (heads: their attention-weighted values; attn: the whole attention "
                           "sublayer; MLP), logit units. Zero where the component computes the same in both models."),
        evidence=[ev["cross_model"]]))
    by = {w["component"]: w["relative"] for w in weights}
    cols, rows = _grid(by, layers, heads, extra=("attn", "mlp"))
    figures.append(Figure(
        id="weights", title="Weight change ‖W_B − W_A‖ / ‖W_A‖",
        chart=Heatmap(rows=[f"layer {l}" for l in layers], cols=cols, values=rows, scale="sequential",
                      separator_before_col=len(heads)),
        caption=Prose(text="Relative Frobenius norm of each component's weight change (heads: their Q, K, V slices and "
                           "rows of W_O). Not behaviour-specific: it says where the weights moved, not which behaviour "
                           "that moves."),
        evidence=[]))
    return figures, groups


def _experiments(run: "Run") -> list[dict[str, str]]:
    from agents.report.build import stored_results

    rows = []
    for key, data in stored_results(run):
        spec = data.get("spec") or {}
        prov = data.get("provenance") or {}
        rows.append({"key": key, "kind": spec.get("kind", "?"), "model": prov.get("model_id", "?"),
                     "n": str(len((spec.get("prompts") or {}).get("clean") or []) or (spec.get("prompts") or {}).get("n"))})
    return sorted(rows, key=lambda r: (r["kind"], r["model"], r["key"]))


def _methods(readout: dict, record: dict) -> list[Prose]:
    m = readout["margins"]
    prompts = record.get("prompts") or {}
    return [Prose(text=t) for t in (
        f"Both models ran on the same {readout['n']} discovery prompts; the investigation's claims were tested on "
        f"{prompts.get('fresh_kind', 'fresh prompts')}.",
        "Measures per component: cross-model patching (the base model with the component's output from the model, "
        "every position), activation patching (clean into corrupted, every position; the logit difference restored, "
        "in logit units), direct logit attribution, and for heads the last token's attention to the tokens the "
        "corruption changes and to the answer (where the answer occurs in every prompt).",
        "Each (measure, component): paired bootstrap over prompts of B − A (expanded percentile 95% CI; every test "
        "on the same resampled prompts), tested against the smallest change of interest δ — H0: |mean Δ| ≤ δ, "
        f"two one-sided shifted-bootstrap tests — with δ = {m['fraction']:g} × S = {m['logit']:.3f} logits "
        f"(S = {readout['scale']:.2f}, the larger clean − corrupted gap of the two models) and δ = {m['attention']:g} "
        "for attention. Holm correction across all tests; significant at adjusted p < 0.05.",
        "Ranking: significant changes first; cross-model patching before the within-model measures (it alone "
        "locates a change in the component: a component computing the same function of the same input in both "
        "models transfers nothing, while its within-model measures move whenever what reads it changed); then by "
        "|Δ| / δ.",
        "Investigation: for each of the top three components, two claims with predictions of half the discovery "
        "value rounded down to 0.05, tested on fresh prompts and Holm-corrected together. Transfer: patching the "
        "component from the model into the base carries at least that share of the difference between the models "
        "(ratio-of-means bootstrap CI; second method the other direction; controls three random other components). "
        "Necessity in the model: resample-ablating it from the first changed token on removes at least that share, "
        "examined by the critic (mean ablation as second method, three random component sets as controls); the "
        "same ablation on the base model as a contrast.",
    )]


def _limitations(readout: dict, record: dict) -> list[Prose]:
    out = ["Weight-change norms are not behaviour-specific; a significant behavioural change can come from a small "
           "weight change and a large weight change can leave this behaviour alone.",
           "Cross-model patching of a head replaces its attention-weighted values, not its rows of W_O: a change of "
           "W_O shows in the attention sublayer's patch (attn.L) and in the weight norms.",
           "Within-model patching and attribution are about this behaviour's prompt distribution; other phrasings "
           "were not tested.",
           f"No significant change means no change larger than δ at this confidence with n={readout['n']}; smaller "
           "changes may exist (the closest calls are listed)."]
    if min(abs(g) for g in readout["gaps"].values()) < 0.1 * readout["scale"]:
        out.append("One model barely separates clean from corrupted prompts (its gap is under a tenth of the "
                   "other's): its normalised effects would be meaningless, which is why everything here is in logit "
                   "units.")
    return [Prose(text=t) for t in out]


__all__ = ["DiffReportData", "build_diff_report"]
