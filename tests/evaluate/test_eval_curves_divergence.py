"""A diverged training run still gets its loss chart: finite points drawn, the divergence step marked."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree

from components.evaluate.curves import divergence, loss_svg
from components.evaluate.report import render_report
from components.evaluate.stage import loss_curves
from tests.evaluate.conftest import write_events

NAN, INF = float("nan"), float("inf")
SVG = "{http://www.w3.org/2000/svg}"


def marker(svg: str) -> tuple[float, str]:
    """(x of the dashed divergence line, its label) from the parsed SVG."""
    root = ElementTree.fromstring(svg)
    (line,) = [e for e in root.iter(f"{SVG}line") if e.get("class") == "diverged"]
    (label,) = [e.text for e in root.iter(f"{SVG}text") if (e.text or "").startswith("diverged")]
    return float(line.get("x1")), label


def test_an_infinite_loss_is_marked_where_it_happened_and_the_axes_span_the_finite_values(tmp_path):
    write_events(tmp_path, "train/loss", [3.0, 2.0, 2.5, INF, NAN])
    curves, note = loss_curves(str(tmp_path))
    assert divergence(curves) == (15, "train/loss", INF)
    svg = loss_svg(curves, width=400, height=200)
    # x: margins 56 left, 16 right -> step 0 at 56, step 20 at 384, so step 15 at 302
    assert marker(svg) == (302.0, "diverged at step 15 (train/loss = inf)")
    # y: 3.0 at the top (16), 2.0 at the bottom (160): the axis is not stretched to infinity
    assert 'points="56.0,16.0 138.0,160.0 220.0,88.0"' in svg
    assert (
        note
        == "Training diverged at step 15: train/loss was inf; non-finite points are left out of the chart"
    )
    page = render_report(
        title="r", facts={}, metrics={}, gate={}, curve_svg=svg, curve_note=note, samples=[], total_samples=0
    )
    assert svg in page and f"<p class='note diverged'>{note}.</p>" in page


def test_a_nan_first_point_is_the_divergence_and_the_rest_is_drawn():
    curves = {"kd/kl_loss": [(0, NAN), (5, 2.0), (10, 1.0)], "train/loss": [(0, 4.0), (10, 3.0)]}
    svg = loss_svg(curves, width=400, height=200)
    assert marker(svg) == (56.0, "diverged at step 0 (kd/kl_loss = nan)")
    assert svg.count("<polyline") == 2 and "nan" not in svg.split("diverged at step")[0]


def test_a_curve_with_no_finite_point_still_renders_with_the_marker():
    svg = loss_svg({"train/loss": [(0, NAN), (5, INF)]}, width=400, height=200)
    assert marker(svg) == (56.0, "diverged at step 0 (train/loss = nan)")
    assert "<polyline" not in svg


def test_a_finite_run_between_bad_points_is_drawn_in_pieces():
    svg = loss_svg({"loss": [(0, 2.0), (1, NAN), (2, 1.0), (3, 1.5), (4, INF), (5, 1.2)]})
    root = ElementTree.fromstring(svg)
    assert len(list(root.iter(f"{SVG}polyline"))) == 1  # steps 2-3
    assert len(list(root.iter(f"{SVG}circle"))) == 2  # steps 0 and 5 stand alone
    assert all(math.isfinite(float(c.get("cy"))) for c in root.iter(f"{SVG}circle"))
