"""YAML aliases ("billion laughs") in run files, stage configs and `--set` values are refused at load with
one line naming the file and line, before anything walks the expanded value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import submit

REPO = Path(__file__).resolve().parents[2]
# Nine levels of nine aliases: 9**9 (387 million) strings once expanded, from 400 bytes of YAML.
BOMB = "a0: &a0 [lol]\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return submit.compile_package(tmp_path_factory.mktemp("compiled") / "distill_pipeline.yaml")


def test_submit_check_refuses_a_run_file_with_an_alias(package, tmp_path, capsys):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("train_overrides: &common {lora: {r: 8}}\nmerge_overrides: *common\n")
    assert submit.main(["--check", "--package", str(package), "--config", str(run_file)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: run config {run_file}: line 2 uses the YAML alias *common")
    assert len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["config", "set"])
def test_a_stage_cli_refuses_an_alias_bomb_in_its_config_or_a_set_value(tmp_path, where):
    config = tmp_path / "merge.yaml"
    fields = "student_dir: b\ntrained_dir: t\noutput_dir: o\n"
    config.write_text(fields + (BOMB if where == "config" else ""))
    sets = ["--set", "dtype=[&x a, *x]"] if where == "set" else []
    done = subprocess.run(
        [sys.executable, "-m", "components.merge", "--config", str(config), *sets],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    where_text = f"config file {config}: line 5" if where == "config" else "--set dtype: line 1"
    assert f"{where_text} uses the YAML alias *" in done.stderr
    assert "aliases are refused" in done.stderr
