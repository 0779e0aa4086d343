"""`make demo-containers`: the compiled pipeline (pipelines/distill_pipeline.yaml) run task by task, each task
in its CPU stage image through the container engine, reaches the exact match `make demo` reaches."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipelines.images import STAGES

pytestmark = pytest.mark.images

REPO = Path(__file__).resolve().parents[2]


def table_row(output: str, metric: str) -> list[float]:
    header = next(line for line in output.splitlines() if line.startswith("metric "))
    row = next(line for line in output.splitlines() if line.split()[:1] == [metric])
    assert header.split()[1:3] == ["untrained", "distilled"], header
    return [float(cell) for cell in row.split()[1:3]]


def test_demo_in_the_images_distills_the_student_from_0_to_100_percent(cpu_images, make_targets, tmp_path):
    done = subprocess.run(
        make_targets("demo-containers", f"CONTAINER_DEMO_DIR={tmp_path}"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    print(done.stdout[-4000:], done.stderr[-4000:])
    assert done.returncode == 0
    # The same table and the same result as `make demo` (tests/test_pipeline_local.py).
    untrained, distilled = table_row(done.stdout, "exact_match")
    assert untrained == 0.0 and distilled == 1.0
    # Every task left the executor output the KFP executor writes inside its image, under /s3.
    outputs = list((tmp_path / "s3").rglob("executor_output.json"))
    tasks = {path.parent.name for path in outputs}
    assert {"download-model", "teacher-data-2", "train-student", "merge-adapter", "evaluate-student"} <= tasks
    assert any(path.parent.parent.name.startswith("for-loop-4") for path in outputs), "no teacher shard ran"
    metrics = json.loads(next(p for p in outputs if p.parent.name == "evaluate-student").read_text())
    assert metrics["artifacts"]["metrics"]["artifacts"][0]["metadata"]["distilled_exact_match"] == 1.0
    assert set(cpu_images) == set(STAGES)
