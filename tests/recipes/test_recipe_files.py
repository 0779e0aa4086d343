"""Every shipped recipe is a run file the submitter accepts: its header says how to run it, and every
stage's Config accepts what it sets (`python -m pipelines.submit --check --config <recipe>`)."""

import pytest

from pipelines.submit import main
from tests.recipes.conftest import RECIPES


def test_the_five_recipes_are_shipped():
    assert [path.stem for path in RECIPES] == [
        "api_teacher_lora_sft",
        "local_teacher_offline_online_kd",
        "raw_text_lora_kd",
        "reasoning_cot_full_ft",
        "three_phase_kd",
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_opens_with_its_run_command_and_gpu_needs(recipe):
    header = recipe.read_text(encoding="utf-8").split("\n\n")[0]
    assert header.startswith("# Recipe ")
    assert f"python -m pipelines.submit --config pipelines/recipes/{recipe.name}" in header
    assert "# GPUs:" in recipe.read_text(encoding="utf-8")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_passes_the_submitters_check(recipe, package, capsys):
    assert main(["--check", "--config", str(recipe), "--package", str(package)]) == 0, capsys.readouterr().err
    assert "run config OK" in capsys.readouterr().out


def test_a_recipe_with_a_misspelt_field_is_refused_by_name(package, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(RECIPES[0].read_text(encoding="utf-8").replace("num_epochs: 3", "num_epoch: 3"))
    assert main(["--check", "--config", str(broken), "--package", str(package)]) == 2
    assert "num_epoch" in capsys.readouterr().err


def test_the_commands_in_a_recipes_header_change_only_what_they_name(package):
    """`--set teacher.fields.question=...` adds to the run file's teacher overrides instead of replacing them."""
    from pipelines.submit import load_run_config, pipeline_parameters

    recipe = next(path for path in RECIPES if path.stem == "reasoning_cot_full_ft")
    assignments = [
        "teacher_dataset=hf://datasets/BAAI/TACO",
        "teacher_dataset_format=auto",
        "teacher.fields.question=question",
        "teacher.fields.answer=solutions",
    ]
    params = load_run_config(recipe, assignments, pipeline_parameters(package))
    overrides = params["teacher_overrides"]
    assert overrides["fields"] == {"question": "question", "answer": "solutions"}
    assert overrides["judge"]["enabled"] and overrides["export"] == ["sharegpt", "dpo"]
    argv = ["--check", "--config", str(recipe), "--package", str(package)]
    assert main([*argv, *(item for a in assignments for item in ("--set", a))]) == 0


def test_three_phase_starts_a_phase_from_a_chosen_checkpoint_by_its_header_line(package, tmp_path, capsys):
    """The header's `--set train.init_checkpoint=...` (seed 002's --checkpoint_path) reaches the train
    stage; a local folder that holds no checkpoint is refused at the check, in one line naming the field."""
    import json

    recipe = next(str(path) for path in RECIPES if path.stem == "three_phase_kd")
    argv = ["--check", "--config", recipe, "--package", str(package), "--set", "train.start_phase=2"]
    chosen = "s3://distill/runs/earlier/model/best/general"
    assert main([*argv, "--print", "--set", f"train.init_checkpoint={chosen}"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert (stages["train"]["init_checkpoint"], stages["train"]["start_phase"]) == (chosen, 2)
    assert main([*argv, "--set", f"train.init_checkpoint={tmp_path}"]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        "init_checkpoint" in error and "adapter_model.safetensors" in error and len(error.splitlines()) == 1
    )
