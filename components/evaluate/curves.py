"""Training curves for the report: scalars read from TensorBoard event files, drawn as inline SVG.

Every scalar tag containing "loss" is read (train/loss, eval/loss, kd/kl_loss, …), from event files in
the folder and its sub-folders (one sub-folder per run or per rank), or under an s3:// prefix.
"""

from __future__ import annotations

import html
import math
import tempfile
from pathlib import Path

from components.common.errors import InputError
from components.common.store import open_store

Curves = dict[str, list[tuple[int, float]]]
COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]


def read_loss_curves(tensorboard_dir: str) -> Curves:
    """{tag: [(step, value), …]} of the loss scalars; tags from sub-folders are prefixed with the folder."""
    if tensorboard_dir.startswith("s3://"):
        with tempfile.TemporaryDirectory() as local:
            open_store(tensorboard_dir).download_dir("", Path(local))
            return _read_local(Path(local))
    path = Path(tensorboard_dir)
    if not path.is_dir():
        raise InputError(
            f"tensorboard_dir: {path} is not a folder; give the train stage's TensorBoard output"
        )
    return _read_local(path)


def _read_local(root: Path) -> Curves:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: Curves = {}
    for folder in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        prefix = folder.relative_to(root).as_posix()
        for tag in events.Tags()["scalars"]:
            if "loss" in tag.lower():
                name = tag if prefix == "." else f"{prefix}/{tag}"
                curves[name] = sorted((e.step, e.value) for e in events.Scalars(tag))
    return curves


def nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round tick values (multiples of 1, 2 or 5 times a power of ten) inside [low, high], about `target`
    of them: for 10..800, step 200 -> 200, 400, 600, 800."""
    if high <= low:
        return [low]
    rough = (high - low) / (target - 1)
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    first = math.ceil(low / step) * step
    count = int(math.floor((high - first) / step + 1e-9)) + 1
    # round() drops float noise such as 0.30000000000000004 from the labels
    return [round(first + i * step, 12) for i in range(count)]


def divergence(curves: Curves) -> tuple[int, str, float] | None:
    """(step, tag, value) of the first infinite or NaN loss, the point where training diverged; None when
    every value is finite."""
    bad = [
        (step, tag, value)
        for tag, series in curves.items()
        for step, value in series
        if not math.isfinite(value)
    ]
    return min(bad, key=lambda point: point[0]) if bad else None


def divergence_note(curves: Curves) -> str:
    """One sentence for the report saying where training diverged, or "" when it did not."""
    found = divergence(curves)
    if found is None:
        return ""
    step, tag, value = found
    return (
        f"Training diverged at step {step}: {tag} was {value:g}; non-finite points are left out of the chart"
    )


def loss_svg(curves: Curves, width: int = 640, height: int = 280) -> str:
    """A line chart of the curves on shared axes: an <svg> element to inline in HTML.

    The axes span the finite values; a curve is drawn in pieces between its infinite or NaN points, and a
    dashed red line marks the step of the first of them, where training diverged."""
    steps = [s for series in curves.values() for s, _ in series]
    if not steps:
        return ""
    values = [v for series in curves.values() for _, v in series if math.isfinite(v)]
    diverged = divergence(curves)
    left, right, top, bottom = 56, 16, 16, 40  # margins leave room for tick labels
    x_min, x_max = min(steps), max(steps)
    y_min, y_max = (min(values), max(values)) if values else (0.0, 1.0)
    x_span, y_span = (x_max - x_min) or 1, (y_max - y_min) or 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(step: float) -> float:
        return left + (step - x_min) / x_span * plot_w

    def y(value: float) -> float:
        return top + (y_max - value) / y_span * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="training loss">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#cbd5e1"/>',
    ]
    for value in nice_ticks(y_min, y_max) if values else []:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#eef2f7"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
    for step in nice_ticks(x_min, x_max):
        parts.append(f'<text x="{x(step):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{step:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">step</text>')
    for i, (tag, series) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        for piece in _finite_pieces(series):
            if len(piece) == 1:
                (s, v), *_ = piece
                parts.append(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2" fill="{color}"/>')
            else:
                path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in piece)
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        legend_y = top + 14 + 16 * i
        parts.append(
            f'<rect x="{left + plot_w - 170}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>'
        )
        parts.append(f'<text x="{left + plot_w - 155}" y="{legend_y}">{html.escape(tag)}</text>')
    if diverged is not None:
        step, tag, value = diverged
        at = x(step)
        parts.append(
            f'<line class="diverged" x1="{at:.1f}" x2="{at:.1f}" y1="{top}" y2="{top + plot_h}" '
            'stroke="#dc2626" stroke-width="1.5" stroke-dasharray="4 3"/>'
        )
        anchor = "end" if at > left + plot_w / 2 else "start"
        offset = -4 if anchor == "end" else 4
        parts.append(
            f'<text x="{at + offset:.1f}" y="{top + plot_h - 6}" text-anchor="{anchor}" style="fill:#dc2626">'
            f"diverged at step {step} ({html.escape(tag)} = {value:g})</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _finite_pieces(series: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """The runs of consecutive finite points of a curve."""
    pieces: list[list[tuple[int, float]]] = [[]]
    for step, value in series:
        if math.isfinite(value):
            pieces[-1].append((step, value))
        elif pieces[-1]:
            pieces.append([])
    return [piece for piece in pieces if piece]
