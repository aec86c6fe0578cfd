"""The research report: contents, numbers rebuilt from stored results, and escaping of every
string that comes from a user, a model or an LLM (HTML and Markdown)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from agents.cli import main as sleuth

FIGURES = ("mechanism", "resid", "heads", "lens", "attention", "steering", "faithfulness")
PAYLOADS = ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=2">',
            "[click](javascript:window.__pwned=3)", "<a href=\"javascript:window.__pwned=4\">x</a>")


class _Page(HTMLParser):
    """Every tag with its attributes, and the text, of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def copy_workspace(workspace: Path, into: Path) -> Path:
    """A copy whose files are not hard links into the original's cache (edits stay here)."""
    shutil.copytree(workspace, into, copy_function=shutil.copy2)
    return into


def _report(capsys, run_id: str, workspace: Path, fmt: str) -> str:
    assert sleuth(["report", run_id, "--workspace", str(workspace), "--format", fmt]) == 0
    return capsys.readouterr().out


def _run(workspace: Path, run_id: str):
    from memory.runstore import RunStore
    from memory.workspace import Workspace

    return RunStore(Workspace.open(workspace)).open(run_id)


def test_a_run_ends_with_both_reports_and_every_figure(ioi_report):
    out, workspace = ioi_report
    assert out["report"]["html"] and out["report"]["md"]
    html, md = Path(out["report"]["html"]).read_text(), Path(out["report"]["md"]).read_text()
    folder = Path(out["report"]["html"]).parent
    for figure in FIGURES:
        assert f'id="figure-{figure}"' in html, figure
        assert (folder / "figures" / f"{figure}.svg").is_file() and f"figures/{figure}.svg" in md
    page = parse(html)
    svgs = [a for t, a in page.tags if t == "svg"]
    assert len(svgs) == len(FIGURES) and all(float(a["width"]) > 0 and float(a["height"]) > 0 for a in svgs)
    for section in ("Claims", "Figures", "Refuted and inconclusive", "What the exploration measured", "Methods",
                    "Cost", "Limitations"):
        assert f">{section}</h2>" in html and f"## {section}" in md, section


def test_the_html_is_self_contained_and_allows_no_script(ioi_report):
    out, _ = ioi_report
    page = parse(Path(out["report"]["html"]).read_text())
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "iframe" not in tags and "img" not in tags and "object" not in tags
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "script-src 'none'" in csp and "default-src 'none'" in csp
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("href", "src", "xlink:href"):
            value = attrs.get(name)
            if value is None or (tag == "link" and value == "data:,"):
                continue
            assert value.startswith(("#", "../experiments/")), (tag, value)


def test_the_report_holds_what_a_sceptical_reader_asks_for(ioi_report):
    """The answer, each claim's prediction, verdict, effect with CI, n, controls and evidence;
    every stored experiment with its spec; seeds, model hash and versions; the cost."""
    out, workspace = ioi_report
    run = _run(workspace, out["run_id"])
    html = Path(out["report"]["html"]).read_text()
    text = " ".join(parse(html).text)
    md = Path(out["report"]["md"]).read_text()
    assert "Why does the model do indirect object identification?" in text
    for c in run.claims():
        assert f'id="claim-{c.id}"' in html
        assert c.prediction in text and c.prediction in md
        assert f"{c.effect:.3f}" in text and f"{c.ci_low:.3f}–{c.ci_high:.3f}" in text
        assert f"{c.effect:.3f}" in md and f"{c.ci_low:.3f}–{c.ci_high:.3f}" in md
        for key in c.evidence:
            assert f'href="#exp-{key}"' in html and f"(../experiments/{key}.json)" in md
        for control in c.details["controls"]:
            assert f"{control:.3f}" in text
    for key in run.experiment_keys():  # every spec of the run is listed, linked to its stored JSON
        assert f'id="exp-{key}"' in html and f'href="../experiments/{key}.json"' in html
        assert f"[{key[:12]}](../experiments/{key}.json)" in md
    assert run.record.weights_hash in text and run.record.weights_hash in md
    for package in ("torch", "nnsight", "transformers"):
        assert package in text
    assert "seed 0 for discovery" in text and "seed 1000 for the critic" in text
    cost = run.record.cost
    assert f"{cost.experiments} experiments" in md and f"{cost.forward_passes} forward passes" in md
    assert f">{cost.forward_passes}<" in html and f">{cost.cache_hits}<" in html


def test_rendering_is_a_function_of_the_stored_run(ioi_report, capsys):
    out, workspace = ioi_report
    for fmt in ("html", "md"):
        assert _report(capsys, out["run_id"], workspace, fmt) == Path(out["report"][fmt]).read_text()


def test_a_stored_result_edited_by_hand_changes_the_numbers_in_both_formats(ioi_report, tmp_path, capsys):
    out, workspace = ioi_report
    workspace = copy_workspace(workspace, tmp_path / "ws")
    run = _run(workspace, out["run_id"])
    investigation = run.investigation()
    steps = {o["step"]: o for o in investigation["outcomes"]}
    folder = run.folder / "experiments"
    before = {fmt: _report(capsys, run.id, workspace, fmt) for fmt in ("html", "md")}
    # 1. the behaviour result's mean logit difference (the exploration's first line)
    confirm = folder / f"{steps['confirm']['evidence'][0]}.json"
    data = json.loads(confirm.read_text())
    old = data["logit_diff"]
    data["logit_diff"] = 98.7654
    confirm.write_text(json.dumps(data))
    # 2. a cell of the residual-patching tensor (the heatmap)
    resid = json.loads((folder / f"{steps['lens']['evidence'][1]}.json").read_text())
    tensors = load_file(folder / resid["tensor_file"])
    name = next(k for k in tensors if k.startswith("effect.resid_pre"))
    tensors[name][0, 0] = 7.7777
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / resid["tensor_file"])
    # 3. the critic's measurement of a claim
    lines = (run.folder / "claims.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["effect"] = 0.4242
    (run.folder / "claims.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    after = {fmt: _report(capsys, run.id, workspace, fmt) for fmt in ("html", "md")}
    for fmt in ("html", "md"):
        assert "logit difference 98.77" in after[fmt] and f"logit difference {old:.2f}," not in after[fmt]
        assert "logit difference 98.77" not in before[fmt]
        assert "0.424" in after[fmt] and "0.424" not in before[fmt]
    assert ">7.78</text>" in after["html"] and ">7.78</text>" not in before["html"]


def _plant_payloads(workspace: Path, run_id: str) -> None:
    """Put a payload into every string of the stored run that comes from outside trusted code:
    the question, the user's prompts and answers, intake's notes, the model's tokens, memory,
    an LLM's narrative, claim and error text."""
    run_dir = workspace / "runs" / run_id
    evil = " ".join(PAYLOADS)
    record = json.loads((run_dir / "run.json").read_text())
    record["question"] = f"Why {evil}?"
    record["settings"]["behavior"]["notes"] = [f"note {evil}"]
    record["settings"]["brain"] = "openai"
    record["settings"]["llm"] = {"model": f"m {PAYLOADS[0]}", "base_url": f"http://x/{PAYLOADS[1]}", "timeout_s": 1}
    (run_dir / "run.json").write_text(json.dumps(record))
    investigation = json.loads((run_dir / "investigation.json").read_text())
    for o in investigation["outcomes"]:
        if o["step"] == "lens":
            for token in o["tokens"].values():
                token["token"] = PAYLOADS[1]
        if o["step"] == "roles":
            o["tokens"] = [PAYLOADS[i % len(PAYLOADS)] for i in range(len(o["tokens"]))]
    for example in investigation["context"]["examples"].values():
        example.update(clean=f"clean {evil}", corrupted=f"corrupted {evil}", answer=PAYLOADS[2], foil=PAYLOADS[3])
    investigation["prior"] = [{"kind": "question", "text": f"old {evil}", "run_id": "r1", "answer": evil,
                               "similarity": 0.9},
                              {"kind": "finding", "text": f"finding {evil}", "run_id": "r2", "components": []}]
    investigation["llm_events"] = [{"role": "planner", "error": f"ValueError: {evil}", "fallback": "heuristic",
                                    "raw": evil}]
    investigation["answer"] = {"source": "narrative", "text": None, "narrative": {"sentences": [
        {"text": f"The model {evil} does it with {{writers.effect}}.", "cites": ["writers"]}]}}
    (run_dir / "investigation.json").write_text(json.dumps(investigation))
    lines = (run_dir / "claims.jsonl").read_text().splitlines()
    claim = json.loads(lines[0])
    claim["id"] = "writers"
    claim["statement"] = f"An LLM says {evil}"
    claim["details"]["role"] = "llm"
    (run_dir / "claims.jsonl").write_text("\n".join([json.dumps(claim)] + lines[1:]) + "\n")


@pytest.fixture
def payload_run(ioi_report, tmp_path):
    out, workspace = ioi_report
    workspace = copy_workspace(workspace, tmp_path / "ws")
    _plant_payloads(workspace, out["run_id"])
    return out["run_id"], workspace


def test_payloads_in_every_untrusted_string_are_inert_in_html(payload_run, capsys):
    run_id, workspace = payload_run
    html = _report(capsys, run_id, workspace, "html")
    page = parse(html)
    assert not [t for t, _ in page.tags if t in ("script", "img", "iframe", "object", "embed")]
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for value in attrs.values():
            assert "javascript:" not in (value or "").lower().replace(" ", ""), (tag, attrs)
    text = "".join(page.text)
    for payload in PAYLOADS:  # shown as the words they are, many times over
        assert payload in text, payload
    assert html.count("&lt;script&gt;") >= 6 and "<script>" not in html


def test_payloads_in_every_untrusted_string_are_inert_in_markdown(payload_run, capsys):
    run_id, workspace = payload_run
    md = _report(capsys, run_id, workspace, "md")
    assert md.count(PAYLOADS[0]) >= 4  # verbatim inside code spans
    outside = re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", "", md)
    assert re.search(r"(?<!\\)<", outside) is None  # every < outside code spans is escaped
    links = re.findall(r"(?<!\\)\]\(([^)]*)\)", outside)
    assert links and all(link.startswith(("figures/", "../experiments/")) for link in links), links
    # an LLM's words outside code spans are backslash-escaped: rendered, they are plain text
    assert r"\<script\>" in outside and r"\[click\]\(javascript:" in outside


def test_only_relative_and_http_links_survive():
    from agents.report.render import safe_href

    for good in ("#exp-ab12", "../experiments/" + "a" * 64 + ".json", "figures/lens.svg", "https://nnsight.net/x"):
        assert safe_href(good) == good
    for bad in ("javascript:alert(1)", "JavaScript:alert(1)", " javascript:x", "data:text/html,<b>", "//evil.com/x",
                "vbscript:x", "file:///etc/passwd", "http://a b"):
        assert safe_href(bad) == "#", bad


def test_a_budget_exhausted_run_still_renders_and_says_what_is_missing(tmp_path, capsys):
    assert sleuth(["ask", "indirect object identification", "--model", "organism-default", "--n", "16",
                   "--max-experiments", "3", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "budget_exhausted"
    html = Path(out["report"]["html"]).read_text()
    assert "not drawn" in html and "The budget ran out" in html
    parse(html)


def test_report_flags_and_bad_input(ioi_report, capsys):
    out, workspace = ioi_report
    assert sleuth(["report", out["run_id"], "--workspace", str(workspace), "--format", "pdf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format must be md or html" in err
    assert sleuth(["report", "latest", "--workspace", str(workspace / "nope")]) == 2
    assert "no workspace" in capsys.readouterr().err
    assert sleuth(["serve", "--port", "70000", "--workspace", str(workspace)]) == 2
    assert "--port" in capsys.readouterr().err
    assert sleuth(["serve", "--workspace", str(workspace / "nope")]) == 2
    assert "no workspace" in capsys.readouterr().err


def test_open_writes_the_reports_into_the_run_and_names_the_file(ioi_report, tmp_path, capsys, monkeypatch):
    import webbrowser

    out, workspace = ioi_report
    workspace = copy_workspace(workspace, tmp_path / "ws")
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    folder = workspace / "runs" / out["run_id"] / "reports"
    shutil.rmtree(folder)
    assert sleuth(["report", out["run_id"], "--workspace", str(workspace), "--open"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == folder / "report.html" and path.is_file() and (folder / "report.md").is_file()
    assert opened == [path.resolve().as_uri()] and len(list((folder / "figures").glob("*.svg"))) == len(FIGURES)


def test_charts_refuse_event_handler_attributes():
    from pydantic import ValidationError

    from agents.report.charts import Shape

    with pytest.raises(ValidationError):
        Shape(tag="rect", attrs={"onload": "x"})
    with pytest.raises(ValidationError):
        Shape(tag="script", attrs={})  # type: ignore[arg-type]


def test_heatmap_colours_are_symmetric_and_grey_where_unmeasured():
    from agents.report.charts import GREY, colour

    assert colour(0.0, 1.0, "diverging") == "#ffffff"
    assert colour(1.0, 1.0, "diverging") == "#b2182b" and colour(-1.0, 1.0, "diverging") == "#2166ac"
    assert colour(5.0, 1.0, "diverging") == colour(1.0, 1.0, "diverging")  # clipped
    assert colour(None, 1.0, "diverging") == GREY and colour(float("nan"), 1.0, "sequential") == GREY
    assert colour(0.5, 1.0, "sequential") != colour(0.25, 1.0, "sequential")


def test_the_answer_names_the_measured_numbers_of_the_supported_claims(ioi_report):
    out, workspace = ioi_report
    run = _run(workspace, out["run_id"])
    answer = run.record.answer
    for c in run.claims():
        if c.verdict == "supported":
            assert f"[{c.id}]" in answer and f"{c.effect:.2f} (95% CI {c.ci_low:.2f}–{c.ci_high:.2f})" in answer
    html = Path(out["report"]["html"]).read_text()
    section = html[html.index('<section id="answer"'):html.index("</section>")]
    assert "[writers]" in section and "&lt;" not in section.replace("&lt;script", "")


def test_the_stored_tensor_is_read_not_a_copy_of_the_outcome(ioi_report):
    """The heatmap's cells equal the stored tensor's values (and not the graph's state)."""
    from agents.report.build import build_report

    out, workspace = ioi_report
    run = _run(workspace, out["run_id"])
    data = build_report(run)
    resid = next(f for f in data.figures if f.id == "resid")
    stored = run.load_experiment(resid.evidence[0])
    name = next(k for k in stored.tensors if k.startswith("effect.resid_pre"))
    expected = stored.tensors[name]
    got = torch.tensor([[float("nan") if v is None else v for v in row] for row in resid.chart.values])
    assert torch.allclose(got, expected.to(got.dtype), equal_nan=True)


def test_the_findings_say_when_no_circuit_reached_the_target():
    from agents.report.build import _findings

    circuit = {"components": ["mlp.0", "head.1.2"], "target": 0.8, "by_method": {"resample": 0.61, "mean": 0.55},
               "sizes": [{"size": s, "method": "resample", "faithfulness": 0.1 * s} for s in range(1, 11)]}
    (missed,) = [p.text for p in _findings({"circuit": {**circuit, "reached": False}})]
    assert "No prefix of up to 10 components reached the target" in missed
    (found,) = [p.text for p in _findings({"circuit": {**circuit, "reached": True}})]
    assert "No prefix" not in found and "sizes tried [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in found
