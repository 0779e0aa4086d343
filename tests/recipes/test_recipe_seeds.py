"""Each recipe is its seed (pipelines/recipes/*.yaml against the write-ups they are named after): the
values a run of it resolves to, as `submit --check --print` shows them, are the seed's own, its prompts
word for word; the header names the seed and says where the recipe differs."""

from __future__ import annotations

import json

import pytest

from pipelines.submit import main
from tests.recipes.conftest import RECIPES

RECIPE = {path.stem: path for path in RECIPES}
SEED_OF = {
    "api_teacher_lora_sft": "000",
    "reasoning_cot_full_ft": "001",
    "three_phase_kd": "002",
    "raw_text_lora_kd": "003",
    "local_teacher_offline_online_kd": "004",
}
BILIBILI_PROMPT = (
    "下面我将给出B站某视频及其评论区的相关信息，请根据这些信息，模仿B站网友的说话风格，直接给出对该评论或该视频的"
    "可能的回复（限50字）：视频标题: {{ video_title }}\n视频简介: {{ video_desc }}\n父级评论内容: {{ parent_comment }}"
)
# recipe -> (where in the resolved run, the seed's value)
SEED_VALUES = {
    "api_teacher_lora_sft": [
        ("parameters.student_source", "modelscope://Qwen/Qwen2.5-3B"),
        ("stages.teacher.provider.model", "qwen-plus"),
        ("stages.teacher.system_prompt", "你是一个喜欢网上冲浪的B站网友。"),
        ("stages.teacher.prompt_template", BILIBILI_PROMPT),
        ("stages.teacher.max_samples", 1000),
        ("stages.train.method", "qlora"),
        ("stages.train.num_epochs", 3),
        ("stages.train.precision", "bf16"),
        ("stages.eval.quantization", "4bit"),
    ],
    "reasoning_cot_full_ft": [
        ("parameters.student_source", "modelscope://Qwen/Qwen2.5-0.5B-Instruct"),
        ("stages.teacher.dataset", "hf://datasets/AI-MO/NuminaMath-CoT"),
        ("stages.teacher.provider.model", "deepseek-reasoner"),
        ("stages.teacher.judge.provider.model", "deepseek-chat"),
        ("stages.teacher.max_samples", 100000),
        ("stages.train.method", "full"),
        ("stages.train.deepspeed", "zero3"),
        ("stages.train.max_length", 8192),
        ("stages.train.batch_size", 1),
        ("stages.train.gradient_accumulation_steps", 12),
        ("stages.train.learning_rate", 1e-5),
        ("stages.train.num_epochs", 3),
        ("stages.train.lr_scheduler", "cosine"),
        ("stages.train.warmup_ratio", 0.1),
        ("stages.train.precision", "bf16"),
        ("stages.train.logging_steps", 10),
        ("stages.train.save_steps", 500),
    ],
    "three_phase_kd": [
        ("stages.train.method", "lora"),
        ("stages.train.precision", "fp16"),
        ("stages.train.start_phase", 1),
        ("stages.train.end_phase", 3),
        ("stages.train.curriculum.0.temperature", 4.0),
        ("stages.train.curriculum.1.temperature", 2.0),
        ("stages.train.curriculum.2.temperature", 1.0),
        ("stages.train.curriculum.0.learning_rate", 5e-5),
        ("stages.train.curriculum.1.learning_rate", 3e-5),
        ("stages.train.curriculum.2.learning_rate", 1e-5),
        ("stages.train.curriculum.1.mix.main", {"from": 0.3, "to": 0.7}),
        ("stages.train.curriculum.2.mix", {"main": 1.0}),
        ("stages.train.curriculum.0.batch_size", 8),
        ("stages.train.curriculum.1.batch_size", 6),
        ("stages.train.curriculum.2.batch_size", 4),
        ("stages.train.intermediate.balance", True),
    ],
    "raw_text_lora_kd": [
        ("stages.teacher.provider.model", "deepseek-chat"),
        ("stages.teacher.text.chunk_chars", 500),
        ("stages.train.method", "lora"),
        ("stages.train.batch_size", 4),
        ("stages.train.learning_rate", 5e-5),
        ("stages.train.num_epochs", 10),
        ("stages.train.max_length", 512),
    ],
    "local_teacher_offline_online_kd": [
        (
            "stages.teacher.mix",
            {"s3://distill/datasets/grpo_data.json": 0.7, "s3://distill/datasets/sft_data.json": 0.3},
        ),
        ("stages.teacher.provider.quantization", "8bit"),
        ("stages.teacher.provider.max_tokens", 512),
        ("stages.teacher.provider.temperature", 0.7),
        ("stages.train.method", "full"),
        ("stages.train.kd.temperature", 2.0),
        ("stages.train.kd.alpha", 0.5),
        ("stages.train.kd.teacher_8bit", True),
        ("stages.train.num_epochs", 3),
        ("stages.train.batch_size", 2),
        ("stages.train.gradient_accumulation_steps", 8),
        ("stages.train.learning_rate", 5e-5),
        ("stages.train.precision", "fp16"),
        ("stages.train.gradient_checkpointing", True),
    ],
}


def resolved(recipe: str, package_path, capsys) -> dict:
    argv = ["--check", "--print", "--config", str(RECIPE[recipe]), "--package", str(package_path)]
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def at(run: dict, path: str):
    value = run
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def test_every_recipe_has_its_seed():
    assert set(SEED_OF) == set(RECIPE) == set(SEED_VALUES)


@pytest.mark.parametrize("recipe", sorted(SEED_VALUES))
def test_a_recipe_resolves_to_its_seeds_values(recipe, package, capsys):  # noqa: F811
    run = resolved(recipe, package, capsys)
    found = {path: at(run, path) for path, _ in SEED_VALUES[recipe]}
    assert found == dict(SEED_VALUES[recipe])


@pytest.mark.parametrize("recipe", sorted(SEED_VALUES))
def test_a_recipes_header_names_its_seed_and_what_differs(recipe):
    header = RECIPE[recipe].read_text(encoding="utf-8").split("\n\n")[0]
    assert f"(seed {SEED_OF[recipe]}," in header.splitlines()[0]
    assert "# As the seed:" in header and "# Differs:" in header


def test_the_raw_text_prompts_are_the_seeds_word_for_word(package, capsys):  # noqa: F811
    from components.teacher.templates import template_source

    kinds = resolved("raw_text_lora_kd", package, capsys)["stages"]["teacher"]["text"]["kinds"]
    assert kinds == {"qa_zh": 0.5, "continue_zh": 0.5}
    assert template_source("qa_zh").strip() == "根据以下文本内容，提出一个问题并回答：\n\n{{ chunk }}"
    assert template_source("continue_zh").strip() == "请续写以下文本，保持相同的写作风格：\n\n{{ chunk }}"
