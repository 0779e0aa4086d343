"""report.html renders in a real headless browser (Debian chromium): the DOM has the tables and the loss
chart, and the screenshot shows them. Skipped where chromium is not installed (apt-get install chromium)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from components.evaluate.curves import loss_svg
from components.evaluate.report import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium(args: list[str], profile) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=90
    )


def example_report() -> str:
    metrics = {
        "untrained_exact_match": 0.0,
        "distilled_exact_match": 0.875,
        "untrained_rouge_l": 0.02,
        "distilled_rouge_l": 0.91,
        "untrained_chrf": 0.05,
        "distilled_chrf": 0.93,
        "untrained_perplexity": 280.4,
        "distilled_perplexity": 1.3,
        "teacher_accuracy": 1.0,
        "distilled_accuracy": 0.875,
        "untrained_params": 329472.0,
        "distilled_params": 329472.0,
        "teacher_params": 7.6e9,
        "teacher_size_bytes": 15.2 * 2**30,
        "distilled_size_bytes": 1.3e6,
        "num_reference_samples": 1.0,
        "untrained_ref_exact_match": 0.0,
        "distilled_ref_exact_match": 1.0,
        "teacher_ref_exact_match": 1.0,
        "untrained_ref_chrf": 0.2,
        "distilled_ref_chrf": 1.0,
        "teacher_ref_chrf": 1.0,
        "judge_win_rate": 0.4375,
        "judge_tie_rate": 0.75,
        "judge_samples": 8.0,
    }
    curves = {"train/loss": [(s, 4.8 * 0.993**s + 0.1) for s in range(0, 801, 20)]}
    samples = [
        {
            "prompt": "Reverse the letters of: stone",
            "reference": None,
            "teacher": "enots",
            "untrained": "",
            "distilled": "enots",
            "untrained_match": False,
            "distilled_match": True,
            "judge": "tie",
        },
        {
            "prompt": "把“你好世界”倒过来写。",
            "reference": "界世好你",
            "teacher": "界世好你",
            "untrained": "你好",
            "distilled": "界世好你",
            "untrained_match": False,
            "distilled_match": True,
            "judge": "tie",
        },
        {
            "prompt": "Reverse the letters of: <b>bold</b>",
            "reference": None,
            "teacher": ">b/<dlob>b<",
            "untrained": "x",
            "distilled": ">b/<dlob",
            "untrained_match": False,
            "distilled_match": False,
            "judge": "teacher",
        },
    ]
    gate = {
        "min_score": 0.9,
        "passed": False,
        "message": "eval gate failed: distilled_exact_match = 0.8750 is below min_score 0.9000 by 0.0250",
    }
    return render_report(
        title="Distillation report",
        facts={"distilled": "/models/student", "test prompts": "8"},
        metrics=metrics,
        gate=gate,
        curve_svg=loss_svg(curves),
        samples=samples,
        total_samples=8,
    )


def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(example_report(), encoding="utf-8")
    dom = chromium(["--dump-dom", page.as_uri()], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<table") == 3 and "<polyline" in html  # metrics, reference, samples; the loss curve
    assert "界世好你" in html and "&lt;b&gt;bold&lt;/b&gt;" in html  # Chinese kept, markup in answers escaped
    assert "eval gate failed" in html and "win rate 43.8%" in html

    shot = tmp_path / "report.png"
    run = chromium(
        [f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()], tmp_path / "profile-shot"
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    colors = image.getcolors(maxcolors=1 << 20)
    assert (
        colors is not None and len(colors) > 50
    )  # text, table borders, the coloured curve: not a blank page
    # The failed gate's red banner is drawn: some pixels carry its background colour #fee2e2.
    assert any(rgb == (0xFE, 0xE2, 0xE2) for _, rgb in colors)
    shutil.copy(shot, tmp_path.parent / "report-screenshot.png")  # kept beside the test's tmp dir to look at
