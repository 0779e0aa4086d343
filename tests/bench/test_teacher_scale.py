"""bench/teacher_scale.py at a small size: the kill at half way, the resume and the finalize all happen,
and the last line carries every figure the note quotes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"^peak_mb=(\d+) resume_s=([\d.]+) bytes_per_record=(\d+) ratio@64=([\d.]+)$")


def run_bench(*arguments: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "teacher_scale.py"), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def test_a_killed_and_resumed_run_reports_memory_resume_size_and_rate():
    lines = run_bench("--prompts", "2000", "--latency", "0.2", "--concurrency", "64")
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    peak_mb, resume_s, per_record, ratio = map(float, match.groups())
    assert 0 < peak_mb < 1024 and 0 < resume_s < 30 and per_record > 100 and 0 < ratio <= 1.05
    killed = next(line for line in lines if line.startswith("first run: killed at"))
    assert 1000 <= int(killed.split()[4]) < 2000


def test_one_shard_and_two_shard_processes_run_side_by_side():
    lines = run_bench("--prompts", "1000", "--latency", "0.2", "--concurrency", "32", "--shards", "2")
    assert re.match(r"^peak_mb=\d+ rate@1=[\d.]+ rate@2=[\d.]+ scaling@2=[\d.]+$", lines[-1]), lines[-1]
