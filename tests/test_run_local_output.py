"""What `python -m pipelines.run_local` (`make demo`) prints: task lines and progress with an ETA (the
tiny student's warm-up included), the metrics table, and the report's .html path last; the task input
dumps and kfp.local's warnings go to <workdir>/run.log only (issue 29 item 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_command

pytestmark = pytest.mark.slow

QUICK = [
    "teacher_concurrency=16",
    "teacher_max_tokens=32",
    "train_lora_r=8",
    "train_lora_alpha=16",
    "train_max_steps=10",
    "train_batch_size=8",
    "eval_max_new_tokens=8",
    "eval_max_samples=10",
    "eval_benchmark_limit=5",
]


def test_a_local_run_prints_progress_the_table_and_the_report_path_last(tmp_path):
    settings = [item for setting in QUICK for item in ("--set", setting)]
    status, stdout, stderr = run_command(
        "pipelines.run_local",
        "--workdir",
        str(tmp_path),
        "--student-source",
        "tiny://qwen2?warmup_steps=20",
        *settings,
        limit_s=1800,
    )
    assert status == 0, stderr[-3000:]
    lines = stdout.splitlines()
    assert len(lines) < 200, stdout
    assert any("tiny student warm-up step 20/20" in line and "eta" in line for line in lines), stdout
    assert any("train-student done" in line for line in lines), stdout
    assert "executor_input" not in stdout and "have no effect" not in stdout + stderr
    assert "executor_input" in (tmp_path / "run.log").read_text()
    report = Path(lines[-1].removeprefix("report:").strip())
    assert lines[-1].startswith("report:") and report.name == "report.html" and report.is_file()
