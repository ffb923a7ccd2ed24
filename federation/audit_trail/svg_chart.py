"""The privacy report's chart of epsilon spent per lender over rounds, as inline SVG text.

Why not matplotlib: a regulator's verifier re-renders report.html from the signed report.json and compares it
byte for byte. A matplotlib PNG depends on the matplotlib version, its fonts and its rasteriser, so another
machine cannot reproduce it; this module writes the SVG itself and its bytes depend on the input alone.

What keeps it deterministic: every number written out goes through a fixed-precision format (2 decimals for
coordinates, 6 significant digits for values), the axis scale is computed in `decimal` arithmetic, only IEEE
+ - * / are used on floats (no libm functions, whose last bit may differ between platforms), and everything is
laid out in the order of the input lists (sets only ever feed `sorted`). No fonts are loaded: text asks for the
generic sans-serif family, which changes how it looks on a screen, never the bytes.

What keeps it readable: the y axis starts at 0 and ends a little above both the budgets and the highest epsilon;
lenders whose curves are identical (common: same noise, same rounds) are drawn as one line whose legend entry
names them all; up to 6 distinct curves get distinct (colour, dash, marker) styles from the colour-blind-safe
Okabe-Ito palette; beyond that (10 lenders calibrated to one budget end on top of each other) the chart shows the
range over lenders as a band, the median lender as a line and the lender with the highest final epsilon, so it
reads the same at 10, 100 or 1,000 lenders and the legend stays three rows long. The legend sits below the
plotting area, never over data.
"""

from __future__ import annotations

import html
import itertools
import math
import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

Points = list[tuple[int, float]]

WIDTH = 720
PLOT_LEFT = 68
PLOT_RIGHT = WIDTH - 100  # room for the "budget 0.0001" labels
PLOT_TOP = 44
PLOT_BOTTOM = 304
CHART_HEIGHT = 360  # the legend is added below this
LEGEND_ROW = 18
LEGEND_COLUMN_CHARS = 44  # what fits in half the width at 12 px
LEGEND_WIDE_CHARS = 96

# Beyond this many distinct curves, lines that end near one budget lie on top of each other (10 lenders calibrated
# to epsilon 3 did): the chart shows their range, median and highest instead (see _band).
MAX_STYLED_CURVES = 6
MAX_MARKED_POINTS = 60  # beyond this, markers would touch: the line's own <title> holds the values

# Okabe & Ito (2008), without the yellow, which is unreadable as a thin line on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
# A series' dash pattern and marker change once per round of the palette; neither looks like the budget dash.
DASHES = ("", "9 3 2 3", "2 3")
MARKERS = ("circle", "square", "triangle")
BUDGET_DASH = "6 4"
BUDGET_COLOUR = "#777777"
BAND_COLOUR = PALETTE[5]
INK = "#222222"
GRID = "#E4E4E4"


@dataclass(frozen=True)
class _Style:
    colour: str
    dash: str
    marker: str
    width: str = "2"


@dataclass
class _Curve:
    """One drawn line: the lenders whose (round, epsilon) points are identical, in input order."""

    points: Points
    lenders: list[str]

    @property
    def final(self) -> float:
        return self.points[-1][1]


@dataclass(frozen=True)
class _Frame:
    """The plotting area and its scales: round 0..x_span left to right, epsilon 0..y_max bottom to top."""

    left: float
    x_span: int
    y_max: float

    def x(self, round_: float) -> float:
        return self.left + (PLOT_RIGHT - self.left) * round_ / self.x_span

    def y(self, epsilon: float) -> float:
        return PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * epsilon / self.y_max


LegendEntry = tuple[_Style | None, str, str]  # (swatch, text as shown, full text for hover)


def epsilon_chart(
    series: list[tuple[str, list[tuple[int, float]]]],
    budgets: list[float],
    *,
    rounds: int,
    title: str = "Privacy spent per lender (cumulative epsilon)",
) -> str:
    """Inline `<svg>` of cumulative epsilon per lender over rounds 0..rounds, with dashed budget lines.

    `series` is (lender, [(round, epsilon), ...]) per lender in display order; the lender is its name as shown
    after the word "lender" ("3", "north"), and runs of consecutive integer names are shortened ("5-9"). A
    missing round means the lender spent nothing in it (not sampled): the line stays flat across it. Epsilon is
    0 at round 0 unless given. `budgets` are the budget lines to draw (duplicates are drawn once).
    Raises ValueError on a negative or non-finite value, a round outside 0..rounds or a round given twice.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    lines = sorted({_check_value(b, "budget") for b in budgets})
    cleaned = [(str(label), _check_points(str(label), points, rounds)) for label, points in series]
    curves = _group_identical([(label, points) for label, points in cleaned if points])
    silent = [label for label, points in cleaned if not points]

    peak = max(lines + [e for c in curves for _, e in c.points] + [0.0])
    step, intervals = _nice_scale(peak if peak > 0 else 1.0)
    ticks = [(float(step * i), "0" if i == 0 else f"{step * i:f}") for i in range(intervals + 1)]
    # the y tick labels decide the left margin, so that 0.00025 does not run into the axis label
    frame = _Frame(
        max(PLOT_LEFT, 36 + 7 * max(len(label) for _, label in ticks)), max(rounds, 1), float(step * intervals)
    )

    if not curves:
        back: list[str] = []
        front = [
            f'<text x="{_c((frame.left + PLOT_RIGHT) / 2)}" y="{_c((PLOT_TOP + PLOT_BOTTOM) / 2)}" '
            f'text-anchor="middle" font-size="14" fill="{INK}">no privacy releases</text>'
        ]
        legend: list[LegendEntry] = []
    elif len(curves) <= MAX_STYLED_CURVES:
        back, front, legend = [], *_styled(curves, frame)
    else:
        back, front, legend = _band(curves, frame)
    if lines:
        text = "budget" if len(lines) == 1 else _budgets_text(lines)
        legend.append((_Style(BUDGET_COLOUR, BUDGET_DASH, "", width="1.2"), text, f"{_budgets_text(lines)} (dashed)"))
    if silent:
        text = f"no privacy releases: {_who(silent, LEGEND_WIDE_CHARS - 22)}"
        legend.append((None, text, f"no privacy releases: {_who(silent)}"))

    summary = _summary(len(series), rounds, curves, silent, lines)
    legend_svg, legend_height = _legend(legend, CHART_HEIGHT)
    height = CHART_HEIGHT + legend_height
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="{_esc(title)}: {_esc(summary[0])}" '
        f'font-family="sans-serif" font-size="12" style="max-width:100%;height:auto">'
    )
    # budgets above the shaded band (else they vanish under it), below the lines a reader follows
    parts = [
        head,
        f"<title>{_esc(title)}</title>",
        f"<desc>{_esc(' '.join(summary))}</desc>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#FFFFFF"/>',
        f'<text x="{_c(frame.left)}" y="24" font-size="15" font-weight="bold" fill="{INK}">{_esc(title)}</text>',
        _axes(ticks, rounds, frame),
        *back,
        _budget_lines(lines, frame),
        *front,
        legend_svg,
        "</svg>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _styled(curves: list[_Curve], frame: _Frame) -> tuple[list[str], list[LegendEntry]]:
    """Each curve in its own (colour, dash, marker) style, with its own legend entry."""
    svg: list[str] = []
    legend: list[LegendEntry] = []
    for index, curve in enumerate(curves):
        style = _style(index)
        svg.append(_line(curve, style, frame, marked=True))
        legend.append((style, _who(curve.lenders, LEGEND_WIDE_CHARS, identical=True), _who(curve.lenders)))
    return svg, legend


def _band(curves: list[_Curve], frame: _Frame) -> tuple[list[str], list[str], list[LegendEntry]]:
    """Too many curves to tell apart: the range over lenders as a shaded band, the median lender's epsilon as a
    line, and the lender with the highest final epsilon (the least protected) in colour on top.

    Counted per lender, not per curve: lenders with identical curves weigh as many as they are.
    """
    lenders = sum(len(c.lenders) for c in curves)
    last = max(c.points[-1][0] for c in curves)  # a run that stopped early ends its band there too
    spread = [_spread(curves, r) for r in range(last + 1)]
    upper = [f"{_c(frame.x(r))},{_c(frame.y(high))}" for r, (_, _, high) in enumerate(spread)]
    lower = [f"{_c(frame.x(r))},{_c(frame.y(low))}" for r, (low, _, _) in reversed(list(enumerate(spread)))]
    band_tip = f"range over the {lenders} lenders: " + ", ".join(
        f"round {r}: {_value(low)} to {_value(high)}" for r, (low, _, high) in enumerate(spread) if r > 0
    )
    back = [
        f'<polygon class="band" points="{" ".join(upper + lower)}" fill="{BAND_COLOUR}" fill-opacity="0.35" '
        f'stroke="{BAND_COLOUR}" stroke-width="0.8"><title>{_esc(band_tip)}</title></polygon>'
    ]
    median = _Curve([(r, middle) for r, (_, middle, _) in enumerate(spread)], ["median"])
    median_style = _Style(PALETTE[0], "", "")
    median_tip = "median lender: epsilon " + ", ".join(f"round {r}: {_value(e)}" for r, e in median.points if r > 0)
    highest = max(curves, key=lambda c: c.final)  # max keeps the first of equals: input order decides
    top_style = _Style(PALETTE[1], "", "circle")
    front = [
        _line(median, median_style, frame, marked=False, tip=median_tip, cls="median"),
        _line(highest, top_style, frame, marked=True),
    ]
    legend: list[LegendEntry] = [
        (
            _Style(BAND_COLOUR, "", "band"),
            f"range over the {lenders} lenders (lowest to highest)",
            band_tip,
        ),
        (median_style, "median lender", median_tip),
        (
            top_style,
            f"highest: {_who(highest.lenders, LEGEND_WIDE_CHARS - 9)}",
            f"highest: {_who(highest.lenders)}, epsilon {_value(highest.final)} after round {highest.points[-1][0]}",
        ),
    ]
    return back, front, legend


def _spread(curves: list[_Curve], round_: int) -> tuple[float, float, float]:
    """(lowest, median, highest) epsilon over lenders after `round_`: a lender that spent nothing in a round (or
    no more after its last release) keeps its epsilon, as its line stays flat. IEEE + and / only."""
    values = sorted(v for c in curves for v in [_at(c.points, round_)] * len(c.lenders))
    half = len(values) // 2
    middle = values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2
    return values[0], middle, values[-1]


def _at(points: Points, round_: int) -> float:
    return next((e for r, e in reversed(points) if r <= round_), 0.0)


# ---- input ---------------------------------------------------------------------------------------------


def _check_value(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return value + 0.0  # -0.0 would be written "-0"


def _check_points(label: str, points: list[tuple[int, float]], rounds: int) -> Points:
    checked = sorted((int(r), _check_value(e, f"epsilon of lender {label}")) for r, e in points)
    for (r, _), (following, _) in itertools.pairwise(checked):
        if r == following:
            raise ValueError(f"lender {label}: round {r} given twice")
    if checked and not (checked[0][0] >= 0 and checked[-1][0] <= rounds):
        raise ValueError(f"lender {label}: rounds must lie in 0..{rounds}, got {checked[0][0]}..{checked[-1][0]}")
    return checked


def _group_identical(series: list[tuple[str, Points]]) -> list[_Curve]:
    """One curve per distinct sequence of points, in order of first appearance.

    Points are compared as written in the hover text (6 significant digits): two lenders that differ only past
    that draw the same pixels and read the same, so showing them as one line loses nothing.
    """
    curves: list[_Curve] = []
    by_key: dict[tuple[tuple[int, str], ...], _Curve] = {}  # only looked up, never iterated
    for label, points in series:
        key = tuple((r, _value(e)) for r, e in points)
        if key in by_key:
            by_key[key].lenders.append(label)
        else:
            by_key[key] = _Curve(points, [label])
            curves.append(by_key[key])
    return curves


# ---- scale ---------------------------------------------------------------------------------------------


def _nice_scale(peak: float) -> tuple[Decimal, int]:
    """The smallest step of 1, 2, 2.5 or 5 x 10^k whose 3-5 intervals from 0 reach 5% above `peak`."""
    target = Decimal(peak) * Decimal("1.05")
    exponent = target.adjusted() - 1  # a step below a tenth of the target gives > 5 intervals: start there
    while True:
        for mantissa in ("1", "2", "2.5", "5"):
            step = Decimal(mantissa).scaleb(exponent)
            intervals = int((target / step).to_integral_value(rounding=ROUND_CEILING))
            if intervals <= 5:
                return step, max(intervals, 1)
        exponent += 1


def _x_step(rounds: int) -> int:
    """The first of 1, 2, 5, 10, 20, 25, 50, 100, ... that leaves at most 12 tick intervals."""
    steps = [1, 2, 5]
    while rounds > 12 * steps[-1]:
        ten = 2 * steps[-1]  # 5 x 10^k -> 10^(k+1)
        steps = [ten, 2 * ten, 25 * ten // 10, 5 * ten]
    return next(step for step in steps if rounds <= 12 * step)


# ---- drawing -------------------------------------------------------------------------------------------


def _axes(ticks: list[tuple[float, str]], rounds: int, frame: _Frame) -> str:
    left, right = _c(frame.left), _c(PLOT_RIGHT)
    out = ['<g class="axes">']
    for index, (value, label) in enumerate(ticks):
        y = frame.y(value)
        out.append(
            f'<line class="ygrid" x1="{left}" y1="{_c(y)}" x2="{right}" y2="{_c(y)}" '
            f'stroke="{INK if index == 0 else GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text class="ytick" x="{_c(frame.left - 6)}" y="{_c(y + 4)}" text-anchor="end" '
            f'fill="{INK}">{label}</text>'
        )
    for r in range(0, frame.x_span + 1, _x_step(rounds)):
        x = _c(frame.x(r))
        out.append(f'<line x1="{x}" y1="{PLOT_BOTTOM}" x2="{x}" y2="{PLOT_BOTTOM + 4}" stroke="{INK}"/>')
        out.append(f'<text class="xtick" x="{x}" y="{PLOT_BOTTOM + 17}" text-anchor="middle" fill="{INK}">{r}</text>')
    out.append(f'<line x1="{left}" y1="{PLOT_TOP}" x2="{left}" y2="{PLOT_BOTTOM}" stroke="{INK}"/>')
    out.append(
        f'<text x="{_c((frame.left + PLOT_RIGHT) / 2)}" y="{PLOT_BOTTOM + 36}" text-anchor="middle" '
        f'fill="{INK}">round</text>'
    )
    middle = _c((PLOT_TOP + PLOT_BOTTOM) / 2)
    out.append(
        f'<text x="18" y="{middle}" text-anchor="middle" transform="rotate(-90 18 {middle})" '
        f'fill="{INK}">epsilon spent</text>'
    )
    out.append("</g>")
    return "\n".join(out)


def _budget_lines(budgets: list[float], frame: _Frame) -> str:
    if not budgets:
        return ""
    out = ['<g class="budgets">']
    for budget in budgets:
        y = _c(frame.y(budget))
        out.append(
            f'<line class="budget" x1="{_c(frame.left)}" y1="{y}" x2="{_c(PLOT_RIGHT)}" y2="{y}" '
            f'stroke="{BUDGET_COLOUR}" stroke-width="1.2" stroke-dasharray="{BUDGET_DASH}">'
            f"<title>budget {_value(budget)}</title></line>"
        )
    for budget, label_y in _budget_label_places(budgets, frame):
        out.append(
            f'<text class="budget-label" x="{_c(PLOT_RIGHT + 6)}" y="{_c(label_y)}" fill="{INK}">'
            f"budget {_value(budget)}</text>"
        )
    out.append("</g>")
    return "\n".join(out)


def _budget_label_places(budgets: list[float], frame: _Frame) -> list[tuple[float, float]]:
    """(budget, text baseline) for the labels that fit 12 px apart, each at most 6 px off its line.

    Budgets are ascending, so labels are placed bottom-up; a label that would need a bigger nudge is left out
    (its line keeps its hover title), except the highest budget's, which replaces the ones it would touch.
    """
    placed: list[tuple[float, float]] = []
    for index, budget in enumerate(budgets):
        wanted = frame.y(budget) + 4
        if index == len(budgets) - 1:
            while placed and placed[-1][1] - 12 < wanted - 6:
                placed.pop()
        baseline = min(wanted, placed[-1][1] - 12) if placed else wanted
        if wanted - baseline <= 6:
            placed.append((budget, baseline))
    return placed


def _style(index: int) -> _Style:
    """Distinct for the first 21 indices: colour cycles fastest, then dash and marker change together."""
    turn = index // len(PALETTE)
    return _Style(PALETTE[index % len(PALETTE)], DASHES[turn % len(DASHES)], MARKERS[turn % len(MARKERS)])


def _vertices(points: Points) -> list[tuple[int, float]]:
    """From (0, 0) through every point; across a missing round the line stays flat (nothing was spent)."""
    vertices = [] if points[0][0] == 0 else [(0, 0.0)]
    previous = (0, 0.0)
    for r, e in points:
        if vertices and r > previous[0] + 1:
            vertices.append((r - 1, previous[1]))
        vertices.append((r, e))
        previous = (r, e)
    return vertices


def _line(
    curve: _Curve, style: _Style, frame: _Frame, *, marked: bool, tip: str | None = None, cls: str = "series"
) -> str:
    """The curve's polyline, titled with its lenders and values (or `tip`), and a titled marker per point if
    `marked`."""
    who = _who(curve.lenders)
    if tip is None:
        tip = f"{who}: epsilon " + ", ".join(f"round {r}: {_value(e)}" for r, e in curve.points)
    coordinates = " ".join(f"{_c(frame.x(r))},{_c(frame.y(e))}" for r, e in _vertices(curve.points))
    dash = f' stroke-dasharray="{style.dash}"' if style.dash else ""
    out = [
        f'<g class="{cls}">',
        f'<polyline points="{coordinates}" fill="none" stroke="{style.colour}" stroke-width="{style.width}"'
        f'{dash} stroke-linejoin="round"><title>{_esc(tip)}</title></polyline>',
    ]
    if marked and style.marker and len(curve.points) <= MAX_MARKED_POINTS:
        short = _who(curve.lenders, LEGEND_WIDE_CHARS)
        for r, e in curve.points:
            point_tip = f"<title>{_esc(short)}, round {r}: epsilon {_value(e)}</title>"
            out.append(_marker(style, frame.x(r), frame.y(e), point_tip))
    out.append("</g>")
    return "\n".join(out)


def _marker(style: _Style, x: float, y: float, inner: str = "") -> str:
    paint = f'fill="{style.colour}" stroke="#FFFFFF" stroke-width="0.8"'
    if style.marker == "square":
        return f'<rect x="{_c(x - 3)}" y="{_c(y - 3)}" width="6" height="6" {paint}>{inner}</rect>'
    if style.marker == "triangle":
        corners = f"{_c(x)},{_c(y - 4)} {_c(x + 3.6)},{_c(y + 2.6)} {_c(x - 3.6)},{_c(y + 2.6)}"
        return f'<polygon points="{corners}" {paint}>{inner}</polygon>'
    return f'<circle cx="{_c(x)}" cy="{_c(y)}" r="3.2" {paint}>{inner}</circle>'


def _legend(entries: list[LegendEntry], top: int) -> tuple[str, int]:
    """Entries in two columns when every text fits half the width, else one column; returns (svg, height)."""
    if not entries:
        return "", 0
    columns = 2 if all(len(text) <= LEGEND_COLUMN_CHARS for _, text, _ in entries) else 1
    margin = PLOT_LEFT // 2
    column_width = (WIDTH - 2 * margin) // columns
    out = ['<g class="legend">']
    for index, (style, text, full) in enumerate(entries):
        x = margin + (index % columns) * column_width
        y = top + (index // columns) * LEGEND_ROW
        out.append(f'<g class="legend-entry"><title>{_esc(full)}</title>')
        if style is not None and style.marker == "band":
            out.append(
                f'<rect x="{x}" y="{y - 5}" width="30" height="10" fill="{style.colour}" fill-opacity="0.35" '
                f'stroke="{style.colour}" stroke-width="0.8"/>'
            )
        elif style is not None:
            dash = f' stroke-dasharray="{style.dash}"' if style.dash else ""
            out.append(
                f'<line x1="{x}" y1="{y}" x2="{x + 30}" y2="{y}" stroke="{style.colour}" '
                f'stroke-width="{style.width}"{dash}/>'
            )
            if style.marker:
                out.append(_marker(style, x + 15, y))
        out.append(f'<text x="{x + 38}" y="{y + 4}" fill="{INK}">{_esc(text)}</text>')
        out.append("</g>")
    out.append("</g>")
    rows = -(-len(entries) // columns)
    return "\n".join(out), rows * LEGEND_ROW + 6


# ---- words ---------------------------------------------------------------------------------------------


def _summary(lenders: int, rounds: int, curves: list[_Curve], silent: list[str], budgets: list[float]) -> list[str]:
    """The chart in sentences, first the one-line gist (also the aria-label), for readers who cannot see it."""
    head = f"{_count(lenders, 'lender')}, {_count(rounds, 'round')}"
    if not curves:
        return [f"{head}; no privacy releases."]
    highest = max(e for c in curves for _, e in c.points)
    over = " (above every budget)" if budgets and highest > budgets[-1] else ""
    sentences = [f"{head}; highest epsilon {_short(highest)} against {_budgets_text(budgets)}{over}."]
    if len(curves) > MAX_STYLED_CURVES:
        sentences.append(
            f"{len(curves)} distinct curves, too many to tell apart: drawn as the range over lenders (lowest to "
            f"highest at each round), the median lender and the lender with the highest final epsilon."
        )
    else:
        sentences.extend(
            f"{_capital(_who(c.lenders, LEGEND_WIDE_CHARS))} spent identically, drawn as one line."
            for c in curves
            if len(c.lenders) > 1
        )
    if silent:
        sentences.append(f"{_capital(_who(silent, LEGEND_WIDE_CHARS))}: no privacy releases.")
    return sentences


def _budgets_text(budgets: list[float]) -> str:
    if not budgets:
        return "no budget set"
    if len(budgets) == 1:
        return f"budget {_value(budgets[0])}"
    if len(budgets) <= 4:
        return "budgets " + ", ".join(_value(b) for b in budgets)
    return f"{len(budgets)} budgets from {_value(budgets[0])} to {_value(budgets[-1])}"


def lender_names(lenders: list[str], limit: int | None = None) -> str:
    """'lender 3', or 'lenders 0, 2, 5-9', cut to `limit` characters: how the report names groups of lenders too."""
    return _who(lenders, limit)


def _who(lenders: list[str], limit: int | None = None, *, identical: bool = False) -> str:
    """'lender 3', or 'lenders 0, 2, 5-9' (consecutive integer names as ranges), cut to `limit` characters."""
    if len(lenders) == 1:
        return f"lender {lenders[0]}"
    parts = [
        run[0] if len(run) == 1 else f"{run[0]}, {run[1]}" if len(run) == 2 else f"{run[0]}-{run[-1]}"
        for run in _runs(lenders)
    ]
    suffix = " (identical)" if identical else ""
    text = "lenders " + ", ".join(parts) + suffix
    if limit is None or len(text) <= limit:
        return text
    tail = f", ... ({len(lenders)} in all){suffix}"
    kept: list[str] = []
    for part in parts:
        if len("lenders " + ", ".join([*kept, part]) + tail) > limit:
            break
        kept.append(part)
    return "lenders " + ", ".join(kept) + tail


def _runs(labels: list[str]) -> list[list[str]]:
    """Labels in order, split where a label is not the integer after the one before it."""
    runs: list[list[str]] = []
    for label in labels:
        if runs and _integer(label) and _integer(runs[-1][-1]) and int(label) == int(runs[-1][-1]) + 1:
            runs[-1].append(label)
        else:
            runs.append([label])
    return runs


def _integer(label: str) -> bool:
    return re.fullmatch(r"[0-9]+", label) is not None


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _value(x: float) -> str:
    """Hover and label precision: 6 significant digits (0.0001, 2.99, 1.23457)."""
    return f"{x:.6g}"


def _short(x: float) -> str:
    """Sentence precision: 3 significant digits, as a reader compares it with a budget."""
    return f"{x:.3g}"


def _c(coordinate: float) -> str:
    """A coordinate with 2 decimals: a hundredth of a pixel is finer than any screen shows."""
    return f"{coordinate:.2f}"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
