"""The demo's forgetting gate watches a skill the student has before training (issue 29 item 7): the demo
student's warm-up teaches it to name a word's last letter, in the very prompts of the shipped
demo_last_letter task. A training that overwrites the skill (full fine-tuning on reversal until the
student repeats its training answers) fails the eval stage on the gate; the demo run, where LoRA
distillation keeps the skill, passes it (tests/test_pipeline_local.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.tiny_model import make_tiny_model
from components.evaluate.stage import EvalGateError, run
from pipelines.run_local import LocalRun
from tests.evaluate.conftest import benchmark_config, memorize, reversal_records

pytestmark = pytest.mark.slow

GATE = LocalRun().parameters["eval_max_regression"]


@pytest.fixture(scope="module")
def demo_student_dir(tmp_path_factory) -> Path:
    """The student `make demo` makes (run_local's student_source), warm-up included."""
    path = tmp_path_factory.mktemp("demo-student")
    make_tiny_model(LocalRun().student_source, path)
    return path


@pytest.fixture(scope="module")
def overtrained_student_dir(demo_student_dir, tmp_path_factory) -> Path:
    """The demo student fully fine-tuned on 32 reversals at a high learning rate until it repeats them: it
    answers every prompt with letters of its training answers, the warm-up skill mostly gone."""
    pairs = [(r.messages[0]["content"], r.answer) for r in reversal_records(32, seed=1)]
    return memorize(demo_student_dir, tmp_path_factory.mktemp("overtrained"), pairs, steps=40)


def test_the_gate_fails_when_training_overwrites_the_warm_up_skill(
    demo_student_dir, overtrained_student_dir, reversal_data_dir, tmp_path
):
    assert GATE == {"demo_last_letter": 10}
    cfg = benchmark_config(
        demo_student_dir,
        overtrained_student_dir,
        reversal_data_dir,
        tmp_path / "eval",
        ["demo_last_letter"],
        limit=20,
        max_regression=GATE,
    )
    with pytest.raises(EvalGateError, match=r"forgetting gate failed: demo_last_letter acc"):
        run(cfg)
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    # The skill was there before training, far above what the gate lets go: the gate had something to lose.
    assert metrics["untrained_bench_demo_last_letter_acc"] >= 0.9
    assert metrics["bench_demo_last_letter_acc_change"] < -50
