"""bench/distill_quality.py in its smoke mode: the teacher is trained, served on loopback and asked by the
teacher stage, every method trains a student through the train stage on that output and is scored, and
the last line holds the figures.

The figures of a smoke run mean nothing (a few steps); the full run's table is in docs/benchmarks.md.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def smoke(workdir: Path, *options: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "distill_quality.py"), "--smoke", "--workdir", str(workdir)]
        + list(options),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quality")


@pytest.fixture(scope="module")
def output(workdir) -> list[str]:
    return smoke(workdir)


def test_the_last_line_holds_each_methods_exact_match_and_the_candidates_train_saw(output):
    figures = dict(pair.split("=") for pair in output[-1].split())
    keys = ["sft", "kd", "topk", "onpolicy", "xtok", "xtok_sft", "seeds", "topk_candidates", "via"]
    assert list(figures) == keys
    assert figures["seeds"] == "1" and figures["via"] == "stages"
    for key in keys[:6]:
        assert 0.0 <= float(figures[key]) <= 1.0 and not math.isnan(float(figures[key]))
    # The teacher stage stored its top-5, so the train stage sees more than the sampled token.
    assert 2.0 <= float(figures["topk_candidates"]) <= 5.0


def test_every_method_trained_and_was_scored(output):
    for method in ("sft", "kd", "topk", "onpolicy", "xtok_sft", "xtok"):
        rows = [line for line in output if line.startswith(f"  seed 0 {method:9} exact match ")]
        assert len(rows) == 1, "\n".join(output)
    assert any(line.startswith("teacher: 4 steps, held-out exact match") for line in output)


def test_the_table_gives_each_method_its_final_and_along_training_exact_match(output):
    header = next(i for i, line in enumerate(output) if line.startswith("method "))
    rows = {line.split()[0]: line.split()[1:] for line in output[header + 1 : header + 7]}
    assert list(rows) == ["sft", "kd", "topk", "onpolicy", "xtok_sft", "xtok"]
    for final, final_std, learned, along, along_std, learned_at, seconds in rows.values():
        assert 0.0 <= float(final) <= 1.0 and 0.0 <= float(along) <= 1.0
        assert learned == "0/1" and learned_at == "-"  # two steps learn nothing
        assert float(final_std) == float(along_std) == 0.0 and float(seconds) >= 0


def test_each_seed_has_a_row_of_every_methods_final_exact_match_before_the_last_line(output):
    start = output.index("final exact match per seed:")
    assert output[start + 1].split() == ["seed", "sft", "kd", "topk", "onpolicy", "xtok_sft", "xtok"]
    row = output[start + 2].split()
    assert row[0] == "0" and len(row) == 7 and all(0.0 <= float(v) <= 1.0 for v in row[1:])
    assert len(output) - 1 > start + 2  # the table comes before the last line


def test_a_second_run_in_the_same_workdir_keeps_the_teacher_and_its_records(workdir, output):
    again = smoke(workdir, "--methods", "sft")
    teacher = next(line for line in again if line.startswith("teacher: "))
    assert f"kept from {workdir}/teacher-" in teacher
    # The same teacher and records: its figures are the first run's.
    first = next(line for line in output if line.startswith("teacher: "))
    assert teacher.split(" (")[0] == first.split(" (")[0]
