"""wandb and swanlab are optional trackers beside TensorBoard, switched on by report_to (the `trackers`
extra): asking for one that is not installed stops the run in one line before any model is loaded; when
installed (in offline mode, so nothing leaves the machine) it receives the run's scalars."""

from __future__ import annotations

import importlib.util
import os

import pytest

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.records import write_records
from components.train import Config
from components.train.stage import run
from tests.train.conftest import reversal_records


def config(tmp_path, tiny_model_dir, **fields) -> Config:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_records(data / "train.jsonl", reversal_records(8))
    return from_dict(
        Config,
        {
            "student_dir": str(tiny_model_dir),
            "data_dir": str(data),
            "output_dir": str(tmp_path / "out"),
            "tensorboard_dir": str(tmp_path / "tb"),
            "max_steps": 2,
            "batch_size": 4,
            "logging_steps": 1,
            "max_length": 64,
            **fields,
        },
    )


@pytest.mark.parametrize("tracker", ["wandb", "swanlab"])
def test_a_tracker_that_is_not_installed_stops_the_run_before_loading(tracker, tmp_path, tiny_model_dir):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    run_config = config(tmp_path, tiny_model_dir, report_to=[tracker])
    with pytest.raises(
        ConfigError, match=rf"report_to: '{tracker}' is not installed .*kfp-distill\[trackers\]"
    ):
        run(run_config)
    assert not os.path.exists(run_config.output_dir)


@pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None, reason="wandb is not installed (trackers extra)"
)
def test_wandb_receives_the_scalars_offline(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run(config(tmp_path, tiny_model_dir, report_to=["wandb"]))
    history = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert history and history[0].stat().st_size > 0
