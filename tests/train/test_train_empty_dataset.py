"""Train refuses a teacher dataset without records with one clear error, before any model is built."""

from __future__ import annotations

import pytest

from components.common.errors import InputError
from components.common.records import write_records
from components.train.stage import run
from tests.train.conftest import reversal_record


def test_an_empty_teacher_dataset_is_refused_with_a_clear_message(make_config, tmp_path):
    data = tmp_path / "teacher-data"
    write_records(data / "train.jsonl", [])
    write_records(data / "test.jsonl", [reversal_record("abc", "test")])
    with pytest.raises(InputError, match=r"^the main training data holds no records: nothing to train on"):
        run(make_config(data_dir=str(data)))
