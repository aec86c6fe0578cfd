"""Render a `ReportData` as self-contained HTML and as Markdown, and write them into the run.

HTML: Jinja2 with autoescaping on for every template; figures are inline SVG drawn from
`agents.report.charts` shapes; the page carries a Content-Security-Policy that allows no script
and no remote resource at all (inline styles and ``data:`` images only), and every link goes
through `safe_href` (relative paths, in-page anchors and http(s) only). Markdown: untrusted
text as code spans (`agents.llm.fence.untrusted_md`), an LLM's words backslash-escaped, figures
as SVG files in ``reports/figures/`` beside it.

Both are deterministic functions of the stored run: rendering twice gives the same bytes.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

from agents.llm.fence import md_escape, untrusted_md
from tools.errors import Interrupted, stored_reason
from agents.report.build import Figure, Prose, ReportData, build_report
from agents.report.charts import draw

if TYPE_CHECKING:
    from jinja2 import Environment

    from memory.runstore import Run

TEMPLATES = Path(__file__).parent / "templates"
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'")
"""No script, no remote resource: the report is text, inline styles and inline SVG."""

_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
_SAFE_HREF = re.compile(r"^(#[A-Za-z0-9_.:-]*|https?://[^\s\"'<>]+|(?![A-Za-z][A-Za-z0-9+.-]*:)(?!//)[A-Za-z0-9_./#-]+)$")


def safe_href(url: str) -> str:
    """``url`` when it is an in-page anchor, a relative path or an http(s) address; else ``#``."""
    url = str(url).strip()
    return url if _SAFE_HREF.match(url) else "#"


def prose_html(p: Prose | str) -> Markup:
    """Trusted Markdown text (code spans only) as HTML; an LLM's words escaped verbatim."""
    if isinstance(p, str):
        p = Prose(text=p)
    if p.kind == "llm":
        return escape(p.text)
    out, at = [], 0
    for match in _CODE_SPAN.finditer(p.text):
        out.append(escape(p.text[at:match.start()]))
        inner = match.group(2)
        if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
            inner = inner[1:-1]
        out.append(Markup("<code>") + escape(inner) + Markup("</code>"))
        at = match.end()
    out.append(escape(p.text[at:]))
    return Markup("").join(out)


def prose_md(p: Prose | str) -> str:
    if isinstance(p, str):
        return p
    return md_escape(p.text) if p.kind == "llm" else p.text


def table_cell(text: str) -> str:
    """Text for a Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value != value:
        return "n/a"
    return f"{value:.{digits}f}"


def p_value(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


@lru_cache(maxsize=2)
def _environment(html: bool) -> "Environment":
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=html, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=number, p=p_value, href=safe_href, short=lambda k: str(k)[:12],
                       json=lambda v: json.dumps(v, indent=1, sort_keys=True, ensure_ascii=False))
    if html:
        env.filters.update(prose=prose_html, code=lambda t: Markup("<code>") + escape(str(t)) + Markup("</code>"))
    else:
        env.filters.update(prose=prose_md, code=lambda t: untrusted_md(str(t)), cell=table_cell, md=md_escape)
    return env


def page_environment() -> "Environment":
    """The autoescaping environment of the HTML templates (the report, ``sleuth serve``'s page)."""
    return _environment(True)


def render_svg(figure: Figure) -> str:
    """One figure as a standalone SVG document (escaped by the template)."""
    return _environment(True).get_template("svg.j2").render(svg=draw(figure.chart), label=figure.title)


_TEMPLATES = {"investigation": "report", "diff": "diff", "watch": "watch"}
"""The template pair of each kind of run (``run.json`` settings ``kind``; none: an investigation)."""


def render_html(data) -> str:
    figures = {f.id: Markup(render_svg(f)) for f in data.figures}
    name = _TEMPLATES[getattr(data, "kind", "investigation")]
    return _environment(True).get_template(f"{name}.html.j2").render(r=data, svgs=figures, csp=CSP)


def render_markdown(data, figure_dir: str = "figures") -> str:
    name = _TEMPLATES[getattr(data, "kind", "investigation")]
    return _environment(False).get_template(f"{name}.md.j2").render(r=data, figure_dir=figure_dir)


def build_any(run: "Run"):
    """The report data of any run: an investigation's, a diff's or a watch run's."""
    kind = (run.record.settings or {}).get("kind")
    if kind == "diff":
        from agents.report.diff_report import build_diff_report

        return build_diff_report(run)
    if kind == "watch":
        from agents.report.watch_report import build_watch_report

        return build_watch_report(run)
    return build_report(run)


def render(run: "Run", fmt: str) -> str:
    """The report of ``run`` in ``fmt`` (``html`` or ``md``), rebuilt from its stored files."""
    data = build_any(run)
    return render_html(data) if fmt == "html" else render_markdown(data)


def write_reports(run: "Run", folder: Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.svg`` (into the run's ``reports/``
    through the run store, or into ``folder``); return the paths of the two reports."""
    from tools.atomic import atomic_write_text

    data = build_any(run)
    html, md = render_html(data), render_markdown(data)
    if folder is None:
        paths = {"md": run.write_report("report.md", md), "html": run.write_report("report.html", html)}
        figures = run.folder / "reports" / "figures"
    else:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"md": atomic_write_text(folder / "report.md", md),
                 "html": atomic_write_text(folder / "report.html", html)}
        figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for f in data.figures:
        atomic_write_text(figures / f"{f.id}.svg", render_svg(f))
    return paths


@contextmanager
def reported(run: "Run", started: float):
    """Run a measurement's body (a diff's, a watch's): on success the run is answered and its
    reports written. Ctrl-C stores it as interrupted and says how to go on (the same command
    again: what finished is in the workspace's cache); any other exception stores it as failed,
    with the reason, and goes on. ``started`` is the ``time.monotonic()`` the wall time counts
    from."""
    try:
        yield
    except KeyboardInterrupt:
        run.update(status="interrupted", cost={"wall_s": time.monotonic() - started})
        raise Interrupted(f"run {run.id} is stored as interrupted; the same command again reuses every experiment "
                          "it finished (they are in the workspace's cache)") from None
    except BaseException as error:
        run.update(status="failed", error=stored_reason(error), cost={"wall_s": time.monotonic() - started})
        raise
    run.update(status="answered", cost={"wall_s": time.monotonic() - started})
    write_reports(run)
