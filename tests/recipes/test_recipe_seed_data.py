"""Recipe 1 (seed 000) reads the seed's own comment data as is: sharegpt rows whose human turn is the
prompt the seed built (its persona system prompt, the reply as the gpt turn), beside rows of named fields
that the recipe's template builds the same prompt from."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from components.common.config import from_dict
from components.teacher import Config
from components.teacher.readers import read_prompts

RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "recipes" / "api_teacher_lora_sft.yaml"
SYSTEM = "你是一个喜欢网上冲浪的B站网友。"
# The seed's first example, as its data holds it.
SEED_PROMPT = (
    "下面我将给出B站某视频及其评论区的相关信息，请根据这些信息，模仿B站网友的说话风格，直接给出对该评论或该视频的"
    "可能的回复（限50字）：视频标题: 黑神话悟空性能测试！需要什么显卡才能玩？\n视频简介: 从Steam Deck、780M、1060到"
    "3060、4060再到4080S、4090，各档显卡能不能流畅运行黑神话：悟空？\n父级评论内容: 回复 @xxx :所以黑的吹的都没什么意义"
)
SEED_ROW = {
    "system": SYSTEM,
    "conversations": [
        {"from": "human", "value": SEED_PROMPT},
        {"from": "gpt", "value": "楼上说得对，玩家要的是游戏体验，管他啥技术呢"},
    ],
}
FIELD_ROW = {
    "video_title": "黑神话悟空性能测试！需要什么显卡才能玩？",
    "video_desc": "从Steam Deck、780M、1060到3060、4060再到4080S、4090，各档显卡能不能流畅运行黑神话：悟空？",
    "parent_comment": "回复 @xxx :所以黑的吹的都没什么意义",
    "reply": "悟空冲！",
}


def test_the_seeds_sharegpt_comments_and_field_rows_make_the_same_prompt(tmp_path):
    dataset = tmp_path / "comments.jsonl"
    dataset.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in (SEED_ROW, FIELD_ROW)) + "\n")
    teacher = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))["teacher"]
    config = from_dict(Config, {**teacher, "dataset": str(dataset), "output_dir": str(tmp_path / "out")})

    seed, fields = read_prompts(config)

    for prompt in (seed, fields):
        assert prompt.messages == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": SEED_PROMPT},
        ]
    assert (seed.reference, fields.reference) == ("楼上说得对，玩家要的是游戏体验，管他啥技术呢", "悟空冲！")
