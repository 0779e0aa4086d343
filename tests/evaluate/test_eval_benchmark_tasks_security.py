"""Task files from the bucket or a run parameter hold data and templates only: the three ways a task file
ran code in the eval pod (an unsandboxed template, a task path lm-eval loads itself honouring `!function`,
a metric loaded by `evaluate.load`) are refused, each proved by the side effect it had, on the real eval
stage and lm-eval. A benign local task (a data file and plain templates) and hub names still run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.common.errors import ConfigError, InputError
from components.evaluate.benchmarks import BenchmarkPlan
from components.evaluate.config import BenchmarkConfig
from components.evaluate.stage import run
from tests.evaluate.conftest import eval_config

GENERATION = {
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"test": "words.jsonl"}},
    "test_split": "test",
    "output_type": "generate_until",
    "doc_to_text": "Reverse the letters of: {{word}}",
    "doc_to_target": "reversed",
    "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
}


def task_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"word": w, "reversed": w[::-1]} for w in ("abc", "stone")]
    (folder / "words.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def run_eval_with(tasks: list[str], student: Path, data: Path, out: Path):
    config = eval_config(
        student, student, data, out, max_samples=2, benchmarks={"tasks": tasks, "limit": 2, "batch_size": 2}
    )
    return run(config)


def refusal(tasks: list[str], student: Path, data: Path, out: Path) -> Exception | None:
    """What the eval run raised (None: it ran), so that a test checks the attack's side effect first."""
    try:
        run_eval_with(tasks, student, data, out)
    except Exception as error:
        return error
    return None


def test_a_template_reaching_for_python_is_refused_by_the_sandbox(
    tiny_model_dir, reversal_data_dir, tmp_path
):
    folder = task_folder(tmp_path / "tasks")
    marker = tmp_path / "template-ran"
    attack = f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}{{{{word}}}}"
    (folder / "evil.yaml").write_text(yaml.safe_dump({**GENERATION, "task": "evil", "doc_to_text": attack}))

    error = refusal([str(folder / "evil.yaml")], tiny_model_dir, reversal_data_dir, tmp_path / "out")
    assert not marker.exists()
    assert isinstance(error, InputError) and "a task template was refused by the sandbox" in str(error)


def test_a_task_path_without_the_yaml_suffix_is_refused_before_lm_eval_imports_beside_it(
    tiny_model_dir, reversal_data_dir, tmp_path, monkeypatch
):
    folder = task_folder(tmp_path / "tasks")
    marker = tmp_path / "utils-imported"
    (folder / "utils.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef process(doc, results):\n  return {{}}\n"
    )
    task = yaml.safe_dump({**GENERATION, "task": "evil"}) + "process_results: !function utils.process\n"
    (folder / "evil_task").write_text(task)

    error = refusal([str(folder / "evil_task")], tiny_model_dir, reversal_data_dir, tmp_path / "out")
    assert not marker.exists()
    assert isinstance(error, ConfigError) and "is a path but not a .yaml task file" in str(error)
    monkeypatch.chdir(folder)  # a bare name that is a file in the working directory: lm-eval's path too
    with pytest.raises(ConfigError, match="evil_task is a file but not a .yaml task file"):
        run_eval_with(["evil_task"], tiny_model_dir, reversal_data_dir, tmp_path / "out2")


def test_a_metric_loaded_through_hf_evaluate_is_refused_before_its_script_runs(
    tiny_model_dir, reversal_data_dir, tmp_path
):
    folder = task_folder(tmp_path / "tasks")
    marker = tmp_path / "metric-ran"
    script = folder / "steal.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    metric = {"metric": str(script), "hf_evaluate": True, "aggregation": "mean", "higher_is_better": True}
    (folder / "evil.yaml").write_text(yaml.safe_dump({**GENERATION, "task": "evil", "metric_list": [metric]}))

    error = refusal([str(folder / "evil.yaml")], tiny_model_dir, reversal_data_dir, tmp_path / "out")
    assert not marker.exists()
    assert isinstance(error, ConfigError) and "steal.py' must be the name of one of" in str(error)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"metric": "exact_match", "hf_evaluate": True}, "hf_evaluate loads metric code"),
        ({"metric": "org/metric"}, "metric 'org/metric' must be the name of one of lm-eval's metrics"),
    ],
)
def test_hf_evaluate_and_metric_paths_are_refused(tmp_path, entry, message):
    folder = task_folder(tmp_path / "tasks")
    (folder / "t.yaml").write_text(yaml.safe_dump({**GENERATION, "task": "t", "metric_list": [entry]}))
    with pytest.raises(ConfigError, match=message):
        BenchmarkPlan.from_config(BenchmarkConfig(tasks=[str(folder / "t.yaml")]))


def test_an_include_outside_the_task_folder_is_refused_and_one_inside_is_merged(tmp_path):
    folder = task_folder(tmp_path / "tasks")
    (tmp_path / "outside.yaml").write_text("process_results: x\n")
    (folder / "out.yaml").write_text(yaml.safe_dump({"task": "out", "include": "../outside.yaml"}))
    with pytest.raises(
        ConfigError, match=r"includes \.\./outside\.yaml, which is not a \.yaml file in the task's"
    ):
        BenchmarkPlan.from_config(BenchmarkConfig(tasks=[str(folder / "out.yaml")]))

    (folder / "_base.yaml").write_text(yaml.safe_dump(GENERATION))
    (folder / "mine.yaml").write_text(yaml.safe_dump({"task": "mine", "include": "_base.yaml"}))
    plan = BenchmarkPlan.from_config(BenchmarkConfig(tasks=[str(folder / "mine.yaml"), "mmlu"]))
    assert plan.specs[0]["doc_to_text"] == GENERATION["doc_to_text"] and "include" not in plan.specs[0]
    assert plan.specs[1] == "mmlu"


def test_a_benign_local_task_still_runs_with_sandboxed_templates(tiny_model_dir, reversal_data_dir, tmp_path):
    folder = task_folder(tmp_path / "tasks")
    (folder / "plain.yaml").write_text(yaml.safe_dump({**GENERATION, "task": "plain"}))
    result = run_eval_with([str(folder / "plain.yaml")], tiny_model_dir, reversal_data_dir, tmp_path / "out")
    assert "distilled_bench_plain_exact_match" in result.metrics
