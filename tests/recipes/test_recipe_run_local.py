"""`python -m pipelines.run_local --config <recipe>` runs a recipe on this machine with the stand-ins the
recipe tests use (pipelines/recipe_stand_ins.py) and says what it substituted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.recipe_stand_ins import laptop_run
from pipelines.run_local import COMPILED, main
from pipelines.submit import load_run_config, pipeline_parameters
from tests.recipes.conftest import RECIPES

RECIPE = {path.stem: path for path in RECIPES}


@pytest.mark.parametrize("recipe", sorted(RECIPE))
def test_every_recipe_on_stand_ins_passes_the_run_check(recipe, tmp_path):
    """What runs on the laptop is still the recipe: every stage's Config accepts the substituted run, and
    each substitution is named."""
    from pipelines.run_check import check_stage_configs
    from pipelines.submit import pipeline_defaults

    params = load_run_config(RECIPE[recipe], [], pipeline_parameters(COMPILED))
    run = laptop_run(params, tmp_path)
    check_stage_configs({**pipeline_defaults(COMPILED), **run.params})
    assert run.params["student_source"].startswith("tiny://") and run.params["train_gpus"] == 0
    assert any(line.startswith("student_source: ") for line in run.substituted)
    assert (tmp_path / "raw").is_dir() or (tmp_path / "prompts.jsonl").is_file()
    # Only what needs a GPU is swapped, as in the recipe tests: DeepSpeed, bf16 and bitsandbytes stay.
    recipe_train, train = params.get("train_overrides") or {}, run.params.get("train_overrides") or {}
    assert train.get("deepspeed") == recipe_train.get("deepspeed")
    assert train.get("precision") == {"fp16": "bf16"}.get(
        recipe_train.get("precision"), recipe_train.get("precision")
    )
    assert (train.get("kd") or {}).get("teacher_8bit") == (recipe_train.get("kd") or {}).get("teacher_8bit")
    for stage in ("teacher", "eval"):
        recipe_stage, stage_run = (
            params.get(f"{stage}_overrides") or {},
            run.params.get(f"{stage}_overrides") or {},
        )
        assert (stage_run.get("provider") or stage_run).get("quantization") == (
            recipe_stage.get("provider") or recipe_stage
        ).get("quantization")


@pytest.mark.slow
def test_run_local_runs_the_raw_text_recipe_and_says_what_it_substituted(tmp_path, capsys):
    status = main(["--config", str(RECIPE["raw_text_lora_kd"]), "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "substituted for this laptop" in out and "student_source: 'hf://Qwen/Qwen2.5-7B-Instruct'" in out
    eval_json = json.loads(next(tmp_path.rglob("eval.json")).read_text())
    assert "distilled_rouge_l" in eval_json["metrics"]
    summary = json.loads(next(tmp_path.rglob("train_summary.json")).read_text())
    # The recipe's top-k KD runs on the served tiny teacher's top-20, not swapped for none.
    kd = summary["kd_alignment"]
    assert summary["kd"] == "topk" and kd["matched_positions"] > 0 and kd["mean_candidates"] == 20
    records = [
        json.loads(line) for line in next(tmp_path.rglob("alpaca/train.jsonl")).read_text().splitlines()
    ]
    assert {row["category"] for row in records} <= {"问答", "文章生成"} and records


@pytest.mark.slow
def test_run_local_runs_recipe_5_with_its_8bit_teachers_bf16_and_its_validation_file(tmp_path, capsys):
    """Seed 004's recipe on the laptop: its 8-bit base + adapter teachers (a tiny teacher and adapter),
    fp16 swapped for bf16 and said so, and the eval on a stand-in for its val.json."""
    status = main(["--config", str(RECIPE["local_teacher_offline_online_kd"]), "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert (
        "train.precision: fp16 -> bf16" in out and "eval_validation: 's3://distill/datasets/val.json'" in out
    )
    substituted = out.split("substituted for this laptop")[1].split("\nlog: ")[0]
    assert "quantization" not in substituted and "teacher_8bit" not in substituted  # bitsandbytes stays
    assert "provider.quantization: 8bit runs on the CPU" in out  # the 8-bit teacher, on the CPU
    summary = json.loads(next(tmp_path.rglob("train_summary.json")).read_text())
    assert summary["precision"] == "bf16"
    records = [json.loads(line) for line in next(tmp_path.rglob("teacher-data*/data/train.jsonl")).open()]
    assert {Path(record["teacher"]["params"]["adapter"]).name for record in records} == {
        "tiny-teacher-adapter"
    }
    evaluated = json.loads(next(tmp_path.rglob("eval.json")).read_text())
    gold = {row["output"] for row in json.loads((tmp_path / "stand-ins" / "val.json").read_text())}
    assert {sample["teacher"] for sample in evaluated["samples"]} == gold
