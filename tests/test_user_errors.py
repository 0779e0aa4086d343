"""Mistakes a user makes in the commands they type end in one line naming the field and the fix, exit 2,
no traceback, within seconds (issue 29 item 3). Each test runs the command as a user types it."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time

import pytest

from pipelines.check_task import check_run
from pipelines.submit import pipeline_defaults
from tests.conftest import COMPILED, REPO, run_command


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_submit_without_a_server_names_kfp_host_and_kfp_token(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("KFP_", "KUBE"))}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.submit", "--config", "pipelines/recipes/api_teacher_lora_sft.yaml"],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "KFP_HOST" in line and "KFP_TOKEN" in line


@pytest.mark.parametrize(
    ("run_file", "expected"),
    [
        (
            "train: {num_epoch: 3}\n",
            "train.num_epoch: unknown field of the train stage (did you mean 'num_epochs'?)",
        ),
        ("train: {lora: {dropot: 0.1}}\n", "train.lora.dropot: unknown field (did you mean 'dropout'?)"),
    ],
    ids=["stage-block", "nested-field"],
)
def test_a_typo_in_a_run_file_names_the_field_and_the_right_spelling(tmp_path, run_file, expected):
    path = tmp_path / "run.yaml"
    path.write_text(run_file)
    status, _, stderr = run_command("pipelines.submit", "--check", "--config", str(path))
    assert status == 2
    assert expected in one_error_line(stderr)


def test_a_mistyped_set_parameter_suggests_the_parameter():
    status, _, stderr = run_command("pipelines.submit", "--check", "--set", "train_learning_rat=0.1")
    assert status == 2
    assert "did you mean 'train_learning_rate'" in one_error_line(stderr)


def test_a_stage_cli_set_typo_suggests_the_field():
    status, _, stderr = run_command(
        "components.train", "--config", "components/train/configs/sft_lora.yaml", "--set", "lora.rr=8"
    )
    assert status == 2
    assert "lora.rr: unknown field (did you mean 'r'?)" in one_error_line(stderr)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("train_max_step=10", "did you mean 'train_max_steps'"),
        ("train_max_steps=abc", "train_max_steps must be number_integer, got str 'abc'"),
        ("train.num_epoch=3", "did you mean 'num_epochs'"),
    ],
)
def test_run_local_refuses_a_bad_setting_in_one_line(tmp_path, setting, expected):
    status, stdout, stderr = run_command("pipelines.run_local", "--workdir", str(tmp_path), "--set", setting)
    assert status == 2
    assert expected in one_error_line(stderr)
    assert not (tmp_path / "pipeline_root").exists()


def test_run_local_refuses_a_missing_dataset_in_the_check_task_before_any_model_is_built(tmp_path):
    status, stdout, stderr = run_command(
        "pipelines.run_local",
        "--workdir",
        str(tmp_path),
        "--dataset",
        str(tmp_path / "missing.jsonl"),
        limit_s=90,
    )
    assert status == 2
    line = one_error_line(stderr)
    assert "teacher_dataset:" in line and "missing.jsonl does not exist" in line and "check-run" in line
    assert "download-model" not in stdout and "download-model" not in (tmp_path / "run.log").read_text()


def test_the_check_task_refuses_a_missing_local_dataset(tmp_path, capsys):
    parameters = {**pipeline_defaults(COMPILED), "teacher_dataset": str(tmp_path / "missing.jsonl")}
    assert set(parameters) == set(inspect.signature(check_run.python_func).parameters)
    with pytest.raises(SystemExit) as stopped:
        check_run.python_func(**parameters)
    assert stopped.value.code == 1
    assert "teacher_dataset:" in one_error_line(capsys.readouterr().err)
