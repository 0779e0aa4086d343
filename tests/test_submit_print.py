"""`--set` reads numbers in any float spelling and refuses an empty value by name; `submit --check
--print` shows every value a run will use, secrets redacted (issue 26 items 2 and 5)."""

from __future__ import annotations

import json

import pytest

from pipelines.submit import main
from tests.conftest import COMPILED

CHECK = ["--check", "--package", str(COMPILED)]


def printed_run(capsys, *sets: str) -> dict:
    argv = [*CHECK, "--print", *(item for value in sets for item in ("--set", value))]
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("spelling", ["5e-5", "5E-05", "5.0e-5", "0.00005"])
def test_set_reads_a_learning_rate_in_any_float_spelling(capsys, spelling):
    run = printed_run(capsys, f"train_learning_rate={spelling}", f"train.kd.alpha={spelling}")
    assert run["parameters"]["train_learning_rate"] == 5e-5
    assert run["stages"]["train"]["learning_rate"] == 5e-5
    assert run["stages"]["train"]["kd"]["alpha"] == 5e-5


@pytest.mark.parametrize("assignment", ["train_learning_rate=", "train.kd.alpha= "])
def test_an_empty_set_value_is_one_line_naming_the_field(capsys, assignment):
    assert main([*CHECK, "--set", assignment]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"error: --set {assignment.split('=')[0]}: empty value")


def test_print_shows_parameters_and_every_stage_config_with_secrets_redacted(capsys):
    run = printed_run(
        capsys,
        "teacher.provider.extra_headers={X-Api-Key: sk-secret}",
        "teacher_base_url=https://api.example.com/v1?api-key=sk-query",
        "train.num_epochs=7",
    )
    assert set(run) == {"parameters", "stages"}
    assert set(run["stages"]) == {"download", "teacher", "train", "merge", "eval", "register"}
    assert run["parameters"]["seed"] == 0  # defaults are shown too
    assert run["stages"]["train"]["num_epochs"] == 7
    text = json.dumps(run)
    assert "sk-secret" not in text and "sk-query" not in text
    assert run["stages"]["teacher"]["provider"]["extra_headers"] == {"X-Api-Key": "***"}


def test_print_needs_check(capsys):
    assert main(["--dry-run", "--print", "--package", str(COMPILED)]) == 2
    assert "--print goes with --check" in capsys.readouterr().err
