"""teacher.mix: seed 004's 70% of the GRPO data and 30% of the SFT data mixed into one labelled set, a
seeded sample of each dataset's own rows, the same on every run."""

from __future__ import annotations

import json

import pytest

from components.common.errors import ConfigError
from components.common.records import read_records
from components.teacher.stage import run
from tests.teacher.conftest import teacher_config


def labelled(path, kind: str, count: int) -> str:
    rows = [
        {"instruction": f"{kind} question {i}", "input": "", "output": f"{kind} answer {i}"}
        for i in range(count)
    ]
    path.write_text(json.dumps(rows))
    return str(path)


def mixed_run(tmp_path, name: str, mix_of) -> list[str]:
    grpo, sft = (
        labelled(tmp_path / "grpo_data.json", "grpo", 20),
        labelled(tmp_path / "sft_data.json", "sft", 10),
    )
    config = teacher_config(
        tmp_path,
        "",
        dataset=grpo,
        mix=mix_of(grpo, sft),
        provider={"name": "dataset", "base_url": None},
        output_dir=str(tmp_path / name),
        store_uri=str(tmp_path / f"store-{name}"),
        test_ratio=0.0,
    )
    run(config)
    return sorted(record.messages[-2]["content"] for record in read_records(tmp_path / name / "train.jsonl"))


def test_seventy_percent_of_one_and_thirty_of_the_other_the_same_each_run(tmp_path):
    first = mixed_run(tmp_path, "a", lambda grpo, sft: {grpo: 0.7, sft: 0.3})
    assert sum(q.startswith("grpo") for q in first) == 14 and sum(q.startswith("sft") for q in first) == 3
    assert mixed_run(tmp_path, "b", lambda grpo, sft: {grpo: 0.7, sft: 0.3}) == first


def test_a_mix_must_hold_the_dataset(tmp_path):
    with pytest.raises(ConfigError, match="mix: the dataset .* must be one of its locations"):
        mixed_run(tmp_path, "c", lambda grpo, sft: {sft: 0.3})
