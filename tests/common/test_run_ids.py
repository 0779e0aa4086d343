"""run_id becomes a path segment in the store: only names that cannot reach another run's prefix."""

from __future__ import annotations

import pytest

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.teacher import Config as TeacherConfig
from components.train import Config as TrainConfig


def teacher(run_id: str) -> TeacherConfig:
    return from_dict(TeacherConfig, {"dataset": "prompts.jsonl", "output_dir": "out", "run_id": run_id})


def train(run_id: str) -> TrainConfig:
    folders = {name: name for name in ("student_dir", "data_dir", "output_dir", "tensorboard_dir")}
    return from_dict(TrainConfig, {**folders, "run_id": run_id})


@pytest.mark.parametrize("make", [teacher, train])
@pytest.mark.parametrize("run_id", ["..", ".", "", "a/../other-run", "other run", "run\\x", "r:1", "rün"])
def test_a_run_id_that_is_not_a_plain_name_is_refused(make, run_id):
    with pytest.raises(ConfigError, match=r"run_id: .* letters, digits, '\.', '_' and '-'"):
        make(run_id)


@pytest.mark.parametrize("make", [teacher, train])
@pytest.mark.parametrize("run_id", ["local", "run-7", "2f1c9e7a-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "v1.2_rc"])
def test_plain_names_and_pipeline_run_ids_are_accepted(make, run_id):
    assert make(run_id).run_id == run_id
