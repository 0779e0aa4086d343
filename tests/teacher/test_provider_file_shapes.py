"""The published recipes' teacher_config.yaml shape, `model: {deepseek: {api_key, base_url, model}}`, is a
provider file the teacher stage takes as is (seed 000), with its api_key left empty: a key written there
is refused in one line, since keys come from the environment only."""

from __future__ import annotations

import pytest

from components.common.errors import ConfigError
from components.common.records import read_records
from components.teacher.stage import run
from pipelines.demo_teacher import write_demo_dataset
from tests.teacher.conftest import teacher_config

SEED_FILE = """model:
  deepseek:
    api_key:
    base_url: {base_url}
    model: demo-teacher
  qwen:
    api_key:
    base_url: https://dashscope.aliyuncs.com/compatible-mode/v1
"""


def test_the_seeds_teacher_config_yaml_names_the_teacher(tmp_path, keyed_server):
    write_demo_dataset(tmp_path / "prompts.jsonl", 4)
    (tmp_path / "teacher_config.yaml").write_text(SEED_FILE.format(base_url=keyed_server.base_url))
    config = teacher_config(
        tmp_path,
        "",
        provider={"name": "deepseek", "base_url": None},
        provider_config=str(tmp_path / "teacher_config.yaml"),
        test_ratio=0.0,
    )

    run(config)

    records = read_records(tmp_path / "out" / "train.jsonl")
    assert len(records) == 4 and {record.teacher["model"] for record in records} == {"demo-teacher"}


def test_a_key_written_in_the_seeds_shape_is_refused_by_name(tmp_path, keyed_server):
    write_demo_dataset(tmp_path / "prompts.jsonl", 4)
    text = SEED_FILE.format(base_url=keyed_server.base_url).replace("api_key:\n", "api_key: sk-leaked\n", 1)
    (tmp_path / "teacher_config.yaml").write_text(text)
    config = teacher_config(
        tmp_path,
        "",
        provider={"name": "deepseek", "base_url": None},
        provider_config=str(tmp_path / "teacher_config.yaml"),
    )

    with pytest.raises(ConfigError, match=r"model\.deepseek\.api_key holds a key") as error:
        run(config)
    assert "sk-leaked" not in str(error.value)
