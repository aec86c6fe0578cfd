"""Figures as data, and their geometry as SVG shapes.

A chart (`Heatmap`, `LineChart`, `Diagram`, `BarChart`) holds numbers and labels; `draw` lays it out as
an `Svg`: a list of primitive `Shape`s with coordinates. The shapes are written out by the
Jinja2 template ``svg.j2`` with autoescaping, so every label — a token of the prompt, a
component name — reaches the page as text, never as markup; this module never builds SVG
text itself. Colours and coordinates are numbers formatted here.
"""

from __future__ import annotations

import math
import re
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

# -- chart data ------------------------------------------------------------------------------------


class Heatmap(BaseModel):
    """A grid of values with row and column labels (``None``: not measured, drawn grey)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["heatmap"] = "heatmap"
    rows: list[str]
    cols: list[str]
    values: list[list[float | None]]
    row_title: str = ""
    col_title: str = ""
    scale: Literal["diverging", "sequential"] = "diverging"
    """Diverging: blue below zero, red above, white at zero; sequential: white at 0 to purple."""
    vmax: float | None = None
    """The value at full colour (default: the largest |value|)."""
    marked_cols: list[int] = Field(default_factory=list)
    """Columns whose label is drawn in bold (the tokens the corruption changes)."""
    separator_before_col: int | None = None
    """Draw a gap before this column (heads | MLP)."""


class Series(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    x: list[float]
    y: list[float | None]
    dashed: bool = False
    color: str = "#1f5fa8"

    @field_validator("color")
    @classmethod
    def _colour(cls, value: str) -> str:
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise ValueError(f"colour {value!r} is not #rrggbb")
        return value


class LineChart(BaseModel):
    """Lines over a numeric x axis, with optional tick labels and horizontal reference lines."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["lines"] = "lines"
    series: list[Series]
    x_label: str = ""
    y_label: str = ""
    x_ticks: list[tuple[float, str]] | None = None
    hlines: list[tuple[float, str]] = Field(default_factory=list)
    vlines: list[tuple[float, str]] = Field(default_factory=list)
    """Vertical reference lines (x, label): an event on the x axis, e.g. where a behaviour appears."""


class Bar(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    label: str
    value: float
    low: float | None = None
    """Lower end of the whisker (a confidence interval); None: no whisker."""
    high: float | None = None
    highlight: bool = True
    """Drawn in colour (red above zero, blue below); False: grey (e.g. not significant)."""


class BarChart(BaseModel):
    """Horizontal bars from zero with optional CI whiskers, one row per bar, largest first as given."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["bars"] = "bars"
    bars: list[Bar]
    x_label: str = ""
    vlines: list[tuple[float, str]] = Field(default_factory=list)
    """Vertical reference lines (x, label), e.g. the smallest change of interest."""


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    layer: float
    """Column: the component's layer (the logits sit after the last layer)."""
    label: str
    detail: str = ""
    role: Literal["writer", "reader", "other", "output"] = "other"


class Edge(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str
    target: str
    value: float
    """The share of the logit difference the path carries (path patching)."""
    label: str
    supported: bool | None = None
    """Whether a claim covering this edge survived the critic (None: no claim was made)."""


class Diagram(BaseModel):
    """The mechanism: components by layer, and the measured paths between them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["diagram"] = "diagram"
    nodes: list[Node]
    edges: list[Edge]


Chart = Union[Heatmap, LineChart, Diagram, BarChart]

# -- shapes ------------------------------------------------------------------------------------------

_ATTRIBUTE = re.compile(r"^(?!on)[a-z][a-z0-9-]*$")


class Shape(BaseModel):
    """One SVG element. ``attrs`` names come from this module only (checked: never ``on*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tag: Literal["rect", "text", "line", "path", "circle", "polyline"]
    attrs: dict[str, str]
    text: str | None = None
    title: str | None = None
    """A tooltip (``<title>``)."""

    @field_validator("attrs")
    @classmethod
    def _names(cls, attrs: dict[str, str]) -> dict[str, str]:
        for name in attrs:
            if not _ATTRIBUTE.match(name):
                raise ValueError(f"attribute {name!r} is not allowed in a chart")
        return attrs


class Svg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    width: float
    height: float
    shapes: list[Shape]
    arrows: bool = False
    """Whether the ``arrow`` markers are used (diagrams)."""


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _rect(x, y, w, h, fill, title=None, **extra) -> Shape:
    return Shape(tag="rect", attrs={"x": _n(x), "y": _n(y), "width": _n(w), "height": _n(h), "fill": fill,
                                    **{k.replace("_", "-"): str(v) for k, v in extra.items()}}, title=title)


def _text(x, y, text, *, anchor="start", size=11, weight="normal", fill="#222", rotate=None) -> Shape:
    attrs = {"x": _n(x), "y": _n(y), "font-size": str(size), "text-anchor": anchor, "fill": fill,
             "font-weight": weight}
    if rotate is not None:
        attrs["transform"] = f"rotate({_n(rotate)} {_n(x)} {_n(y)})"
    return Shape(tag="text", attrs=attrs, text=text)


def _line(x1, y1, x2, y2, stroke="#888", width=1.0, dash=None) -> Shape:
    attrs = {"x1": _n(x1), "y1": _n(y1), "x2": _n(x2), "y2": _n(y2), "stroke": stroke, "stroke-width": _n(width)}
    if dash:
        attrs["stroke-dasharray"] = dash
    return Shape(tag="line", attrs=attrs)


# -- colour ------------------------------------------------------------------------------------------


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> str:
    t = min(1.0, max(0.0, t))
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


WHITE, RED, BLUE, PURPLE, GREY = (255, 255, 255), (178, 24, 43), (33, 102, 172), (84, 39, 143), "#d9d9d9"


def colour(value: float | None, vmax: float, scale: str) -> str:
    if value is None or math.isnan(value):
        return GREY
    t = value / vmax if vmax > 0 else 0.0
    if scale == "sequential":
        return _mix(WHITE, PURPLE, t)
    return _mix(WHITE, RED, t) if t >= 0 else _mix(WHITE, BLUE, -t)


def _dark(value: float | None, vmax: float) -> bool:
    return value is not None and vmax > 0 and abs(value) / vmax > 0.6


# -- layout ------------------------------------------------------------------------------------------


def draw(chart: Chart) -> Svg:
    if isinstance(chart, Heatmap):
        return _draw_heatmap(chart)
    if isinstance(chart, LineChart):
        return _draw_lines(chart)
    if isinstance(chart, BarChart):
        return _draw_bars(chart)
    return _draw_diagram(chart)


def _fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _tick(value: float, integers: bool) -> str:
    return str(int(round(value))) if integers else _fmt(value)


def _draw_heatmap(h: Heatmap) -> Svg:
    ncols = max(1, len(h.cols))
    cw = max(18.0, min(56.0, 640.0 / ncols))
    ch = 22.0
    left = (30 if h.row_title else 12) + 7 * max([len(r) for r in h.rows] + [4])
    longest = max([len(c) for c in h.cols] + [1])
    bottom = 24 + min(120, 6 * longest)
    gap = 10.0 if h.separator_before_col is not None else 0.0
    top = 10.0
    grid_w = ncols * cw + gap
    width, height = left + grid_w + 90, top + len(h.rows) * ch + bottom + (16 if h.col_title else 0)
    finite = [abs(v) for row in h.values for v in row if v is not None and not math.isnan(v)]
    vmax = h.vmax if h.vmax is not None else (max(finite) if finite else 1.0)
    vmax = vmax or 1.0
    shapes: list[Shape] = []
    show_values = cw >= 30
    for i, (label, row) in enumerate(zip(h.rows, h.values)):
        y = top + i * ch
        shapes.append(_text(left - 6, y + ch / 2 + 4, label, anchor="end"))
        for j, value in enumerate(row):
            x = left + j * cw + (gap if h.separator_before_col is not None and j >= h.separator_before_col else 0)
            tip = f"{label} · {h.cols[j] if j < len(h.cols) else j}: " + ("not measured" if value is None else _fmt(value))
            shapes.append(_rect(x, y, cw - 1, ch - 1, colour(value, vmax, h.scale), title=tip))
            if show_values and value is not None:
                shapes.append(_text(x + cw / 2, y + ch / 2 + 4, _fmt(value), anchor="middle", size=9,
                                    fill="#fff" if _dark(value, vmax) else "#222"))
    base = top + len(h.rows) * ch
    for j, label in enumerate(h.cols):
        x = left + j * cw + cw / 2 + (gap if h.separator_before_col is not None and j >= h.separator_before_col else 0)
        rotate = -45 if longest * 6 > cw else None
        shapes.append(_text(x, base + 14, label, anchor="end" if rotate else "middle", size=10, rotate=rotate,
                            weight="bold" if j in h.marked_cols else "normal"))
    if h.col_title:
        shapes.append(_text(left + grid_w / 2, height - 6, h.col_title, anchor="middle", size=11))
    if h.row_title:
        shapes.append(_text(12, top + len(h.rows) * ch / 2, h.row_title, anchor="middle", size=11, rotate=-90))
    # colour bar
    bar_x, steps = left + grid_w + 24, 24
    bar_h = max(60.0, min(200.0, len(h.rows) * ch))
    low = 0.0 if h.scale == "sequential" else -vmax
    for k in range(steps):
        v = vmax - (vmax - low) * (k + 0.5) / steps
        shapes.append(_rect(bar_x, top + k * bar_h / steps, 12, bar_h / steps + 0.5, colour(v, vmax, h.scale)))
    shapes.append(_text(bar_x + 16, top + 9, _fmt(vmax), size=9))
    shapes.append(_text(bar_x + 16, top + bar_h, _fmt(low), size=9))
    return Svg(width=width, height=height, shapes=shapes)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, t = [], first
    while t <= high + 1e-9 and len(ticks) < 50:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _draw_lines(c: LineChart) -> Svg:
    width, height = 700.0, 300.0
    left, right, top, bottom = 58.0, 200.0, 14.0, 50.0
    xs = [x for s in c.series for x in s.x]
    ys = [y for s in c.series for y in s.y if y is not None and math.isfinite(y)] + [y for y, _ in c.hlines]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.06 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    shapes: list[Shape] = []
    for t in nice_ticks(y0, y1):
        shapes.append(_line(left, py(t), left + pw, py(t), stroke="#e4e4e4"))
        shapes.append(_text(left - 6, py(t) + 4, _fmt(t), anchor="end", size=10))
    integers = all(float(x).is_integer() for x in xs)
    ticks = c.x_ticks if c.x_ticks is not None else [
        (t, _tick(t, integers)) for t in nice_ticks(x0, x1, 8) if not integers or float(t).is_integer()]
    every = max(1, math.ceil(len(ticks) / 14))
    for k, (t, label) in enumerate(ticks):
        shapes.append(_line(px(t), top + ph, px(t), top + ph + 4, stroke="#555"))
        if k % every == 0:
            shapes.append(_text(px(t), top + ph + 16, label, anchor="middle", size=10))
    shapes.append(_line(left, top + ph, left + pw, top + ph, stroke="#555"))
    shapes.append(_line(left, top, left, top + ph, stroke="#555"))
    if y0 < 0 < y1:
        shapes.append(_line(left, py(0), left + pw, py(0), stroke="#999"))
    for y, label in c.hlines:
        shapes.append(_line(left, py(y), left + pw, py(y), stroke="#b35806", dash="5 4"))
        shapes.append(_text(left + pw + 6, py(y) + 4, label, size=10, fill="#b35806"))
    for x, label in c.vlines:
        if x0 <= x <= x1:
            shapes.append(_line(px(x), top, px(x), top + ph, stroke="#6a3d9a", dash="4 3"))
            shapes.append(_text(px(x) + 3, top + 10, label, size=10, fill="#6a3d9a"))
    for k, s in enumerate(c.series):
        points = [(px(x), py(y)) for x, y in zip(s.x, s.y) if y is not None and math.isfinite(y)]
        if len(points) > 1:
            attrs = {"points": " ".join(f"{_n(a)},{_n(b)}" for a, b in points), "fill": "none", "stroke": s.color,
                     "stroke-width": "2"}
            if s.dashed:
                attrs["stroke-dasharray"] = "6 4"
            shapes.append(Shape(tag="polyline", attrs=attrs))
        for (a, b), x, y in zip(points, [x for x, y in zip(s.x, s.y) if y is not None and math.isfinite(y)],
                                [y for y in s.y if y is not None and math.isfinite(y)]):
            shapes.append(Shape(tag="circle", attrs={"cx": _n(a), "cy": _n(b), "r": "3", "fill": s.color},
                                title=f"{s.name}: x={_fmt(x)}, y={_fmt(y)}"))
        ly = top + 10 + 18 * k
        shapes.append(_line(left + pw + 8, ly, left + pw + 28, ly, stroke=s.color, width=2,
                            dash="6 4" if s.dashed else None))
        shapes.append(_text(left + pw + 32, ly + 4, s.name, size=10))
    if c.x_label:
        shapes.append(_text(left + pw / 2, height - 8, c.x_label, anchor="middle", size=11))
    if c.y_label:
        shapes.append(_text(14, top + ph / 2, c.y_label, anchor="middle", size=11, rotate=-90))
    return Svg(width=width, height=height, shapes=shapes)


def _draw_bars(c: BarChart) -> Svg:
    row_h, top = 20.0, 12.0
    left = 14 + 6.6 * max([len(b.label) for b in c.bars] + [6])
    plot_w, right = 460.0, 70.0
    values = [v for b in c.bars for v in (b.value, b.low, b.high) if v is not None and math.isfinite(v)]
    values += [x for x, _ in c.vlines] + [0.0]
    x0, x1 = min(values), max(values)
    pad = (x1 - x0) * 0.05 or 0.5
    x0, x1 = x0 - pad, x1 + pad
    height = top + row_h * max(1, len(c.bars)) + 46
    width = left + plot_w + right

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    shapes: list[Shape] = []
    base_y = top + row_h * max(1, len(c.bars))
    for t in nice_ticks(x0, x1, 6):
        shapes.append(_line(px(t), top, px(t), base_y, stroke="#e4e4e4"))
        shapes.append(_text(px(t), base_y + 14, _fmt(t), anchor="middle", size=10))
    for x, label in c.vlines:
        shapes.append(_line(px(x), top, px(x), base_y, stroke="#b35806", dash="5 4"))
        shapes.append(_text(px(x), top - 2, label, anchor="middle", size=9, fill="#b35806"))
    shapes.append(_line(px(0.0), top, px(0.0), base_y, stroke="#555"))
    for i, b in enumerate(c.bars):
        y = top + i * row_h
        fill = ("#b2182b" if b.value >= 0 else "#2166ac") if b.highlight else "#bdbdbd"
        a, z = sorted((px(0.0), px(b.value)))
        tip = f"{b.label}: {_fmt(b.value)}" + (f" (CI {_fmt(b.low)} to {_fmt(b.high)})"
                                                 if b.low is not None and b.high is not None else "")
        shapes.append(_text(left - 6, y + row_h / 2 + 4, b.label, anchor="end", size=10))
        shapes.append(_rect(a, y + 4, max(z - a, 0.5), row_h - 8, fill, title=tip))
        if b.low is not None and b.high is not None:
            mid = y + row_h / 2
            shapes.append(_line(px(b.low), mid, px(b.high), mid, stroke="#222", width=1.2))
            for end in (b.low, b.high):
                shapes.append(_line(px(end), mid - 4, px(end), mid + 4, stroke="#222", width=1.2))
        shapes.append(_text(left + plot_w + 6, y + row_h / 2 + 4, _fmt(b.value), size=10))
    if c.x_label:
        shapes.append(_text(left + plot_w / 2, height - 8, c.x_label, anchor="middle", size=11))
    return Svg(width=width, height=height, shapes=shapes)


_ROLE_FILL = {"writer": "#fdd9b5", "reader": "#cfe3f3", "other": "#ececec", "output": "#d9f0d3"}


def _bezier(p0, p1, p2, p3, t: float) -> tuple[float, float]:
    u = 1 - t
    return (u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
            u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1])


def _overlap(box, boxes) -> float:
    """Total area ``box`` shares with ``boxes``."""
    x, y, w, h = box
    return sum(max(0.0, min(x + w, bx + bw) - max(x, bx)) * max(0.0, min(y + h, by + bh) - max(y, by))
               for bx, by, bw, bh in boxes)


def _draw_diagram(d: Diagram) -> Svg:
    columns = sorted({n.layer for n in d.nodes})
    # wide circuits (many layers) get narrower gaps, so the figure keeps a readable scale
    col_w = 190.0 if len(columns) <= 6 else 150.0
    node_w, node_h, row_h, left, top = 104.0, 36.0, 58.0, 16.0, 30.0
    place: dict[str, tuple[float, float]] = {}
    per_column: dict[float, list[Node]] = {c: [n for n in d.nodes if n.layer == c] for c in columns}
    tallest = max((len(v) for v in per_column.values()), default=1)
    height = top + tallest * row_h + 34
    output_gap = 70.0  # room before the logits for the labels of the direct paths
    xs = {c: left + i * col_w + (output_gap if any(n.role == "output" for n in per_column[c]) else 0.0)
          for i, c in enumerate(columns)}
    for c in columns:
        nodes = per_column[c]
        offset = (tallest - len(nodes)) * row_h / 2
        for j, n in enumerate(nodes):
            place[n.id] = (xs[c], top + offset + j * row_h)
    width = max(xs.values(), default=left) + node_w + 16
    shapes: list[Shape] = []
    for c in columns:
        label = "logits" if any(n.role == "output" for n in per_column[c]) else f"layer {int(c)}"
        shapes.append(_text(xs[c] + node_w / 2, 16, label, anchor="middle", size=10, fill="#666"))
    drawn = [e for e in d.edges if e.source in place and e.target in place]
    # a node with many incoming paths (the logits) grows, and the paths arrive at separate ports
    incoming: dict[str, list[Edge]] = {}
    for e in drawn:
        incoming.setdefault(e.target, []).append(e)
    heights = {n.id: node_h for n in d.nodes}
    for target, edges in incoming.items():
        if len(edges) > 3 and target in place:
            grown = 17.0 * len(edges) + 8
            x, y = place[target]
            place[target] = (x, y + node_h / 2 - grown / 2)
            heights[target] = grown
    port: dict[tuple[str, str], float] = {}
    for target, edges in incoming.items():
        ordered_ = sorted(edges, key=lambda e: place[e.source][1])
        h = heights[target]
        for k, e in enumerate(ordered_):
            port[(e.source, e.target)] = place[target][1] + h * (k + 1) / (len(ordered_) + 1)
    occupied = [(x - 2, y - 2, node_w + 4, heights[i] + 4) for i, (x, y) in place.items()]
    labels: list[Shape] = []
    for e in sorted(drawn, key=lambda e: abs(e.value)):
        (sx, sy), (tx, ty) = place[e.source], place[e.target]
        p0, p3 = (sx + node_w, sy + heights[e.source] / 2), (tx - 2, port[(e.source, e.target)])
        if p3[0] <= p0[0]:  # same column: enter from above
            p3 = (tx + node_w / 2, ty - 2)
        bend = max(40.0, (p3[0] - p0[0]) / 2)
        p1, p2 = (p0[0] + bend, p0[1]), (p3[0] - bend, p3[1])
        colour_ = "#333333" if e.value >= 0 else "#c0392b"
        attrs = {"d": f"M {_n(p0[0])} {_n(p0[1])} C {_n(p1[0])} {_n(p1[1])}, {_n(p2[0])} {_n(p2[1])}, "
                      f"{_n(p3[0])} {_n(p3[1])}",
                 "fill": "none", "stroke": colour_ if e.supported is not False else "#999999",
                 "stroke-width": _n(1 + 5 * min(1.0, abs(e.value))), "marker-end": "url(#arrow)"}
        if e.supported is not True:
            attrs["stroke-dasharray"] = "5 4"
        verdict = {True: "supported", False: "not supported", None: "no claim"}[e.supported]
        shapes.append(Shape(tag="path", attrs=attrs, title=f"{e.source} → {e.target} ({e.label}): {_fmt(e.value)}, "
                                                            f"{verdict}"))
        text = f"{e.label} {_fmt(e.value)}"
        w = 6.2 * len(text) + 6
        output = next((n.role == "output" for n in d.nodes if n.id == e.target), False)
        tries = [0.9, 0.86, 0.94, 0.82, 0.78, 0.7, 0.6, 0.5] if output else [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8]
        best = None
        for t in tries:  # the first place the label covers nothing, else the one covering least
            mx, my = _bezier(p0, p1, p2, p3, t)
            box = (mx - w / 2, my - 9, w, 14)
            cost = _overlap(box, occupied)
            if best is None or cost < best[0]:
                best = (cost, mx, my, box)
            if cost == 0:
                break
        _, mx, my, box = best
        occupied.append(box)
        labels.append(_rect(*box, "#ffffff", opacity="0.9"))
        labels.append(_text(mx, my + 2, text, anchor="middle", size=10, fill=colour_))
    for n in d.nodes:
        x, y = place[n.id]
        h = heights[n.id]
        shapes.append(_rect(x, y, node_w, h, _ROLE_FILL[n.role], title=f"{n.label} ({n.role}) {n.detail}",
                            stroke="#555", rx="5"))
        middle = y + h / 2
        shapes.append(_text(x + node_w / 2, middle - 3, n.label, anchor="middle", size=11, weight="bold"))
        if n.detail:
            shapes.append(_text(x + node_w / 2, middle + 11, n.detail, anchor="middle", size=9, fill="#444"))
    shapes += labels
    legend_y = height - 10
    for k, (role, name) in enumerate((("writer", "writes the answer"), ("reader", "reads the changed tokens"),
                                      ("other", "other circuit component"))):
        shapes.append(_rect(left + k * 190, legend_y - 9, 12, 12, _ROLE_FILL[role], stroke="#555"))
        shapes.append(_text(left + k * 190 + 16, legend_y + 1, name, size=10))
    return Svg(width=max(width, 600.0), height=height, shapes=shapes, arrows=True)
