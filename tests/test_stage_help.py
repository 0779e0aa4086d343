"""`python -m components.<stage> --help` lists every Config field (dotted name, type, default, help) at
once, without loading the stage's code; `--print-config` prints the resolved Config and runs nothing
(issue 29 item 1)."""

from __future__ import annotations

import dataclasses
import importlib
import typing

import pytest
import yaml

from components.common.config import load_config, to_dict
from tests.conftest import run_command

STAGES = ["download", "teacher", "train", "merge", "evaluate", "register"]


def leaf_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of the fields a YAML file sets, nested dataclasses (and lists of them) walked into."""
    names = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            names += leaf_fields(hint, f"{prefix}{f.name}.")
        elif typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
            names += leaf_fields(args[0], f"{prefix}{f.name}[].")
        elif f.init:
            names.append(prefix + f.name)
    return names


@pytest.mark.parametrize("stage", STAGES)
def test_help_lists_every_field_within_seconds(stage):
    status, stdout, _ = run_command(f"components.{stage}", "--help", limit_s=5)
    assert status == 0
    listed = [
        line.split()[0]
        for line in stdout.split("Config fields (YAML keys")[1].splitlines()
        if line.startswith("  ") and not line.startswith("    ")
    ]
    config = importlib.import_module(f"components.{stage}").Config
    assert listed == leaf_fields(config)


def test_help_shows_type_default_and_help_of_a_field():
    _, stdout, _ = run_command("components.train", "--help", limit_s=5)
    assert "  lora.r  int = 16\n    LoRA rank of the update matrices." in stdout
    assert "  num_epochs  float = 1.0\n    Passes over the training records when max_steps <= 0." in stdout
    assert "  method  'lora' | 'qlora' | 'full' = 'lora'" in stdout


def test_print_config_prints_the_resolved_config_and_runs_nothing():
    path = "components/train/configs/sft_lora.yaml"
    status, stdout, stderr = run_command(
        "components.train", "--config", path, "--set", "lora.r=4", "--print-config", limit_s=10
    )
    assert status == 0, stderr
    from components.train import Config

    assert yaml.safe_load(stdout) == to_dict(load_config(Config, path, {"lora": {"r": 4}}))
    assert yaml.safe_load(stdout)["lora"]["r"] == 4
