"""The eval stage compares the untrained and distilled students with the teacher, reports, and gates."""

from __future__ import annotations

import json
import re

import pytest
from torch.utils.tensorboard import SummaryWriter

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.evaluate import Config
from components.evaluate.sampling import split_reasoning
from components.evaluate.stage import EvalGateError, run
from tests.evaluate.conftest import eval_config

CHECKER = "components.evaluate.checkers:reverse_letters"


@pytest.fixture(scope="module")
def tensorboard_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tb")
    writer = SummaryWriter(str(path))
    for step in range(0, 101, 10):
        writer.add_scalar("train/loss", 4.0 * 0.97**step, step)
        writer.add_scalar("train/lr", 1e-3, step)
    writer.close()
    return path


def test_distilled_student_beats_the_untrained_one_and_everything_is_reported(
    tiny_model_dir,
    memorized_student_dir,
    tiny_teacher_dir,
    reversal_data_dir,
    tensorboard_dir,
    judge_server,
    tmp_path,
):
    judge = {
        "base_url": f"http://127.0.0.1:{judge_server.port}/v1",
        "model": "judge-1",
        "name": "judge",
        "api_key_required": False,
        "backoff_s": 0.01,
    }
    out = tmp_path / "eval"
    cfg = eval_config(
        tiny_model_dir,
        memorized_student_dir,
        reversal_data_dir,
        out,
        teacher_dir=str(tiny_teacher_dir),
        tensorboard_dir=str(tensorboard_dir),
        checker=CHECKER,
        judge={"provider": judge},
        gate_metric="distilled_exact_match",
        min_score=0.9,
    )
    result = run(cfg)
    m = result.metrics

    assert result.gate_passed is True
    assert m["distilled_exact_match"] == 1.0 > m["untrained_exact_match"]
    assert m["distilled_rouge_l"] > m["untrained_rouge_l"] and m["distilled_chrf"] > m["untrained_chrf"]
    assert m["distilled_accuracy"] == 1.0 and m["teacher_accuracy"] == 1.0  # by the reversal checker
    assert m["distilled_perplexity"] < m["untrained_perplexity"]
    assert (
        m["teacher_params"] > m["distilled_params"] > 0
        and m["teacher_size_bytes"] > m["distilled_size_bytes"]
    )
    assert m["teacher_tokens_per_s"] > 0 and m["distilled_tokens_per_s"] > 0
    assert m["teacher_avg_output_tokens"] == pytest.approx(
        m["distilled_avg_output_tokens"]
    )  # same answers + eos
    assert m["judge_win_rate"] == 0.5 and m["judge_tie_rate"] == 1.0  # student and teacher both right
    assert all(isinstance(v, float) for v in m.values())

    saved = json.loads((out / "eval.json").read_text())
    assert saved["metrics"] == m and saved["gate"]["passed"] is True
    assert len(saved["samples"]) == 8 and saved["samples"][0]["distilled"] == saved["samples"][0]["teacher"]
    assert [s for s, _ in saved["loss_curves"]["train/loss"]] == list(range(0, 101, 10))
    assert "train/lr" not in saved["loss_curves"]

    report = (out / "report.html").read_text()
    assert "<polyline" in report and "train/loss" in report  # the loss curve, inline SVG
    # the teacher named from the records' teacher settings; its size measured from teacher_dir
    assert "teacher: <b title='demo/reverser'><bdi>demo/reverser</bdi></b>" in report
    assert "smaller on disk" in report
    assert "Reverse the letters of:" in report and "eval gate passed" in report
    assert "win rate 50.0%" in report and "ties 100.0%, 8 samples judged" in report
    assert not re.search(r"""(src|href)\s*=|<script|@import|url\(""", report)  # nothing fetched


def test_gate_below_min_score_fails_saying_by_how_much_and_still_writes_the_report(
    tiny_model_dir, reversal_data_dir, tmp_path
):
    out = tmp_path / "eval"
    cfg = eval_config(
        tiny_model_dir,
        tiny_model_dir,
        reversal_data_dir,
        out,
        gate_metric="distilled_rouge_l",
        min_score=0.25,
        tensorboard_dir=str(tmp_path / "no-logs"),
        max_samples=4,
    )
    # The untrained student stands in for the distilled one: it answers nothing right, ROUGE-L is 0.
    # Unreadable TensorBoard logs only cost the report its curve; the gate is what fails the stage.
    with pytest.raises(
        EvalGateError, match=r"distilled_rouge_l = 0\.0000 is below min_score 0\.2500 by 0\.2500"
    ):
        run(cfg)
    report = (out / "report.html").read_text()
    assert "eval gate failed" in report
    assert "No training loss curve: tensorboard_dir: " in report and "no-logs is not a folder" in report
    assert json.loads((out / "eval.json").read_text())["gate"]["passed"] is False


def test_reasoning_is_split_from_the_answer():
    assert split_reasoning("<think>read it backwards</think> cba") == ("read it backwards", "cba")
    assert split_reasoning("cba ") == ("", "cba")
    assert split_reasoning("<think>a</think>x<think>b</think>y") == ("b", "y")
    assert split_reasoning("<think>\nstill going") == ("still going", "")  # cut off: no answer yet


def test_config_and_input_errors_name_the_field(tiny_model_dir, tmp_path):
    base = {"student_dir": "b", "trained_dir": "m", "data_dir": "d", "output_dir": "o"}
    with pytest.raises(
        ConfigError, match="gate_metric: 'distilled_perplexity' is not a metric the gate can use"
    ):
        from_dict(Config, {**base, "gate_metric": "distilled_perplexity"})
    with pytest.raises(ConfigError, match="gate_metric: teacher_rouge_l is never computed"):
        from_dict(Config, {**base, "gate_metric": "teacher_rouge_l"})
    with pytest.raises(ConfigError, match="checker: 'reverse' must look like 'package.module:function'"):
        from_dict(Config, {**base, "checker": "reverse"})
    with pytest.raises(ConfigError, match="temperature: 0.0 must be positive when do_sample is true"):
        from_dict(Config, {**base, "do_sample": True, "temperature": 0})
    with pytest.raises(InputError, match="data_dir: .*test.jsonl does not exist"):
        run(eval_config(tiny_model_dir, tiny_model_dir, tmp_path, tmp_path / "out"))
