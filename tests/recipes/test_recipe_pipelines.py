"""The five recipes run whole, as their run files say, through kfp.local with tiny stand-ins: a tiny
student and a tiny local teacher (with a LoRA adapter) made on the spot, the loopback demo teacher in place
of the APIs, local folders and an offline Hugging Face cache in place of the bucket and the Hub, a few
steps instead of epochs. Each keeps its recipe's method, quantization (bitsandbytes on the CPU), precision,
DeepSpeed stage (on one CPU rank), KD kind and curriculum; only what needs a GPU is swapped (GPU counts,
flash-attn, vLLM servers, fp16 autocast), and each test prints what. Each test asserts the recipe's distinctive behaviour
on the artifacts the run leaves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from kfp import local
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from components.common.approved_hosts import APPROVED_HOSTS_ENV
from components.common.config import deep_merge
from components.common.records import read_records, write_records
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from pipelines.model_teacher import start_model_teacher
from pipelines.recipe_stand_ins import STAND_INS, drop_mix, gpu_swaps, point_judge_at, validation_file
from pipelines.submit import load_run_config, pipeline_parameters
from tests.recipes.conftest import COMMENTS, RECIPES, TEXT, lay_out_hub_cache, messages, parquet_bytes
from tests.train.conftest import reversal_record, reversal_records

pytestmark = pytest.mark.slow
RECIPE = {path.stem: path for path in RECIPES}
API_KEY = "recipe-test-key"


def run_recipe(
    name: str,
    compiled: Path,
    workdir: Path,
    changes: dict[str, Any],
    judge_base_url: bool = False,
    served_model: Path | None = None,
) -> Path:
    """Run recipe `name` with STAND_INS and `changes` (overrides deep-merged) through kfp.local; returns
    the pipeline root holding every task's artifacts. `judge_base_url`: the judge asks the loopback
    teacher too. `served_model`: the teacher API serves this model (as vLLM would) instead of the demo
    teacher."""
    from pipelines.distill_pipeline import build_pipeline

    params = load_run_config(RECIPE[name], [], pipeline_parameters(compiled))
    if "teacher_dataset" in changes:
        drop_mix(params)
    swaps = gpu_swaps(params)  # the same swaps as run_local --config makes
    for key, value in {**STAND_INS, **changes}.items():
        params[key] = deep_merge(params.get(key, {}), value) if key.endswith("_overrides") else value
    print(f"{name}: swapped for want of a GPU: {swaps}")
    root = workdir / "pipeline_root"
    serving = (
        start_model_teacher(served_model, model=STAND_INS["teacher_model"])
        if served_model
        else start_teacher_server(api_key=API_KEY)
    )
    with serving as server:
        os.environ["TEACHER_API_KEY"] = API_KEY
        os.environ[APPROVED_HOSTS_ENV] = server.base_url  # the ConfigMap distill-approved-hosts
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        params.update(store_uri=str(workdir / "store"), teacher_base_url=server.base_url)
        if judge_base_url:
            point_judge_at(params, server.base_url)
        build_pipeline(retries=False)(**params)
    return root


def test_recipe_4_mixes_both_prompt_kinds_then_trains_lora_with_top_k_kd_and_merges(
    tmp_path,
    package,  # noqa: F811
    tiny_teacher_dir,
):
    """The teacher is a tiny model with the student's tokenizer served as vLLM serves one, so its top-20
    log-probabilities are tokens of the student's vocabulary and the recipe's sparse top-k KD runs."""
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
            "teacher_max_tokens": 16,
            "teacher_test_ratio": 0.25,
            "teacher_overrides": {
                "text": {"chunk_chars": 60, "overlap_chars": 0},
                "min_prompt_chars": 20,
                "on_length": "keep",  # the tiny untrained teacher never ends an answer
                "min_answer_chars": 1,  # nor its answers of whitespace alone, which have no logprobs
            },
            "train_max_steps": 3,
        },
        served_model=tiny_teacher_dir,
    )

    data = next(root.rglob("teacher-data-2/data"))
    records = read_records(data / "train.jsonl") + read_records(data / "test.jsonl")
    assert {record.extra["prompt_kind"] for record in records} == {"qa_zh", "continue_zh"}
    assert all(isinstance(record.extra["chunk"], int) for record in records)
    assert (data / "logprobs.parquet").is_file()
    summary = json.loads(next(root.rglob("train-student/trained/train_summary.json")).read_text())
    assert (summary["method"], summary["kd"], summary["steps"]) == ("lora", "topk", 3)
    kd = summary["kd_alignment"]
    assert kd["matched_positions"] > 0 and kd["mean_candidates"] == 20
    events = EventAccumulator(str(next(root.rglob("train-student/tensorboard"))))
    events.Reload()
    assert all(e.value > 0 for e in events.Scalars("train/kd"))  # the student is pulled to the top-20
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


def test_recipe_1_builds_each_prompt_from_several_fields_under_the_persona(tmp_path, package):  # noqa: F811
    (tmp_path / "comments.parquet").write_bytes(parquet_bytes(COMMENTS * 4))
    root = run_recipe(
        "api_teacher_lora_sft",
        package,
        tmp_path,
        {
            "student_source": "tiny://qwen2?warmup_steps=0",
            "teacher_dataset": str(tmp_path / "comments.parquet"),
            # The demo teacher echoes the seed's long Chinese prompt: room for it, and no 50-character cap.
            "teacher_max_tokens": 64,
            "teacher_overrides": {"max_answer_chars": 400},
            "teacher_test_ratio": 0.5,
            "train_max_steps": 2,
        },
    )

    data = next(root.rglob("teacher-data-2/data"))
    records = read_records(data / "train.jsonl") + read_records(data / "test.jsonl")
    assert len(records) == 2  # the 8 rows hold 2 distinct prompts
    for record in records:
        system, user, _ = record.messages
        assert system == {"role": "system", "content": "你是一个喜欢网上冲浪的B站网友。"}
        assert user["content"].startswith("下面我将给出B站某视频及其评论区的相关信息")
        assert "（限50字）：视频标题: " in user["content"] and "\n父级评论内容: " in user["content"]
        assert record.reference in ("哈哈哈", "真的吗")
    summary = json.loads(next(root.rglob("train-student/trained/train_summary.json")).read_text())
    assert summary["method"] == "qlora" and summary["steps"] == 2
    assert summary["deepspeed"] == "zero2" and summary["precision"] == "bf16"
    scored = json.loads(next(root.rglob("evaluate-student/results/eval.json")).read_text())
    assert scored["config"]["quantization"] == "4bit"  # the student scored as it will be served
    report = next(root.rglob("evaluate-student/report")).read_text()
    assert "视频标题" in report  # the side-by-side samples of teacher and students


def test_recipe_2_judges_reasoning_answers_against_gold_and_exports_sharegpt(
    tmp_path,
    package,  # noqa: F811
    monkeypatch,
):
    cache = tmp_path / "hub"
    words = ["abc", "kite", "hello", "moon", "tree", "lamp"]
    rows = [
        messages(f"Reverse the letters of: {w}", w[::-1] if i % 3 else "wrong") for i, w in enumerate(words)
    ]
    lay_out_hub_cache(cache, "AI-MO/NuminaMath-CoT", {"data/train.parquet": parquet_bytes(rows)})
    # The task subprocesses read the Hub cache offline, and the judge's key.
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JUDGE_API_KEY", API_KEY)
    root = run_recipe(
        "reasoning_cot_full_ft",
        package,
        tmp_path,
        {
            "teacher_max_tokens": 96,
            "teacher_test_ratio": 0.25,
            "teacher_overrides": {"judge": {"provider": {"name": "openai", "model": "demo-teacher"}}},
            "train_max_steps": 2,
            "train_overrides": {"gradient_accumulation_steps": 2},
        },
        judge_base_url=True,
    )

    data = next(root.rglob("teacher-data-2/data"))
    kept = read_records(data / "train.jsonl") + read_records(data / "test.jsonl")
    # The rows whose gold answer is "wrong" are rejected, asked again with that gold answer as a hint
    # (hint_rejected, as the seed guides the chain of thought), accepted, and kept apart as DPO pairs.
    assert not (data / "rejected.jsonl").exists() or not read_records(data / "rejected.jsonl")
    hinted = read_records(data / "hinted.jsonl")
    assert len(kept) == 4 and len(hinted) == 2
    assert all(record.reasoning and record.judge["verdict"] == "accept" for record in kept)
    assert {record.answer for record in hinted} == {"wrong"}
    pairs = [json.loads(line) for line in (data / "dpo" / "train.jsonl").read_text().splitlines()]
    assert [pair["chosen"][0]["content"] for pair in pairs] == ["wrong", "wrong"]
    teacher_summary = json.loads((data / "summary.json").read_text())
    assert (
        teacher_summary["metrics"]["judge_hinted"] == teacher_summary["metrics"]["judge_hint_accepted"] == 2
    )
    exported = json.loads((data / "sharegpt" / "train.json").read_text())
    assert exported and all(row["conversations"][1]["value"].startswith("<think>") for row in exported)
    summary = json.loads(next(root.rglob("train-student/trained/train_summary.json")).read_text())
    assert summary["method"] == "full" and summary["steps"] == 2
    assert summary["deepspeed"] == "zero3" and summary["precision"] == "bf16"


def test_recipe_5_labels_with_a_base_plus_adapter_teacher_then_distills_online(
    tmp_path,
    package,  # noqa: F811
    tiny_teacher_dir,
    teacher_adapter,  # noqa: F811
):
    write_demo_dataset(tmp_path / "prompts.jsonl", 12)
    validation = validation_file(tmp_path / "val.json")  # the seed's data/val.json, in place of the bucket's
    root = run_recipe(
        "local_teacher_offline_online_kd",
        package,
        tmp_path,
        {
            "teacher_dataset": str(tmp_path / "prompts.jsonl"),
            "teacher_provider": "local",
            "teacher_model": str(tiny_teacher_dir),
            "teacher_max_tokens": 8,
            "teacher_overrides": {
                "provider": {"adapter": str(teacher_adapter)},
                "on_length": "keep",
            },
            "train_kd_teacher_source": str(tiny_teacher_dir),
            "train_max_steps": 2,
            "train_overrides": {
                "logging_steps": 1,
                "kd": {"teacher_adapter": str(teacher_adapter)},
            },
            "eval_validation": str(validation),
        },
    )

    data = next(root.rglob("teacher-data-2/data"))
    records = read_records(data / "train.jsonl")
    assert records and {record.teacher["params"]["adapter"] for record in records} == {str(teacher_adapter)}
    events = EventAccumulator(str(next(root.rglob("train-student/tensorboard"))))
    events.Reload()
    assert [e.value for e in events.Scalars("train/kd_temperature")] == [2.0, 2.0]
    summary = json.loads(next(root.rglob("train-student/trained/train_summary.json")).read_text())
    assert summary["precision"] == "bf16"
    evaluated = json.loads(next(root.rglob("evaluate-student/results/eval.json")).read_text())
    metrics = evaluated["metrics"]
    assert {"distilled_bleu", "distilled_rouge_l", "distilled_perplexity"} <= set(metrics)
    # Scored on the validation file's rows and gold answers, not on the teacher data's test split.
    gold = {row["output"] for row in json.loads(validation.read_text())}
    assert metrics["num_samples"] == len(gold) and {s["teacher"] for s in evaluated["samples"]} == gold
