"""provider.name: dataset: the teacher stage asks no one and passes each labelled prompt through with its
gold answer (seed 004's KD on a dataset's own answers); train then trains on those records."""

from __future__ import annotations

import json

from components.common.config import from_dict
from components.common.records import read_records
from components.teacher.stage import run
from components.train import Config as TrainConfig
from components.train.stage import run as train
from tests.teacher.conftest import teacher_config

ROWS = [
    {"instruction": f"Reverse the letters of: {word}", "input": "", "output": word[::-1]}
    for word in ("abc", "kite", "lamp", "moon", "tree", "hello")
] + [{"instruction": "Reverse the letters of: sun", "input": "", "output": ""}]


def test_labelled_records_pass_through_with_their_gold_answers_and_train(tmp_path, tiny_model_dir):
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    config = teacher_config(
        tmp_path, "", provider={"name": "dataset", "base_url": None}, test_ratio=0.0, min_answered_ratio=0.5
    )

    result = run(config)

    records = read_records(tmp_path / "out" / "train.jsonl")
    gold = {row["instruction"]: row["output"] for row in ROWS if row["output"]}
    assert {record.messages[-2]["content"]: record.answer for record in records} == gold
    assert {record.teacher["provider"] for record in records} == {"dataset"}
    assert result.metrics["records"] == 6
    trained = train(
        from_dict(
            TrainConfig,
            {
                "student_dir": str(tiny_model_dir),
                "data_dir": str(tmp_path / "out"),
                "output_dir": str(tmp_path / "trained"),
                "tensorboard_dir": str(tmp_path / "tb"),
                "max_steps": 2,
                "batch_size": 2,
                "max_length": 64,
            },
        )
    )
    assert trained.steps == 2
