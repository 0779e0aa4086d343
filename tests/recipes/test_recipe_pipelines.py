"""Recipes 3 and 4 run whole, as their run files say, through kfp.local with tiny stand-ins: a tiny
student and a tiny local KD teacher made on the spot, the loopback demo teacher in place of the API, local
folders in place of the bucket, and a few steps instead of epochs. Each asserts the recipe's distinctive
behaviour on the artifacts the run leaves. (Recipes 1, 2 and 5 need bitsandbytes on a GPU, ZeRO-3 or a
hub dataset; their distinctive parts run stage by stage in the other tests of this folder.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from kfp import local
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from components.common.config import deep_merge
from components.common.records import read_records, write_records
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from pipelines.submit import load_run_config, pipeline_parameters
from tests.recipes.test_recipe_files import RECIPES, package  # noqa: F401  (the compiled-pipeline fixture)
from tests.recipes.test_recipe_sources import TEXT
from tests.train.conftest import reversal_record, reversal_records

pytestmark = pytest.mark.slow
RECIPE = {path.stem: path for path in RECIPES}
API_KEY = "recipe-test-key"
# What every recipe run here changes: the loopback teacher, a tiny student, no GPUs, tiny evaluation.
STAND_INS = {
    "student_source": "tiny://qwen2?warmup_steps=0",
    "teacher_provider": "openai",
    "teacher_model": "demo-teacher",
    "teacher_concurrency": 8,
    "teacher_max_tokens": 24,
    "train_gpus": 0,
    "train_batch_size": 4,
    "eval_max_new_tokens": 8,
    "eval_max_samples": 4,
    "eval_batch_size": 4,
}


def run_recipe(name: str, compiled: Path, workdir: Path, changes: dict[str, Any]) -> Path:
    """Run recipe `name` with STAND_INS and `changes` (overrides deep-merged) through kfp.local; returns
    the pipeline root holding every task's artifacts."""
    from pipelines.distill_pipeline import build_pipeline

    params = load_run_config(RECIPE[name], [], pipeline_parameters(compiled))
    for key, value in {**STAND_INS, **changes}.items():
        params[key] = deep_merge(params.get(key, {}), value) if key.endswith("_overrides") else value
    root = workdir / "pipeline_root"
    with start_teacher_server(api_key=API_KEY) as server:
        os.environ["TEACHER_API_KEY"] = API_KEY
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        params.update(store_uri=str(workdir / "store"), teacher_base_url=server.base_url)
        build_pipeline(retries=False)(**params)
    return root


def test_recipe_4_mixes_both_prompt_kinds_then_trains_lora_and_merges(tmp_path, package):  # noqa: F811
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.md").write_text(TEXT, encoding="utf-8")
    root = run_recipe(
        "raw_text_lora_kd",
        package,
        tmp_path,
        {
            "teacher_dataset": str(raw),
            "teacher_provider": "vllm",
            "teacher_test_ratio": 0.25,
            "teacher_overrides": {"text": {"chunk_chars": 120, "overlap_chars": 0}, "min_prompt_chars": 40},
            "train_max_steps": 3,
            # The demo teacher's made-up log-probabilities are per word, and match no token of the tiny
            # student; sparse top-k KD from stored logprobs is trained in tests/train/test_train_kd.py,
            # and their way from the teacher's logprobs.jsonl into the records in test_recipe_teacher_stage.
            "train_kd": "none",
        },
    )

    data = next(root.rglob("teacher-data-2/data"))
    records = read_records(data / "train.jsonl") + read_records(data / "test.jsonl")
    assert {record.extra["prompt_kind"] for record in records} == {"qa", "continue"}
    assert all(isinstance(record.extra["chunk"], int) for record in records)
    assert (data / "logprobs.jsonl").is_file()
    summary = json.loads(next(root.rglob("train-student/trained/train_summary.json")).read_text())
    assert summary["method"] == "lora" and summary["steps"] == 3
    assert (next(root.rglob("merge-adapter/merged")) / "config.json").is_file()


def test_recipe_3_runs_three_phases_at_temperatures_4_2_1_with_best_weights_per_phase(
    tmp_path,
    package,  # noqa: F811
    tiny_teacher_dir,
):
    def teacher_data(name: str, seed: int) -> str:
        folder = tmp_path / name
        folder.mkdir()
        write_records(folder / "train.jsonl", reversal_records(16, seed))
        write_records(folder / "test.jsonl", [reversal_record(w, "test") for w in ("abc", "kite")])
        return str(folder)

    write_demo_dataset(tmp_path / "prompts.jsonl", 24)
    phases = [
        {"name": "general", "max_steps": 2},
        {"name": "domain", "max_steps": 2},
        {"name": "task", "max_steps": 2},
    ]
    curriculum = json.loads(
        json.dumps(load_run_config(RECIPE["three_phase_kd"], [], pipeline_parameters(package)))
    )
    merged_phases = [
        {**phase, **small}
        for phase, small in zip(curriculum["train_overrides"]["curriculum"], phases, strict=True)
    ]
    root = run_recipe(
        "three_phase_kd",
        package,
        tmp_path,
        {
            "teacher_dataset": str(tmp_path / "prompts.jsonl"),
            "teacher_max_tokens": 96,
            "train_kd_teacher_source": str(tiny_teacher_dir),
            "train_overrides": {
                "datasets": {"general": teacher_data("general", 1), "domain": teacher_data("domain", 2)},
                "precision": "auto",
                "max_length": 64,
                "logging_steps": 1,
                "eval_steps": 2,
                "eval_samples": 2,
                "sample_count": 1,
                "sample_max_new_tokens": 4,
                "curriculum": merged_phases,
            },
        },
    )

    tensorboard = next(root.rglob("train-student/tensorboard"))
    events = EventAccumulator(str(tensorboard))
    events.Reload()
    assert [e.value for e in events.Scalars("train/kd_temperature")] == [4.0, 4.0, 2.0, 2.0, 1.0, 1.0]
    trained = next(root.rglob("train-student/trained"))
    assert sorted(p.parent.name for p in trained.glob("best/*/best.json")) == ["domain", "general", "task"]
    assert "samples/task/text_summary" in events.Tags()["tensors"]
