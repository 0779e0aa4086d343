"""report.html: one self-contained file (inline CSS, inline SVG, no scripts, no external fetches), so it
renders the same in the KFP UI's HTML viewer, in a browser and as a mailed attachment."""

from __future__ import annotations

import html
import re
from typing import Any

from components.evaluate.config import SYSTEMS

# (metric suffix, label, format): the rows of the metrics table, in reading order.
ROWS = [
    ("exact_match", "Exact match with the teacher", "pct"),
    ("accuracy", "Accuracy (reference or checker)", "pct"),
    ("rouge1", "ROUGE-1 F1", "frac"),
    ("rouge2", "ROUGE-2 F1", "frac"),
    ("rouge_l", "ROUGE-L F1", "frac"),
    ("bleu", "BLEU (0–1)", "frac"),
    ("chrf", "chrF (0–1)", "frac"),
    ("perplexity", "Perplexity on the teacher's answers", "num"),
    ("avg_output_chars", "Average answer length (characters)", "num"),
    ("avg_output_tokens", "Average generated tokens", "num"),
    ("tokens_per_s", "Generation speed (tokens/s)", "num"),
    ("params", "Parameters", "count"),
    ("size_bytes", "Weights on disk", "bytes"),
]
# The same text metrics against the dataset's gold answers, for all three systems.
REFERENCE_ROWS = [
    ("ref_exact_match", "Exact match with the reference", "pct"),
    ("ref_rouge1", "ROUGE-1 F1", "frac"),
    ("ref_rouge2", "ROUGE-2 F1", "frac"),
    ("ref_rouge_l", "ROUGE-L F1", "frac"),
    ("ref_bleu", "BLEU (0–1)", "frac"),
    ("ref_chrf", "chrF (0–1)", "frac"),
]
LOWER_IS_BETTER = {"perplexity"}
# Rows that describe rather than judge (length, speed on a shared machine, size): never highlighted.
NEUTRAL = {"avg_output_chars", "avg_output_tokens", "tokens_per_s", "params", "size_bytes"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",sans-serif;
 color:#0f172a;background:#f8fafc;margin:0;padding:24px 32px;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.sub{color:#475569;margin:0 0 16px}.gate{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.pass{background:#dcfce7;color:#166534}.fail{background:#fee2e2;color:#991b1b}.off{background:#e2e8f0;color:#334155}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0001;width:100%}
th,td{border:1px solid #e2e8f0;padding:6px 10px;text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{background:#ecfdf5;font-weight:600}.samples td{font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:12.5px;white-space:pre-wrap;word-break:break-word}.ok{color:#15803d}.bad{color:#b91c1c}
svg text{font:11px system-ui,sans-serif;fill:#334155}.note{color:#64748b}.note.diverged{color:#b91c1c}
"""


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "frac":
        return f"{value:.3f}"
    if kind == "count":
        return f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.2f} M"
    if kind == "bytes":
        return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.2f} MiB"
    return f"{value:.4g}"


def metrics_table(metrics: dict[str, float], rows: list[tuple[str, str, str]] = ROWS) -> str:
    head = "".join(f"<th>{s}</th>" for s in ("Metric", "Untrained student", "Distilled student", "Teacher"))
    lines = [f"<table class='metrics'><tr>{head}</tr>"]
    for suffix, label, kind in rows:
        values = {s: metrics.get(f"{s}_{suffix}") for s in SYSTEMS}
        if all(v is None for v in values.values()):
            continue
        before, after = values["untrained"], values["distilled"]
        better = None
        if before is not None and after is not None and before != after and suffix not in NEUTRAL:
            better = "distilled" if (after < before) == (suffix in LOWER_IS_BETTER) else "untrained"
        cells = "".join(
            f"<td class='n{' best' if s == better else ''}'>{fmt(values[s], kind)}</td>" for s in SYSTEMS
        )
        lines.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def reference_section(metrics: dict[str, float]) -> str:
    """The table against the dataset's reference answers, when the test records have any."""
    if "num_reference_samples" not in metrics:
        return ""
    return (
        f"<h2>Against the reference answers</h2><p class='note'>All three systems, the teacher included, "
        f"scored against the dataset's gold answers on the {metrics['num_reference_samples']:.0f} test "
        f"records that have one.</p>\n{metrics_table(metrics, REFERENCE_ROWS)}"
    )


def teacher_comparison(metrics: dict[str, float]) -> str:
    """One sentence on speed and size against a local teacher, when they were measured."""
    parts = []
    student, teacher = metrics.get("distilled_tokens_per_s"), metrics.get("teacher_tokens_per_s")
    if student and teacher:
        parts.append(f"generates {ratio(student / teacher)} as many tokens per second")
    student, teacher = metrics.get("distilled_size_bytes"), metrics.get("teacher_size_bytes")
    if student and teacher:
        parts.append(f"is {ratio(teacher / student)} smaller on disk")
    if not parts:
        return ""
    return f"<p>Against the teacher, the distilled student {' and '.join(parts)} (same machine, same batch size).</p>"


def ratio(value: float) -> str:
    return f"{value:,.0f}×" if value >= 100 else f"{value:.2g}×"


def gate_banner(gate: dict[str, Any]) -> str:
    if gate.get("min_score") is None:
        return "<div class='gate off'>Gate off: no min_score set.</div>"
    text = html.escape(gate["message"])
    return f"<div class='gate {'pass' if gate['passed'] else 'fail'}'>{text}</div>"


def benchmark_section(rows: list[dict[str, Any]], forgetting: dict[str, Any]) -> str:
    """The lm-eval table (scores in points, 100 × lm-eval's 0-1 score) and the forgetting gate's verdict;
    nothing when no benchmark ran."""
    if not rows:
        return ""
    state = {True: "pass", False: "fail", None: "off"}[forgetting["passed"]]
    head = "".join(
        f"<th>{c}</th>"
        for c in ("Task", "Metric", "Shots", "Documents", "Untrained", "Distilled", "Teacher", "Change")
    )
    lines = [f"<table class='benchmarks'><tr>{head}</tr>"]
    for row in rows:
        change = row["change_points"]
        worse = change is not None and (change < 0) == row["higher_is_better"] and change != 0
        cells = [
            untrusted(row["task"]),
            untrusted(row["metric"]),
            "—" if row["num_fewshot"] is None else str(row["num_fewshot"]),
            "—" if row["samples"] is None else str(row["samples"]),
        ]
        numbers = [fmt(None if row.get(s) is None else 100 * row[s], "num") for s in SYSTEMS]
        numbers.append(
            "—" if change is None else f"<span class='{'bad' if worse else 'ok'}'>{change:+.1f}</span>"
        )
        lines.append(
            "<tr>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "".join(f"<td class='n'>{n}</td>" for n in numbers)
            + "</tr>"
        )
    lines.append("</table>")
    return (
        "<h2>Benchmarks</h2><p class='note'>EleutherAI lm-evaluation-harness on each model, in points "
        "(100 × the 0-1 score); change = distilled − untrained.</p>\n"
        f"<div class='gate {state}'>{html.escape(forgetting['message'])}</div>\n" + "\n".join(lines)
    )


# Characters that change the direction of the text after them (embeddings, overrides, isolates, marks).
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def untrusted(text: str) -> str:
    """Escaped text from a reply or a dataset, in an isolate of its own (<bdi>), its bidi control
    characters shown as their code points: a reply cannot reorder the text around it, nor hide its
    own order from the reader."""
    return f"<bdi>{shown_controls(html.escape(text))}</bdi>"


def shown_controls(text: str) -> str:
    """`text` with each bidi control character written as its code point, e.g. [U+202E]."""
    return BIDI_CONTROLS.sub(lambda found: f"[U+{ord(found.group()):04X}]", text)


def cell(text: str, limit: int = 600) -> str:
    """One sample cell's text (untrusted), cut at `limit` characters (eval.json keeps it whole)."""
    if len(text) > limit:
        return untrusted(text[:limit]) + f"<span class='note'>… ({len(text) - limit} more characters)</span>"
    return untrusted(text)


def samples_table(samples: list[dict[str, Any]]) -> str:
    has_reference = any(s.get("reference") is not None for s in samples)
    has_judge = any(s.get("judge") for s in samples)
    columns = (
        ["Prompt"] + (["Reference"] if has_reference else []) + ["Teacher", "Student before", "Student after"]
    )
    columns += ["Judge"] if has_judge else []
    lines = ["<table class='samples'><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for sample in samples:
        cells = [cell(sample["prompt"])]
        if has_reference:
            cells.append(cell(sample.get("reference") or ""))
        cells.append(cell(sample["teacher"]))
        for system in ("untrained", "distilled"):
            mark = (
                "<span class='ok'>✓</span> " if sample[f"{system}_match"] else "<span class='bad'>✗</span> "
            )
            answer = cell(sample[system]) if sample[system] else "<span class='note'>(empty)</span>"
            cells.append(mark + answer)
        if has_judge:
            cells.append(cell(sample.get("judge") or ""))
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def shorten(text: str, limit: int = 48) -> str:
    """Long paths (KFP artifact paths run to 100+ characters) as their last two parts; the full text stays
    in the element's title (shown on hover)."""
    if len(text) <= limit or "/" not in text:
        return text
    return "…/" + "/".join(text.rstrip("/").split("/")[-2:])


def render_report(
    *,
    title: str,
    facts: dict[str, str],
    metrics: dict[str, float],
    gate: dict[str, Any],
    curve_svg: str,
    benchmarks: list[dict[str, Any]] | None = None,
    forgetting: dict[str, Any] | None = None,
    curve_note: str = "",
    samples: list[dict[str, Any]],
    total_samples: int,
) -> str:
    """The whole report as one HTML string."""
    fact_line = " · ".join(
        f"{html.escape(k)}: <b title='{shown_controls(html.escape(v, quote=True))}'>{untrusted(shorten(v))}</b>"
        for k, v in facts.items()
    )
    versus = teacher_comparison(metrics)
    judge = ""
    if "judge_win_rate" in metrics:
        judge = (
            f"<p>LLM judge, distilled student vs teacher: win rate {metrics['judge_win_rate']:.1%} "
            f"(ties count half; 50% = as good as the teacher), ties {metrics.get('judge_tie_rate', 0):.1%}, "
            f"{metrics.get('judge_samples', 0):.0f} samples judged.</p>"
        )
    if curve_svg:  # the note then says where training diverged, if it did
        curve = curve_svg + (
            f"\n<p class='note diverged'>{html.escape(curve_note)}.</p>" if curve_note else ""
        )
    else:
        curve = f"<p class='note'>No training loss curve: {html.escape(curve_note or 'no events')}.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="sub">{fact_line}</p>
{gate_banner(gate)}
<h2>Metrics</h2>
<p class="note">Students are scored against the teacher's answers on {total_samples} test prompts; the better
student per row is highlighted. ROUGE-2 counts word pairs, so one-word answers score 0 on it.</p>
{metrics_table(metrics)}
{versus}
{judge}
{reference_section(metrics)}
{benchmark_section(benchmarks or [], forgetting or {"passed": None, "message": ""})}
<h2>Training loss</h2>
{curve}
<h2>Samples ({len(samples)} of {total_samples})</h2>
<p class="note">✓ marks an answer identical to the teacher's (surrounding whitespace ignored).</p>
{samples_table(samples)}
</body></html>
"""
