"""The whole pipeline through kfp.local: the demo student learns, the S3 store works, bad input is explained.

These run every stage as a subprocess exactly as `make demo` does; they are the slowest tests.
"""

import json

import pytest
from kfp import local

from components.common.store import open_store
from pipelines.run_local import LocalRun, format_table, run_pipeline

pytestmark = pytest.mark.slow

# A quicker variant of the demo for checks that are not about learning.
QUICK = {
    "teacher_concurrency": 16,
    "teacher_max_tokens": 32,
    "train_method": "lora",
    "train_lora_r": 8,
    "train_lora_alpha": 16,
    "train_max_steps": 20,
    "train_batch_size": 8,
    "eval_max_new_tokens": 8,
    "eval_max_samples": 10,
}


def test_demo_pipeline_teaches_the_student_the_task(tmp_path):
    result = run_pipeline(LocalRun(workdir=tmp_path))

    metrics = result.metrics
    assert all(isinstance(value, (int, float)) for value in metrics.values())
    assert metrics["untrained_exact_match"] <= 0.05
    assert metrics["distilled_exact_match"] >= 0.8
    assert metrics["distilled_rouge_l"] > metrics["untrained_rouge_l"]

    assert (result.model / "config.json").is_file()
    assert list(result.model.glob("*.safetensors"))
    assert (result.model / "tokenizer_config.json").is_file()
    assert not (result.model / "adapter_config.json").exists(), "the served model is merged, not an adapter"
    assert list(result.tensorboard.rglob("events.out.tfevents.*"))
    report = result.report.read_text()
    assert "Reverse the letters of" in report and "<table" in report
    evaluation = json.loads(result.eval_json.read_text())
    assert evaluation["metrics"]["distilled_exact_match"] == pytest.approx(metrics["distilled_exact_match"])
    assert evaluation["samples"] and "Reverse the letters of" in evaluation["samples"][0]["prompt"]
    assert "distilled" in format_table(metrics)
    # lm-eval on the shipped demo tasks, and the forgetting gate's verdict, in the report.
    assert (
        metrics["distilled_bench_demo_reverse_exact_match"]
        > metrics["untrained_bench_demo_reverse_exact_match"]
    )
    # The gate watches a skill the warm-up taught: high before distillation, kept after it.
    assert metrics["untrained_bench_demo_last_letter_acc"] >= 0.9
    assert metrics["bench_demo_last_letter_acc_change"] >= -10
    assert "<h2>Benchmarks</h2>" in report and "forgetting gate passed: demo_last_letter" in report


def test_pipeline_runs_against_an_s3_store_and_reuses_its_caches(s3_endpoint, tmp_path):
    """Also the logit-KD path: the train task fetches a local teacher through the download cache."""
    kd = {"train_kd": "logits", "train_kd_teacher_source": "tiny://qwen2?warmup_steps=0&layers=1&seed=7"}
    settings = LocalRun(
        workdir=tmp_path,
        store_uri="s3://distill/e2e",
        student_source="tiny://qwen2?warmup_steps=20",
        dataset_size=60,
        parameters={**QUICK, **kd},
    )
    first = run_pipeline(settings)
    assert list(first.model.glob("*.safetensors"))

    store = open_store("s3://distill/e2e")
    keys = store.list()
    assert sum(key.startswith("cache/download/") and key.endswith("_COMPLETE") for key in keys) == 2
    assert any(key.startswith("runs/") and "/teacher/" in key for key in keys)
    assert any(key.startswith("runs/") and "/train/" in key for key in keys)

    second = run_pipeline(settings)
    assert second.metrics["distilled_rouge_l"] == pytest.approx(first.metrics["distilled_rouge_l"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "/nonexistent/prompts.jsonl"}, "/nonexistent/prompts.jsonl"),
        ({"teacher_base_url": "http://127.0.0.1:9/v1"}, "http://127.0.0.1:9/v1"),
    ],
    ids=["missing-dataset", "unreachable-teacher"],
)
def test_bad_input_stops_the_run_with_one_clear_error(tmp_path, capfd, change, message):
    settings = LocalRun(
        workdir=tmp_path,
        student_source="tiny://qwen2?warmup_steps=0",
        dataset_size=10,
        parameters=dict(QUICK),
        **change,
    )
    with pytest.raises(RuntimeError):
        run_pipeline(settings)
    output = capfd.readouterr()
    error_lines = [line for line in (output.out + output.err).splitlines() if "error: " in line]
    assert any(message in line for line in error_lines), error_lines


def test_a_bad_parameter_fails_the_run_check_before_any_stage_starts(tmp_path, capfd):
    parameters = {**QUICK, "train_overrides": {"lora": {"dropout": 1.5}}}
    settings = LocalRun(
        workdir=tmp_path, student_source="tiny://qwen2?warmup_steps=0", dataset_size=10, parameters=parameters
    )
    with pytest.raises(RuntimeError):
        run_pipeline(settings)
    output = capfd.readouterr()
    log = output.out + output.err
    assert any("error: " in line and "train.lora.dropout" in line for line in log.splitlines()), log[-2000:]
    started = [line for line in log.splitlines() if "Executing task" in line]
    # The exit task that deletes a served teacher runs when the run fails too (here: nothing to delete).
    stages = [line for line in started if "remove-teacher-server" not in line]
    assert stages and all("check-run" in line for line in stages), started
    assert any("remove-teacher-server" in line for line in started), started


def test_malformed_dataset_line_is_reported_with_file_and_line(tmp_path, capfd):
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text('{"prompt": "Reverse the letters of: abc"}\n{"prompt": "Reverse the letters\n')
    settings = LocalRun(
        workdir=tmp_path,
        student_source="tiny://qwen2?warmup_steps=0",
        dataset=str(dataset),
        parameters=dict(QUICK),
    )
    with pytest.raises(RuntimeError):
        run_pipeline(settings)
    output = capfd.readouterr()
    assert f"{dataset}:2" in output.out + output.err


def test_missing_api_key_is_named(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("DISTILL_TEST_MISSING_API_KEY", raising=False)
    parameters = {**QUICK, "teacher_api_key_env": "DISTILL_TEST_MISSING_API_KEY"}
    settings = LocalRun(
        workdir=tmp_path, student_source="tiny://qwen2?warmup_steps=0", dataset_size=10, parameters=parameters
    )
    with pytest.raises(RuntimeError):
        run_pipeline(settings)
    output = capfd.readouterr()
    assert "DISTILL_TEST_MISSING_API_KEY" in output.out + output.err


@pytest.fixture(autouse=True)
def reset_local_config():
    """kfp.local keeps its runner in a module global; each test starts from a clean slate."""
    yield
    local.config.LocalExecutionConfig.instance = None
