"""The privacy report's epsilon chart: same bytes for the same input, valid self-contained SVG, readable."""

import itertools
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from federation.audit_trail.svg_chart import PLOT_BOTTOM, PLOT_RIGHT, PLOT_TOP, epsilon_chart

NS = {"svg": "http://www.w3.org/2000/svg"}
ROOT = Path(__file__).resolve().parents[1]


def cumulative(step: float, rounds: int) -> list[tuple[int, float]]:
    return [(r, step * r) for r in range(1, rounds + 1)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def polylines(root: ET.Element) -> list[ET.Element]:
    return root.findall(".//svg:polyline", NS)


def texts(root: ET.Element, cls: str) -> list[ET.Element]:
    return [t for t in root.iter(f"{{{NS['svg']}}}text") if t.get("class") == cls]


def legend_texts(root: ET.Element) -> list[str]:
    legend = root.find(".//svg:g[@class='legend']", NS)
    return [t.text for t in legend.iter(f"{{{NS['svg']}}}text")] if legend is not None else []


def vertices(line: ET.Element) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in pair.split(",")) for pair in line.get("points").split()]


# Ten lenders, five rounds: 0, 2 and 5-9 share one curve, lender 3 declined round 3 (same epsilon again).
TEN = [
    (str(i), cumulative(0.598, 5))
    if i in (0, 2, 5, 6, 7, 8, 9)
    else (str(i), [(1, 0.4), (2, 0.8), (3, 0.8), (4, 1.2), (5, 1.6)])
    if i == 3
    else (str(i), cumulative(0.2 + 0.05 * i, 5))
    for i in range(10)
]


def test_the_same_input_gives_the_same_string():
    assert epsilon_chart(TEN, [3.0], rounds=5) == epsilon_chart(TEN, [3.0], rounds=5)


def test_the_bytes_do_not_depend_on_hash_seed_or_process():
    # a set or dict iterated in hash order would show up as a difference between two seeds
    script = (
        "import sys; from federation.audit_trail.svg_chart import epsilon_chart; "
        "s = [(str(i), [(r, 0.1 * (i % 7) * r) for r in range(1, 6)]) for i in range(40)]; "
        "sys.stdout.write(epsilon_chart(s, [3.0, 1.5, 3.0, 2.5], rounds=5))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        outputs.append(
            subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
        )
    assert outputs[0] == outputs[1]
    assert outputs[0] == epsilon_chart(
        [(str(i), [(r, 0.1 * (i % 7) * r) for r in range(1, 6)]) for i in range(40)], [3.0, 1.5, 3.0, 2.5], rounds=5
    )


def test_small_chart_has_its_lines_ticks_from_zero_and_the_budget_at_its_scale():
    svg = epsilon_chart([("0", [(1, 1.0), (2, 2.0)]), ("1", [(1, 0.5), (2, 2.99)])], [3.0], rounds=2)
    root = parse(svg)
    assert len(polylines(root)) == 2
    y_ticks = [(t.text, float(t.get("y")) - 4) for t in texts(root, "ytick")]  # labels sit 4 px below their line
    assert [label for label, _ in y_ticks] == ["0", "1", "2", "3", "4"]  # 0 to a little above the budget 3
    assert y_ticks[0][1] == PLOT_BOTTOM and y_ticks[-1][1] == PLOT_TOP
    budget = root.find(".//svg:line[@class='budget']", NS)
    three_of_four = PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * 3 / 4
    assert float(budget.get("y1")) == float(budget.get("y2")) == pytest.approx(three_of_four)
    assert float(budget.get("y1")) == dict(y_ticks)["3"]
    assert [t.text for t in texts(root, "budget-label")] == ["budget 3"]
    assert float(texts(root, "budget-label")[0].get("x")) > PLOT_RIGHT  # labelled at the right
    assert [t.text for t in texts(root, "xtick")] == ["0", "1", "2"]
    # the line of lender 1 starts at (round 0, epsilon 0) and its last point lies at 2.99 on the same scale
    first, *_, last = vertices(polylines(root)[1])
    assert first[1] == PLOT_BOTTOM
    assert last[1] == pytest.approx(PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * 2.99 / 4, abs=0.01)
    assert "<path" not in svg


def test_output_is_xml_with_no_script_and_no_outside_reference():
    svg = epsilon_chart(TEN, [3.0], rounds=5)
    root = parse(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert not svg.startswith("<?xml")
    assert "<script" not in svg.lower() and "href" not in svg and "@font-face" not in svg and "url(" not in svg
    assert svg.count("http") == 1 and 'xmlns="http://www.w3.org/2000/svg"' in svg
    assert root.get("role") == "img" and root.get("viewBox") == f"0 0 720 {root.get('height')}"
    assert "10 lenders, 5 rounds; highest epsilon 2.99 against budget 3" in root.get("aria-label")
    assert root.find("svg:title", NS).text == "Privacy spent per lender (cumulative epsilon)"
    assert root.find("svg:desc", NS).text.startswith("10 lenders, 5 rounds; highest epsilon 2.99 against budget 3.")


def test_every_line_and_point_has_a_title_with_its_values():
    root = parse(epsilon_chart([("0", [(1, 0.25), (2, 0.5)])], [1.0], rounds=2))
    (line,) = polylines(root)
    assert line.find("svg:title", NS).text == "lender 0: epsilon round 1: 0.25, round 2: 0.5"
    points = root.findall(".//svg:g[@class='series']/svg:circle", NS)
    assert [p.find("svg:title", NS).text for p in points] == [
        "lender 0, round 1: epsilon 0.25",
        "lender 0, round 2: epsilon 0.5",
    ]


def test_labels_and_title_are_escaped():
    svg = epsilon_chart([('<b>&co"', [(1, 0.5)])], [1.0], rounds=1, title="A & <B>")
    assert "<b>" not in svg and "<B>" not in svg and "&co" not in svg.replace("&amp;co", "")
    root = parse(svg)
    assert root.find("svg:title", NS).text == "A & <B>"
    assert 'lender <b>&co"' in legend_texts(root)


def test_identical_curves_are_one_line_and_the_legend_names_their_lenders():
    root = parse(epsilon_chart(TEN, [3.0], rounds=5))
    assert len(polylines(root)) == 4  # lenders 0, 2, 5-9 as one; 1, 3 and 4 on their own
    assert legend_texts(root) == ["lenders 0, 2, 5-9 (identical)", "lender 1", "lender 3", "lender 4", "budget"]
    assert "Lenders 0, 2, 5-9 spent identically, drawn as one line." in root.find("svg:desc", NS).text
    grouped = polylines(root)[0].find("svg:title", NS).text
    assert grouped.startswith("lenders 0, 2, 5-9: epsilon round 1: 0.598")


def test_a_declined_or_missing_round_is_drawn_flat():
    root = parse(epsilon_chart([("0", [(1, 1.0), (3, 2.0)]), ("1", [(2, 1.0)])], [], rounds=3))
    gap, late = (vertices(line) for line in polylines(root))
    assert gap[1][1] == gap[2][1] and gap[2][0] < gap[3][0]  # flat from round 1 to 2, spent in round 3
    assert late[0][1] == late[1][1] == PLOT_BOTTOM  # nothing spent before round 2


def test_six_distinct_curves_get_six_distinguishable_styles():
    root = parse(epsilon_chart([(str(i), cumulative(0.1 + 0.05 * i, 8)) for i in range(6)], [3.0], rounds=8))
    styles = {(line.get("stroke"), line.get("stroke-dasharray")) for line in polylines(root)}
    assert len(polylines(root)) == 6 and len(styles) == 6
    assert len({line.get("stroke") for line in polylines(root)}) == 6
    assert "#F0E442" not in {s for s, _ in styles}  # Okabe-Ito yellow is unreadable as a line on white
    assert root.find(".//svg:polygon[@class='band']", NS) is None


def band_edges(root: ET.Element) -> tuple[dict[float, float], dict[float, float]]:
    """The band polygon's upper and lower edge as {x: y}: it runs left to right along the top, then back."""
    corners = [
        tuple(float(v) for v in pair.split(","))
        for pair in root.find(".//svg:polygon[@class='band']", NS).get("points").split()
    ]
    half = len(corners) // 2
    return dict(corners[:half]), dict(corners[half:])


def y_of(epsilon: float, top: float) -> float:
    return round(PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * epsilon / top, 2)


def test_ten_lenders_near_one_budget_are_a_band_the_median_and_the_highest():
    # ten lenders calibrated to budget 3: the curves end on top of each other, so lines would hide each other
    finals = [2.91 + 0.01 * i for i in range(10)]
    series = [(str(i), [(r, finals[i] * r / 4) for r in range(1, 5)]) for i in range(10)]
    root = parse(epsilon_chart(series, [3.0], rounds=4))
    assert texts(root, "ytick")[0].text == "0"
    top = float(texts(root, "ytick")[-1].text)
    upper, lower = band_edges(root)
    assert sorted(upper.values()) == sorted(y_of(finals[-1] * r / 4, top) for r in range(5))  # the highest lender
    assert sorted(lower.values()) == sorted(y_of(finals[0] * r / 4, top) for r in range(5))  # the lowest
    median = root.find(".//svg:g[@class='median']/svg:polyline", NS)
    middle = (finals[4] + finals[5]) / 2
    assert [y for _, y in vertices(median)] == [y_of(middle * r / 4, top) for r in range(5)]
    assert legend_texts(root) == [
        "range over the 10 lenders (lowest to highest)",
        "median lender",
        "highest: lender 9",
        "budget",
    ]
    assert len(polylines(root)) == 2  # the median and the highest lender, not ten lines
    assert "drawn as the range over lenders" in root.find("svg:desc", NS).text


def test_the_median_counts_lenders_not_curves_and_a_band_ends_where_the_run_stopped():
    # seven lenders share one curve, seven others each have their own: the median is the shared curve
    shared = [(str(i), cumulative(1.0, 3)) for i in range(7)]
    others = [(str(7 + i), cumulative(0.2 + 0.3 * i, 3)) for i in range(7)]
    root = parse(epsilon_chart([*shared, *others], [3.0], rounds=5))  # stopped after round 3 of 5
    top = float(texts(root, "ytick")[-1].text)
    median = root.find(".//svg:g[@class='median']/svg:polyline", NS)
    assert [y for _, y in vertices(median)] == [y_of(1.0 * r, top) for r in range(4)]
    upper, _ = band_edges(root)
    assert max(upper) == pytest.approx(plot_left(root) + (PLOT_RIGHT - plot_left(root)) * 3 / 5, abs=0.01)


def plot_left(root: ET.Element) -> float:
    return float(root.find(".//svg:g[@class='axes']/svg:line[@class='ygrid']", NS).get("x1"))


def test_a_thousand_lenders_give_a_small_chart_with_a_bounded_legend_and_the_highest_named():
    series = [(str(i), cumulative(0.01 + 0.001 * ((i * 37) % 1000), 20)) for i in range(1000)]
    svg = epsilon_chart(series, [3.0], rounds=20)
    root = parse(svg)
    highest = max(range(1000), key=lambda i: (i * 37) % 1000)
    assert legend_texts(root) == [
        "range over the 1000 lenders (lowest to highest)",
        "median lender",
        f"highest: lender {highest}",
        "budget",
    ]
    assert len(polylines(root)) == 2
    assert "1000 distinct curves" in root.find("svg:desc", NS).text
    assert len(svg) < 20_000
    assert int(root.get("height")) < 480


def test_a_thousand_identical_lenders_are_one_line():
    root = parse(epsilon_chart([(str(i), cumulative(0.5, 4)) for i in range(1000)], [3.0], rounds=4))
    assert len(polylines(root)) == 1
    assert legend_texts(root)[0] == "lenders 0-999 (identical)"


def test_long_lender_lists_are_cut_in_the_legend_but_whole_in_the_hover():
    evens = [(str(i), cumulative(0.5, 2)) for i in range(0, 200, 2)]
    root = parse(epsilon_chart([*evens, ("1", cumulative(0.2, 2))], [3.0], rounds=2))
    shown = legend_texts(root)[0]
    assert len(shown) <= 96 and shown.startswith("lenders 0, 2, 4,") and "(100 in all)" in shown
    assert polylines(root)[0].find("svg:title", NS).text.startswith("lenders " + ", ".join(map(str, range(0, 200, 2))))


@pytest.mark.parametrize("series", [[], [("0", []), ("1", [])]])
def test_no_releases_gives_a_chart_that_says_so(series):
    svg = epsilon_chart(series, [3.0], rounds=5)
    root = parse(svg)
    assert polylines(root) == []
    assert "no privacy releases" in [t.text for t in root.iter(f"{{{NS['svg']}}}text")]
    assert "no privacy releases" in root.get("aria-label") and "no privacy releases" in root.find("svg:desc", NS).text
    assert next(t.text for t in texts(root, "ytick")) == "0"


def test_one_round_with_epsilon_exactly_at_the_budget_stays_below_the_top():
    root = parse(epsilon_chart([("0", [(1, 3.0)])], [3.0], rounds=1))
    budget_y = float(root.find(".//svg:line[@class='budget']", NS).get("y1"))
    assert PLOT_TOP < budget_y < PLOT_BOTTOM  # a little headroom above the budget
    assert vertices(polylines(root)[0])[-1][1] == budget_y
    assert [t.text for t in texts(root, "xtick")] == ["0", "1"]
    assert "highest epsilon 3 against budget 3." in root.get("aria-label")


def test_spending_past_every_budget_is_said_in_words():
    root = parse(epsilon_chart([("0", [(1, 3.5)])], [2.0, 3.0], rounds=1))
    assert "highest epsilon 3.5 against budgets 2, 3 (above every budget)." in root.get("aria-label")


def test_very_small_epsilons_get_their_own_scale():
    root = parse(epsilon_chart([("0", [(1, 1e-4), (2, 2e-4)])], [], rounds=2))
    labels = [t.text for t in texts(root, "ytick")]
    assert labels[0] == "0" and 4 <= len(labels) <= 6 and float(labels[-1]) > 2e-4
    top_point = vertices(polylines(root)[0])[-1]
    assert PLOT_TOP <= top_point[1] < (PLOT_TOP + PLOT_BOTTOM) / 2  # drawn high, not flattened on the axis
    assert "no budget set" in root.get("aria-label")


@pytest.mark.parametrize("peak", [0.7, 1.0, 2.99, 3.0, 12.3, 99.0, 1e-4])
def test_y_ticks_are_four_to_six_nice_steps_from_zero(peak):
    root = parse(epsilon_chart([("0", [(1, peak)])], [], rounds=1))
    values = [float(t.text) for t in texts(root, "ytick")]
    step = values[1]
    assert values[0] == 0 and 4 <= len(values) <= 6 and values[-1] > peak
    assert values == pytest.approx([step * i for i in range(len(values))])
    mantissa = float(f"{step:e}".split("e")[0])
    assert mantissa in (1.0, 2.0, 2.5, 5.0)


@pytest.mark.parametrize("rounds, step", [(12, 1), (13, 2), (100, 10), (300, 25), (1000, 100)])
def test_many_rounds_get_thinned_integer_ticks(rounds, step):
    root = parse(epsilon_chart([("0", cumulative(0.001, rounds))], [3.0], rounds=rounds))
    labels = [t.text for t in texts(root, "xtick")]
    assert labels == [str(r) for r in range(0, rounds + 1, step)] and len(labels) <= 13


def test_negative_zero_is_written_as_zero():
    assert "-0" not in epsilon_chart([("0", [(1, -0.0)])], [], rounds=1)


def test_the_legend_lies_below_the_data():
    root = parse(epsilon_chart(TEN, [3.0], rounds=5))
    for line in polylines(root):
        assert all(PLOT_TOP <= y <= PLOT_BOTTOM and x <= PLOT_RIGHT for x, y in vertices(line))
    legend = root.find(".//svg:g[@class='legend']", NS)
    assert min(float(t.get("y")) for t in legend.iter(f"{{{NS['svg']}}}text")) > PLOT_BOTTOM + 40  # below "round"
    assert max(float(t.get("y")) for t in legend.iter(f"{{{NS['svg']}}}text")) < float(root.get("height"))


def test_close_budgets_keep_readable_labels_and_the_highest_is_always_labelled():
    root = parse(epsilon_chart([("0", [(1, 0.5)])], [1.0, 1.01, 2.0, 3.0, 3.02], rounds=1))
    assert len(root.findall(".//svg:line[@class='budget']", NS)) == 5
    labels = texts(root, "budget-label")
    assert labels[-1].text == "budget 3.02" and "budget 1" in [t.text for t in labels]
    ys = sorted(float(t.get("y")) for t in labels)
    assert all(b - a >= 12 for a, b in itertools.pairwise(ys))


@pytest.mark.parametrize(
    "series, budgets, rounds",
    [
        ([("0", [(1, -0.1)])], [3.0], 2),
        ([("0", [(1, float("nan"))])], [3.0], 2),
        ([("0", [(3, 0.1)])], [3.0], 2),
        ([("0", [(1, 0.1), (1, 0.2)])], [3.0], 2),
        ([("0", [(1, 0.1)])], [float("inf")], 2),
    ],
)
def test_impossible_input_is_refused(series, budgets, rounds):
    with pytest.raises(ValueError):
        epsilon_chart(series, budgets, rounds=rounds)
