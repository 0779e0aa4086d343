"""The demo's forgetting gate watches a skill the student has before training (issue 29 item 7): the
shipped demo_copy task, on a student that copies the task's words. Kept, the gate passes on a score the
untrained student earns; lost, the gate fails the stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.evaluate.benchmarks import SHIPPED_TASKS
from components.evaluate.stage import EvalGateError, run
from tests.evaluate.conftest import benchmark_config, memorize

GATE = {"demo_copy": 5}


@pytest.fixture(scope="module")
def copying_student_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny student fine-tuned to copy the shipped task's words: a student with the skill the demo's
    warm-up gives, cheap to make."""
    rows = (SHIPPED_TASKS / "letters.jsonl").read_text().splitlines()
    pairs = [(f"Copy the letters of: {json.loads(row)['word']}", json.loads(row)["word"]) for row in rows]
    return memorize(tiny_model_dir, tmp_path_factory.mktemp("copying"), pairs, steps=80)


def test_the_gate_passes_on_a_skill_the_student_had_and_kept(
    copying_student_dir, reversal_data_dir, tmp_path
):
    cfg = benchmark_config(
        copying_student_dir,
        copying_student_dir,
        reversal_data_dir,
        tmp_path / "eval",
        ["demo_copy"],
        limit=10,
        max_regression=GATE,
    )
    result = run(cfg)
    # The skill is there before training, far above the 5 points the gate lets go: the gate can fail.
    assert result.metrics["untrained_bench_demo_copy_exact_match"] >= 0.2
    assert result.forgetting_passed is True


def test_the_gate_fails_when_the_skill_is_lost(
    copying_student_dir, tiny_model_dir, reversal_data_dir, tmp_path
):
    cfg = benchmark_config(
        copying_student_dir,
        tiny_model_dir,
        reversal_data_dir,
        tmp_path / "eval",
        ["demo_copy"],
        limit=10,
        max_regression=GATE,
    )
    with pytest.raises(EvalGateError, match=r"forgetting gate failed: demo_copy exact_match"):
        run(cfg)
