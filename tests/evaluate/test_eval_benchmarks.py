"""lm-eval benchmarks in the eval stage and the forgetting gate: lm-eval's real code on task files and data
files the tests write (a multiple-choice and a generation task), on the tiny students."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.records import read_records
from components.evaluate import Config
from components.evaluate.benchmarks import (
    SHIPPED_TASKS,
    BenchmarkPlan,
    check_forgetting,
    load_local_task,
    task_scores,
)
from components.evaluate.config import BenchmarkConfig
from components.evaluate.stage import EvalGateError, run
from tests.evaluate.conftest import benchmark_config


@pytest.fixture(scope="module")
def local_tasks(reversal_data_dir, tmp_path_factory) -> Path:
    """Two lm-eval task files with their data beside them, on the reversal words the memorized student
    learned: `reverse_gen` (generation, exact match) and `reverse_choice` (multiple choice by
    log-likelihood)."""
    folder = tmp_path_factory.mktemp("tasks")
    words = [
        r.prompt_messages[-1]["content"].split(": ")[1]
        for r in read_records(reversal_data_dir / "test.jsonl")
    ]
    with open(folder / "words.jsonl", "w") as file:
        for word in words:
            choices = [word, word[::-1]]
            file.write(
                json.dumps({"word": word, "reversed": word[::-1], "choices": choices, "answer": 1}) + "\n"
            )
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "words.jsonl"}},
        "test_split": "test",
        "doc_to_text": "Reverse the letters of: {{word}}",
    }
    metric = {"aggregation": "mean", "higher_is_better": True}
    generation = {
        **common,
        "task": "reverse_gen",
        "output_type": "generate_until",
        "doc_to_target": "reversed",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 10, "do_sample": False},
        "metric_list": [{"metric": "exact_match", **metric}],
    }
    choice = {
        **common,
        "task": "reverse_choice",
        "output_type": "multiple_choice",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", **metric}],
    }
    (folder / "reverse_gen.yaml").write_text(yaml.safe_dump(generation))
    (folder / "reverse_choice.yaml").write_text(yaml.safe_dump(choice))
    return folder


def test_benchmarks_score_each_student_and_the_report_shows_the_table_and_the_gate(
    tiny_model_dir, memorized_student_dir, reversal_data_dir, local_tasks, tmp_path
):
    tasks = [str(local_tasks / "reverse_gen.yaml"), str(local_tasks / "reverse_choice.yaml")]
    out = tmp_path / "eval"
    gate = {"reverse_gen": 0}
    cfg = benchmark_config(
        tiny_model_dir, memorized_student_dir, reversal_data_dir, out, tasks, max_regression=gate
    )
    result = run(cfg)
    m = result.metrics

    assert result.forgetting_passed is True
    # The memorized student reverses every word; the random one none.
    assert m["distilled_bench_reverse_gen_exact_match"] == 1.0
    assert m["untrained_bench_reverse_gen_exact_match"] == 0.0
    assert m["bench_reverse_gen_exact_match_change"] == 100.0
    assert m["distilled_bench_reverse_choice_acc"] > m["untrained_bench_reverse_choice_acc"]
    everything = json.loads((out / "eval.json").read_text())
    rows = {(r["task"], r["metric"]): r for r in everything["benchmarks"]}
    assert set(rows) == {("reverse_gen", "exact_match"), ("reverse_choice", "acc")}
    assert (
        rows["reverse_gen", "exact_match"]["samples"] == 8
        and rows["reverse_gen", "exact_match"]["num_fewshot"] == 0
    )
    assert everything["forgetting_gate"]["passed"] is True
    report = (out / "report.html").read_text()
    assert "<h2>Benchmarks</h2>" in report
    assert re.search(
        r"<td><bdi>reverse_gen</bdi></td><td><bdi>exact_match</bdi></td>.*?<td class='n'>0</td><td class='n'>100</td>",
        report,
    )
    assert "forgetting gate passed: reverse_gen exact_match +100.0 points" in report


def test_forgetting_gate_fails_saying_by_how_much(
    tiny_model_dir, memorized_student_dir, reversal_data_dir, local_tasks, tmp_path
):
    """Roles swapped: the 'distilled' model is the random one, so it lost all 100 points of reverse_gen."""
    tasks = [str(local_tasks / "reverse_gen.yaml")]
    out = tmp_path / "eval"
    gate = {"reverse_gen": 5}
    cfg = benchmark_config(
        memorized_student_dir, tiny_model_dir, reversal_data_dir, out, tasks, max_regression=gate
    )
    with pytest.raises(EvalGateError) as failure:
        run(cfg)
    assert (
        "forgetting gate failed: reverse_gen exact_match: the distilled student scores 0.0 against the "
        "untrained 100.0, 100.0 points lost, more than max_regression 5 by 95.0"
    ) in str(failure.value)
    assert json.loads((out / "eval.json").read_text())["forgetting_gate"]["passed"] is False
    assert "<div class='gate fail'>forgetting gate failed" in (out / "report.html").read_text()


def test_gate_checks_every_higher_is_better_metric_of_a_gated_task_only():
    rows = [
        {
            "task": "gsm8k",
            "metric": "exact_match,strict-match",
            "higher_is_better": True,
            "untrained": 0.40,
            "distilled": 0.37,
            "change_points": -3.0,
        },
        {
            "task": "gsm8k",
            "metric": "exact_match,flexible-extract",
            "higher_is_better": True,
            "untrained": 0.42,
            "distilled": 0.41,
            "change_points": -1.0,
        },
        {
            "task": "wikitext",
            "metric": "word_perplexity",
            "higher_is_better": False,
            "untrained": 30.0,
            "distilled": 40.0,
            "change_points": 1000.0,
        },
        {
            "task": "mmlu",
            "metric": "acc",
            "higher_is_better": True,
            "untrained": 0.5,
            "distilled": 0.1,
            "change_points": -40.0,
        },
    ]
    assert check_forgetting(rows, {})["passed"] is None
    assert check_forgetting(rows, {"gsm8k": 3, "wikitext": 0})["passed"] is True
    failed = check_forgetting(rows, {"gsm8k": 2})
    assert failed["passed"] is False
    assert failed["failures"] == [
        "gsm8k exact_match,strict-match: the distilled student scores 37.0 against the untrained 40.0, "
        "3.0 points lost, more than max_regression 2 by 1.0"
    ]


def test_lm_eval_results_become_scores_per_requested_task():
    results = {
        "results": {
            "mmlu": {"alias": "mmlu", "acc,none": 0.61, "acc_stderr,none": 0.01},
            "mmlu_anatomy": {"acc,none": 0.5},
            "gsm8k": {"exact_match,strict-match": 0.3, "exact_match_stderr,strict-match": 0.02},
        },
        "higher_is_better": {"mmlu": {"acc": True}, "gsm8k": {"exact_match": True}},
        "n-shot": {"mmlu": 5, "gsm8k": 8},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 100}},
    }
    scores = task_scores(results, ["mmlu", "gsm8k"])
    assert scores["mmlu"]["scores"] == {"acc": 0.61}
    assert scores["gsm8k"] == {
        "scores": {"exact_match,strict-match": 0.3},
        "higher_is_better": {"exact_match,strict-match": True},
        "num_fewshot": 8,
        "samples": 100,
    }


def test_hub_task_names_pass_to_lm_eval_unchanged_and_local_files_resolve_their_data(local_tasks):
    plan = BenchmarkPlan.from_config(
        BenchmarkConfig(tasks=["mmlu", "ceval-valid", str(local_tasks / "reverse_gen.yaml"), "demo_reverse"])
    )
    assert plan.names == ["mmlu", "ceval-valid", "reverse_gen", "demo_reverse"]
    assert plan.specs[:2] == ["mmlu", "ceval-valid"]
    assert plan.specs[2]["dataset_kwargs"]["data_dir"] == str(local_tasks.resolve())
    assert plan.specs[3]["dataset_kwargs"]["data_dir"] == str(SHIPPED_TASKS.resolve())


def test_shipped_demo_tasks_load_and_their_data_files_exist():
    shipped = sorted(SHIPPED_TASKS.glob("*.yaml"))
    assert {p.stem for p in shipped} == {"demo_reverse", "demo_last_letter", "demo_reverse_choice"}
    for path in shipped:
        task = load_local_task(path)
        assert task["task"] == path.stem
        for data in task["dataset_kwargs"]["data_files"].values():
            assert (Path(task["dataset_kwargs"]["data_dir"]) / data).is_file()


@pytest.mark.parametrize(
    ("benchmarks", "message"),
    [
        (
            {"tasks": ["mmlu"], "max_regression": {"gsm8k": 2}},
            "benchmarks.max_regression.gsm8k: no such task runs; the tasks are mmlu",
        ),
        ({"tasks": ["missing/task.yaml"]}, "benchmarks.tasks: missing/task.yaml does not exist"),
    ],
)
def test_bad_benchmark_settings_fail_before_any_model_loads(benchmarks, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        BenchmarkPlan.from_config(from_dict(BenchmarkConfig, benchmarks))


@pytest.mark.parametrize(
    ("benchmarks", "message"),
    [
        ({"max_regression": {"mmlu": 2}}, "benchmarks.max_regression: set, but no benchmark tasks run"),
        (
            {"tasks": ["mmlu"], "max_regression": {"mmlu": 150}},
            "benchmarks.max_regression.mmlu: 150.0 must be between 0 and 100",
        ),
        ({"tasks": ["mmlu", "mmlu"]}, "benchmarks.tasks: ['mmlu', 'mmlu'] names a task twice"),
        ({"tasks": ["mmlu"], "limit": 0}, "benchmarks.limit: 0 must be at least 1"),
    ],
)
def test_benchmark_config_errors_name_the_field(benchmarks, message, tmp_path):
    fields = {
        "student_dir": "b",
        "trained_dir": "m",
        "data_dir": "d",
        "output_dir": "o",
        "benchmarks": benchmarks,
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(Config, fields)


def test_a_task_file_with_code_tags_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("task: evil\nprocess_results: !function utils.process\n")
    with pytest.raises(ConfigError, match="may not use !function"):
        BenchmarkPlan.from_config(BenchmarkConfig(tasks=[str(path)]))
