"""Each recipe runs in images that hold what its settings use. A recipe's run file becomes every stage's
Config as `submit --check` builds it; the packages those settings need are set against the packages of the
extras each stage's image installs (docker/<stage>.Dockerfile), built as the GPU images are, with the
build arguments the recipe's comments ask for (`--build-arg LOCAL_TEACHER=1`). No image is built."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from components.common.images import SHARED_IMAGES
from pipelines.run_check import STAGE_SPECS, check_stage_configs
from pipelines.submit import load_run_config, pipeline_defaults, pipeline_parameters
from tests.packaging.dockerfiles import REPO, arg_defaults, image_requirements

COMPILED = REPO / "pipelines" / "distill_pipeline.yaml"
RECIPES = sorted((REPO / "pipelines" / "recipes").glob("*.yaml"))
IMAGE_OF = {spec.prefix: SHARED_IMAGES.get(spec.image, spec.image) for spec in STAGE_SPECS}
TRACKER_PACKAGES = {"wandb": "wandb", "swanlab": "swanlab", "mlflow": "mlflow"}


def needed_packages(configs: dict[str, Any]) -> dict[str, dict[str, str]]:
    """image -> {package: the setting that needs it}, for the settings whose package is optional."""
    needs: dict[str, dict[str, str]] = {}

    def need(stage: str, package: str, setting: str) -> None:
        needs.setdefault(IMAGE_OF[stage], {})[package] = setting

    if train := configs.get("train"):
        if train.method == "qlora":
            need("train", "bitsandbytes", "train.method: qlora")
        if train.kd.teacher_8bit:
            need("train", "bitsandbytes", "train.kd.teacher_8bit")
        if train.deepspeed != "none":
            need("train", "deepspeed", f"train.deepspeed: {train.deepspeed}")
        if train.attention == "flash_attention_2":
            need("train", "flash-attn", "train.attention: flash_attention_2")
        if train.kd.kind == "on_policy" and train.kd.on_policy.engine == "vllm":
            need("train", "vllm", "train.kd.on_policy.engine: vllm")
        for tracker in train.report_to:
            need("train", TRACKER_PACKAGES[tracker], f"train.report_to: {tracker}")
    if teacher := configs.get("teacher"):
        if teacher.provider.name == "local":
            for package in ("torch", "transformers"):
                need("teacher", package, "teacher.provider.name: local")
            if teacher.provider.adapter:
                need("teacher", "peft", "teacher.provider.adapter")
            if teacher.provider.quantization != "none":
                need(
                    "teacher",
                    "bitsandbytes",
                    f"teacher.provider.quantization: {teacher.provider.quantization}",
                )
    if evaluate := configs.get("eval"):
        if evaluate.quantization != "none":
            need("eval", "bitsandbytes", f"eval.quantization: {evaluate.quantization}")
        if evaluate.engine == "vllm":
            need("eval", "vllm", "eval.engine: vllm")
        if evaluate.benchmarks.tasks:
            need("eval", "lm-eval", "eval.benchmarks.tasks")
        if evaluate.judge is not None:
            need("eval", "openai", "eval.judge")
    return needs


def image_packages(image: str, build_args: dict[str, str]) -> set[str]:
    """The distributions the image's extras name (flash-attn comes from its wheel, FLASH_ATTN=1)."""
    packages = {canonicalize_name(Requirement(line).name) for line in image_requirements(image, build_args)}
    if build_args.get("FLASH_ATTN", arg_defaults(image).get("FLASH_ATTN")) == "1":
        packages.add("flash-attn")
    return packages


def recipe_build_args(recipe: Path) -> dict[str, str]:
    """The `--build-arg KEY=VALUE` the recipe's comments ask for."""
    comments = "\n".join(line for line in recipe.read_text().splitlines() if line.lstrip().startswith("#"))
    return dict(re.findall(r"--build-arg (\w+)=([\w.;-]*\w)", comments))


def missing_packages(recipe: Path, assignments: list[str] = ()) -> dict[str, str]:
    """'image: package' -> the setting that needs it, for what the recipe's images lack."""
    params = load_run_config(recipe, list(assignments), pipeline_parameters(COMPILED))
    configs = check_stage_configs({**pipeline_defaults(COMPILED), **params})
    asked = recipe_build_args(recipe)
    missing = {}
    for image, needs in needed_packages(configs).items():
        build_args = {key: value for key, value in asked.items() if key in arg_defaults(image)}
        held = image_packages(image, build_args)
        missing.update(
            {f"{image}: {package}": setting for package, setting in needs.items() if package not in held}
        )
    return missing


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_each_recipe_runs_in_images_that_hold_what_its_settings_use(recipe):
    assert missing_packages(recipe) == {}


def test_the_recipes_settings_reach_each_image_they_need():
    # The mapping sees what the recipes use: 4-bit eval and QLoRA on ZeRO-2 (recipe 1), a local 8-bit
    # teacher with an adapter (recipe 5), whose image the recipe builds with LOCAL_TEACHER=1.
    recipe = REPO / "pipelines" / "recipes"
    params = load_run_config(recipe / "api_teacher_lora_sft.yaml", [], pipeline_parameters(COMPILED))
    needs = needed_packages(check_stage_configs({**pipeline_defaults(COMPILED), **params}))
    assert needs == {
        "train": {"bitsandbytes": "train.method: qlora", "deepspeed": "train.deepspeed: zero2"},
        "eval": {"bitsandbytes": "eval.quantization: 4bit"},
    }
    assert recipe_build_args(recipe / "local_teacher_offline_online_kd.yaml") == {"LOCAL_TEACHER": "1"}


def test_a_setting_whose_package_the_image_lacks_is_reported():
    recipe = REPO / "pipelines" / "recipes" / "api_teacher_lora_sft.yaml"
    assert missing_packages(recipe, ["train.report_to=[swanlab, mlflow]"]) == {
        "train: swanlab": "train.report_to: swanlab",  # built without TRACKERS=1
        "train: mlflow": "train.report_to: mlflow",  # in no extra
    }
    assert missing_packages(recipe, ["train.attention=flash_attention_2"]) == {
        "train: flash-attn": "train.attention: flash_attention_2"
    }


def test_the_trackers_build_argument_brings_wandb_and_swanlab():
    assert {"wandb", "swanlab"} <= image_packages("train", {"TRACKERS": "1"})
    assert not {"wandb", "swanlab"} & image_packages("train", {})
