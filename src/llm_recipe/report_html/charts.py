"""Loss curves as inline SVG, drawn with matplotlib (no pyplot, no JavaScript).

Every chart is a :class:`matplotlib.figure.Figure` of its own (no global pyplot
state), saved as SVG with text kept as ``<text>`` (``svg.fonttype: none``: smaller,
selectable, and matplotlib's SVG writer escapes it) and ids salted per chart, so
several charts inlined in one page never share an id. The XML prologue, DOCTYPE and
metadata block are removed: what is left is one ``<svg>`` element to inline.

Labels that come from the workspace (phase and probe names of a continual stage) are
drawn as plain text: ``text.parse_math`` is off, so ``$...$`` is not read as mathtext.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_POINTS = 1500
"""Points per series drawn; longer series are thinned evenly (the last point kept)."""

MARK_STYLE = {
    "start": {"color": "#6b7280", "marker": "o", "label": "start"},
    "good": {"color": "#16a34a", "marker": "^", "label": "good"},
    "rollback": {"color": "#dc2626", "marker": "X", "label": "rollback"},
    "commit": {"color": "#2563eb", "marker": "D", "label": "commit"},
}
SERIES_STYLE = {
    "train": {"color": "#2563eb", "linewidth": 1.6, "zorder": 3},
    "eval": {"color": "#ea580c", "linewidth": 1.4, "marker": "o", "markersize": 3.5,
             "zorder": 4},
}
PROBE_COLORS = ("#7c3aed", "#0d9488", "#b45309", "#be185d", "#4b5563")


@dataclass
class Series:
    label: str
    kind: str
    """train, eval or probe: decides the line's style."""
    steps: list[float]
    values: list[float]


@dataclass
class Mark:
    step: float
    type: str
    """start, good, rollback or commit (a continual stage's ledger entry)."""


@dataclass
class Chart:
    series: list[Series]
    marks: list[Mark] = field(default_factory=list)
    phases: list[tuple[float, float, str]] = field(default_factory=list)
    """(first step, last step, name) of each phase of a continual stage."""
    ylabel: str = "loss"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def thin(steps: Sequence[float], values: Sequence[float],
         limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    if len(steps) <= limit:
        return list(steps), list(values)
    stride = math.ceil(len(steps) / limit)
    keep = list(range(0, len(steps), stride))
    if keep[-1] != len(steps) - 1:
        keep.append(len(steps) - 1)
    return [steps[i] for i in keep], [values[i] for i in keep]


def _plain(text: str) -> str:
    return " " + text if text.startswith("_") else text  # "_x" would hide the legend entry


def render_svg(chart: Chart, salt: str, *, width_in: float = 9.6,
               height_in: float = 3.2) -> str:
    """One chart as an ``<svg>`` element (a string) to inline in HTML."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt,
                                "text.parse_math": False, "text.usetex": False,
                                "font.size": 9, "axes.titlesize": 9,
                                "font.family": ["DejaVu Sans", "sans-serif"]}):
        figure = Figure(figsize=(width_in, height_in), layout="constrained")
        axes = figure.add_subplot()
        _draw(axes, chart)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return _inline(buffer.getvalue())


def _draw(axes, chart: Chart) -> None:
    positive = all(v > 0 for s in chart.series for v in s.values)
    values = [v for s in chart.series if s.kind == "train" for v in s.values] or \
        [v for s in chart.series for v in s.values]
    shade = ("#f1f5f9", "#ffffff")
    for index, (first, last, name) in enumerate(chart.phases):
        axes.axvspan(first, last, color=shade[index % 2], zorder=0, lw=0)
        axes.annotate(_plain(name), xy=(first, 1.0), xycoords=("data", "axes fraction"),
                      xytext=(3, -3), textcoords="offset points", va="top", fontsize=8,
                      color="#475569")
    probes = 0
    for series in chart.series:
        style = dict(SERIES_STYLE.get(series.kind, {}))
        if series.kind == "probe":
            style = {"color": PROBE_COLORS[probes % len(PROBE_COLORS)], "linewidth": 1.1,
                     "linestyle": "--", "zorder": 2}
            probes += 1
        steps, ys = thin(series.steps, series.values)
        axes.plot(steps, ys, label=_plain(series.label), **style)
    train = next((s for s in chart.series if s.kind == "train" and s.steps), None)
    seen: set[str] = set()
    for mark in chart.marks:
        style = MARK_STYLE.get(mark.type)
        if style is None:
            continue
        axes.axvline(mark.step, color=style["color"], alpha=0.35, linewidth=0.9, zorder=1)
        if train is not None:
            label = None if mark.type in seen else style["label"]
            seen.add(mark.type)
            axes.scatter([mark.step], [_at(train, mark.step)], color=style["color"],
                         marker=style["marker"], s=36, zorder=5, label=label,
                         edgecolors="white", linewidths=0.6)
    if positive and values and max(values) / max(min(values), 1e-12) > 20:
        from matplotlib.ticker import FuncFormatter

        axes.set_yscale("log")
        # Plain numbers: the default log labels are mathtext, which is off here.
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    axes.set_xlabel("step")
    axes.set_ylabel(chart.ylabel)
    axes.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if len(chart.series) > 1 or chart.marks:
        axes.legend(loc="upper right", fontsize=8, frameon=False, ncols=2)


def _at(series: Series, step: float) -> float:
    """The series' value at ``step`` (linear between logged steps, clamped at the ends)."""
    xs, ys = series.steps, series.values
    if step <= xs[0]:
        return ys[0]
    for (x1, y1), (x2, y2) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True),
                                  strict=False):
        if x1 <= step <= x2:
            return y1 if x2 == x1 else y1 + (y2 - y1) * (step - x1) / (x2 - x1)
    return ys[-1]


_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def _inline(svg: str) -> str:
    svg = _PROLOGUE.sub("", svg, count=1)
    return _METADATA.sub("", svg, count=1).strip()
