"""The stored-logprobs memory bench, tiny: both sides read to the end at the scales they were given, the
JSONL side's full-scale figure said to be extrapolated, and the last line's keys."""

from __future__ import annotations

import re

import pytest

from tests.bench.conftest import run_bench

pytestmark = pytest.mark.slow


def test_each_side_reads_its_own_scale_and_the_last_line_says_which():
    lines = run_bench(
        "train_logprobs_memory.py",
        *("--records", "48", "--jsonl-records", "12", "--distinct", "20", "--positions", "16", "--k", "4"),
    )
    parquet = next(line for line in lines if line.startswith("parquet (this checkout)"))
    jsonl = next(line for line in lines if line.startswith("jsonl (train stage at"))
    # Every answer position matched with its k candidates, the repeated records included.
    assert "48 records x 16 positions x top-4" in parquet and f"{48 * 16} positions matched" in parquet
    assert "12 records x 16 positions x top-4" in jsonl and f"{12 * 16} positions matched" in jsonl
    assert all("4.00 candidates each" in line for line in (parquet, jsonl))
    assert any(line.endswith("extrapolated, not measured") for line in lines)
    last = re.fullmatch(
        r"peak_mb_parquet=\d+ peak_mb_jsonl=\d+ bytes_per_position=[\d.]+ records_parquet=48 "
        r"records_jsonl=12 read_s_parquet=\d+ read_s_jsonl=\d+",
        lines[-1],
    )
    assert last, lines[-1]
