"""The data sources the recipes read: Hugging Face datasets (offline, from a cache the test lays out as a
download would), parquet files, arbitrary rows through a field mapping with a Jinja template over several
fields, and raw text turned into a mix of question-answer and continuation prompts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.teacher import Config
from components.teacher.chunking import chunk_text
from components.teacher.quality import FilterCounts, select_prompts
from components.teacher.readers import read_prompts
from tests.recipes.conftest import (
    COMMENTS,
    TEXT,
    lay_out_hub_cache,
    messages,
    parquet_bytes,
)

TEMPLATE = "视频标题：{{ video_title }}\n视频简介：{{ video_desc }}\n评论：{{ parent_comment }}\n请回复这条评论（限50字）"


def config(tmp_path: Path, dataset: str, **fields) -> Config:
    return from_dict(Config, {"dataset": dataset, "output_dir": str(tmp_path / "out"), **fields})


def test_parquet_rows_through_fields_and_a_multi_field_template(tmp_path):
    pq.write_table(pa.Table.from_pylist(COMMENTS), tmp_path / "comments.parquet")
    settings = dict(
        fields={"answer": "reply"},
        prompt_template=TEMPLATE,
        system_prompt="你是一个喜欢网上冲浪的B站网友。",
    )
    prompts = list(read_prompts(config(tmp_path, str(tmp_path / "comments.parquet"), **settings)))

    assert [p.messages for p in prompts][0] == [
        {"role": "system", "content": "你是一个喜欢网上冲浪的B站网友。"},
        {
            "role": "user",
            "content": "视频标题：猫猫做饭\n视频简介：第一次下厨\n评论：好可爱\n请回复这条评论（限50字）",
        },
    ]
    assert [p.reference for p in prompts] == ["哈哈哈", "真的吗"]
    assert prompts[1].source.endswith("comments.parquet:row 2")


def test_fields_reach_nested_values_and_a_missing_question_names_the_row(tmp_path):
    rows = [{"question": "Sum 1..3?", "solutions": ["6", "six"]}, {"solutions": ["?"]}]
    (tmp_path / "taco.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    settings = dict(fields={"question": "question", "answer": "solutions.0"})
    reader = read_prompts(config(tmp_path, str(tmp_path / "taco.jsonl"), **settings))

    first = next(reader)
    assert first.messages == [{"role": "user", "content": "Sum 1..3?"}] and first.reference == "6"
    with pytest.raises(InputError, match=r"taco.jsonl:2: field 'question' is missing"):
        next(reader)


def test_a_template_reading_a_field_the_row_lacks_names_the_row(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"video_title": "x"}]), tmp_path / "c.parquet")
    settings = dict(fields={"answer": "reply"}, prompt_template=TEMPLATE)
    with pytest.raises(InputError, match=r"c.parquet:row 1: .*video_desc"):
        list(read_prompts(config(tmp_path, str(tmp_path / "c.parquet"), **settings)))


def test_a_template_over_fields_is_sandboxed_and_checked_at_load(tmp_path):
    hostile = "{{ title.__class__.__mro__ }}"
    with pytest.raises(ConfigError, match="prompt_template"):
        config(tmp_path, str(tmp_path / "x.jsonl"), fields={"answer": "a"}, prompt_template=hostile)
    with pytest.raises(ConfigError, match="fields.question"):
        config(tmp_path, str(tmp_path / "x.jsonl"), fields={"answer": "a"})


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hugging_face_dataset_split_and_config_offline(tmp_path, offline_hub):
    readme = (
        "---\nconfigs:\n- config_name: easy\n  data_files:\n  - split: train\n    path: easy/train.parquet\n"
        "  - split: test\n    path: easy/test.parquet\n- config_name: hard\n  data_files:\n"
        "  - split: train\n    path: hard/train.parquet\n---\n"
    )
    commit = lay_out_hub_cache(
        offline_hub,
        "AI-MO/NuminaMath-CoT",
        {
            "README.md": readme.encode(),
            "easy/train.parquet": parquet_bytes([messages("1+1?", "2"), messages("2+2?", "4")]),
            "easy/test.parquet": parquet_bytes([messages("3+3?", "6")]),
            "hard/train.parquet": parquet_bytes([messages("x^2=4?", "2")]),
        },
    )

    def read(**fields):
        return list(read_prompts(config(tmp_path, **fields)))

    easy = read(dataset="hf://datasets/AI-MO/NuminaMath-CoT", dataset_config="easy")
    assert [(p.messages[-1]["content"], p.reference) for p in easy] == [("1+1?", "2"), ("2+2?", "4")]
    assert easy[0].source == "hf://datasets/AI-MO/NuminaMath-CoT:train:row 1"
    test = read(
        dataset=f"hf://datasets/AI-MO/NuminaMath-CoT@{commit}", dataset_config="easy", dataset_split="test"
    )
    assert [p.reference for p in test] == ["6"]
    hard = read(dataset="hf://datasets/AI-MO/NuminaMath-CoT", dataset_config="hard")
    assert [p.reference for p in hard] == ["2"]
    with pytest.raises(InputError, match="dataset_split"):
        read(dataset="hf://datasets/AI-MO/NuminaMath-CoT", dataset_config="hard", dataset_split="validation")


def test_a_hugging_face_dataset_missing_offline_is_explained(tmp_path, offline_hub):
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        list(read_prompts(config(tmp_path, "hf://datasets/org/absent")))
    with pytest.raises(ConfigError, match="hf://datasets/org/name"):
        config(tmp_path, "hf://org/model-not-dataset")


def test_raw_text_mixes_question_and_continuation_prompts_keeping_chunk_and_kind(tmp_path):
    (tmp_path / "book.md").write_text(TEXT, encoding="utf-8")
    settings = dict(
        dataset_format="text",
        text={"chunk_chars": 120, "kinds": {"qa": 0.5, "continue": 0.5}},
        min_prompt_chars=40,
    )
    cfg = config(tmp_path, str(tmp_path / "book.md"), **settings)
    counts = FilterCounts()
    kept = list(select_prompts(read_prompts(cfg), dedup=False, min_chars=40, counts=counts))

    kinds = Counter(p.extra["prompt_kind"] for p in kept)
    assert set(kinds) == {"qa", "continue"}
    for prompt in kept:
        opening = (
            "Read the passage below" if prompt.extra["prompt_kind"] == "qa" else "Continue the following"
        )
        assert prompt.messages[0]["content"].startswith(opening)
        assert isinstance(prompt.extra["chunk"], int)
    # "## Notes" alone and the tails cut from long sentences are chunks shorter than min_prompt_chars,
    # though their rendered prompts (template + chunk) are longer: they are dropped, the rest kept.
    chunks = chunk_text(TEXT, 120)
    assert counts.too_short == sum(len(c.text) < 40 for c in chunks) == 5
    assert len(kept) == len(chunks) - 5
    assert all(p.source_chars >= 40 for p in kept)
    # The same seed gives every chunk the same template again.
    again = [p.extra["prompt_kind"] for p in select_prompts(read_prompts(cfg), dedup=False, min_chars=40)]
    assert again == [p.extra["prompt_kind"] for p in kept]
