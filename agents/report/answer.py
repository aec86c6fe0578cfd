"""The run's answer and its plain Markdown report: every claim with its verdict, the numbers
the critic measured, and the evidence keys (content hashes of the stored experiments)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from agents.llm.fence import md_escape, untrusted_md

if TYPE_CHECKING:
    from agents.steps import Toolbox
    from memory.records import Claim

ROLE_ORDER = ("writers", "top", "readers", "routing", "circuit", "steering")
"""How the answer is told: what writes the answer, what it depends on most, how the model tells
the answer from the foil, where the information flows, the whole circuit, a causal direction."""


def ordered(claims: Sequence["Claim"]) -> list["Claim"]:
    """Claims in the order of `ROLE_ORDER` (then as made)."""
    rank = {role: i for i, role in enumerate(ROLE_ORDER)}
    return sorted(claims, key=lambda c: rank.get(c.details.get("role", ""), len(rank)))


def compose_answer(claims: Sequence["Claim"], state: dict[str, Any]) -> str:
    """The answer: the supported claims, in explanatory order, with their measured numbers."""
    claims = ordered(claims)
    supported = [c for c in claims if c.verdict == "supported"]
    if not claims:
        return "No claim was made."
    if not supported:
        return ("No claim survived the critic's tests; see the claims table for what was measured "
                f"({len(claims)} claims: " + ", ".join(f"{c.id} {c.verdict}" for c in claims) + ").")
    sentences = [f"{c.statement} [{c.id}: measured {c.effect:.2f} on fresh prompts, 95% CI "
                 f"{c.ci_low:.2f}–{c.ci_high:.2f}]" for c in supported]
    rest = [c for c in claims if c.verdict != "supported"]
    if rest:
        sentences.append("Not established: " + "; ".join(f"{c.id} ({c.verdict}, measured {c.effect:.2f} against "
                                                          f"a prediction of {c.details.get('threshold', 0):.2f})"
                                                          for c in rest) + ".")
    return " ".join(sentences)


def markdown_report(toolbox: "Toolbox", state: dict[str, Any], answer: str, status: str, *,
                    written_by_llm: bool = False) -> str:
    """A plain Markdown report: the answer, every claim with verdict, numbers and evidence keys.

    Text from outside trusted code — the question, the model's tokens, memory, notes, LLM
    errors — is shown as code spans; an LLM's narrative (``written_by_llm``) and LLM-proposed
    claims are escaped, so neither can render as links, HTML or formatting."""
    run = toolbox.run
    lines = [f"# Question: {untrusted_md(run.record.question)}", "", f"**Status:** {status}  ",
             f"**Model:** {untrusted_md(toolbox.model.model_id)} (weights {toolbox.model.weights_hash[:12]})  ",
             f"**Brain:** {run.record.settings.get('brain', 'heuristic')}", "", "## Answer", "",
             md_escape(answer) if written_by_llm else answer, "", "## Claims", ""]
    claims = ordered(run.claims())
    if not claims:
        lines.append("No claims were made.")
    for c in claims:
        d = c.details
        statement = md_escape(c.statement) if d.get("role") == "llm" else c.statement
        lines.append(f"- **{c.verdict}** {untrusted_md(c.id)} — {statement} Prediction: {c.prediction}. Measured "
                     f"{c.effect:.3f} (95% CI {c.ci_low:.3f}–{c.ci_high:.3f}, n={c.n}); {d['second_method']} "
                     f"{d['second_ablation']['estimate']:.3f} (CI {d['second_ablation']['low']:.3f}–"
                     f"{d['second_ablation']['high']:.3f}); controls ({d['control_kind']}) "
                     f"{', '.join(f'{x:.3f}' for x in d['controls']) or 'none'}; Holm-adjusted p "
                     f"{d['adjusted_p']:.3g}. Evidence: {', '.join(k[:12] for k in c.evidence)}.")
    lines += _findings(state)
    prior = state.get("prior") or []
    if prior:
        lines += ["", "## What memory knew before this run", ""]
        supported = {tuple(c.components) for c in claims if c.verdict == "supported"}
        for p in prior:
            if p["kind"] == "question":
                lines.append(f"- a similar question (similarity {p['similarity']:.2f}, run {p['run_id']}): "
                             f"{untrusted_md(p['text'])}; its answer began: {untrusted_md((p.get('answer') or '')[:160])}")
            else:
                agrees = "this run supports the same components" if tuple(p["components"]) in supported else \
                    "this run did not re-establish exactly these components"
                lines.append(f"- supported finding from run {p['run_id']}: {untrusted_md(p['text'])} ({agrees})")
    b = toolbox.behavior
    lines += ["", "## How the question was read", ""] + [f"- {untrusted_md(n)}" for n in b.notes]
    lines += [f"- Components were found on {_describe_discovery(toolbox)}; the critic tested every claim on "
              f"{toolbox.fresh_kind}."]
    if toolbox.positions:
        lines.append(f"- Ablations act at the last {len(toolbox.positions)} positions (from the first token where a "
                     "clean prompt and its corrupted twin differ; earlier positions are identical in both runs).")
    cost = run.record.cost
    lines += ["", "## Cost", "", f"{cost.experiments} experiments ({cost.cache_hits} from the cache, "
              f"{cost.cache_misses} run); {cost.forward_passes} forward passes; {toolbox.elapsed():.1f} s wall."]
    if run.record.settings.get("brain") == "openai":
        llm = run.record.settings.get("llm") or {}
        lines += [f"LLM ({untrusted_md(llm.get('model', '?'))} at {untrusted_md(llm.get('base_url') or 'OpenAI')}): "
                  f"{cost.llm_calls} calls, {cost.tokens_in} prompt and {cost.tokens_out} completion tokens, "
                  f"${cost.dollars:.4f}."]
        events = state.get("llm_events") or []
        lines += ["", "## What went wrong with the LLM, and what was done", ""]
        if not events:
            lines.append("Nothing: every call succeeded and every answer validated the first time.")
        for e in events:
            lines.append(f"- {e['role']}: {untrusted_md(e['error'])}; instead: {e['fallback']}"
                         + (f" (raw answer: {untrusted_md(e['raw'])})" if e.get("raw") else ""))
    if status == "budget_exhausted":
        lines += ["", "## Left undone", "", f"The budget ran out in the {state.get('stopped_in')}; the "
                  "phases after it (and the critic's tests of claims not yet made) did not run."]
    return "\n".join(lines) + "\n"


def _describe_discovery(toolbox: "Toolbox") -> str:
    b = toolbox.behavior
    if b.task is not None:
        return f"the generator's train split (seed {b.seed}, n={b.n})"
    n = len(toolbox.prompts.clean)
    return f"the user's prompts with variants of them ({n} prompts)" if n > len(b.prompts) else "the user's prompts"


def _findings(state: dict[str, Any]) -> list[str]:
    """What the exploration steps measured (before claims): the lens, the ranking, roles."""
    from agents.playbook import latest_outcomes

    last = latest_outcomes(state)
    lines = ["", "## What the exploration measured", ""]
    if "confirm" in last:
        c = last["confirm"]
        lines.append(f"- Behaviour on the discovery prompts: logit difference {c['logit_diff']:.2f}, the answer "
                     f"preferred to the foil on {c['prefers_answer']:.0%}, top-1 accuracy {c['accuracy']:.2f} "
                     f"(n={c['n']}; evidence {c['evidence'][0][:12]}).")
    if "lens" in last:
        lens = last["lens"]["lens"]
        first = next((l["site"] for l in lens if l["logit_diff"] > 0 and l["top1"] >= 0.5), None)
        lines.append(f"- Logit lens: the answer is top-1 on most prompts from {first or 'no layer'} on "
                     f"(final logit difference {lens[-1]['logit_diff']:.2f}).")
    if "rank" in last:
        r = last["rank"]
        top = ", ".join(f"{c} {r['effects'][c]:.2f}" for c in r["order"][:8])
        lines.append(f"- Patching ({r['method']}), largest effects: {top}; {len(r['significant'])} of "
                     f"{len(r['order'])} components clear of zero.")
    if "circuit" in last:
        c = last["circuit"]
        lines.append(f"- Circuit search: {len(c['components'])} components, faithfulness "
                     + ", ".join(f"{m} {v:.2f}" for m, v in c["by_method"].items() if v is not None)
                     + f" (target {c['target']:.2f}; sizes tried {[s for s, _ in c['tried']]}).")
    if "roles" in last:
        roles = last["roles"]["roles"]
        parts = []
        for name, r in roles.items():
            bits = [f"DLA {r['dla']:.2f}"] + ([f"direct {r['direct']:.2f}"] if r.get("direct") is not None else [])
            bits += [f"{k} {r[k]:.2f}" for k in ("to_answer", "to_foil", "to_changed") if r.get(k) is not None]
            parts.append(f"{name} ({', '.join(bits)})")
        lines.append("- Roles: " + "; ".join(parts) + ".")
    if "steer" in last and last["steer"]["removed"] is not None:
        s = last["steer"]
        lines.append(f"- Steering at {s['site']}: subtracting the direction removes {s['removed']:.2f} of the logit "
                     f"difference (random direction of the same norm: {s['control_removed']:.2f}).")
    return lines if len(lines) > 3 else []
