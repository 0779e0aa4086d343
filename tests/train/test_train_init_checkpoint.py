"""init_checkpoint (seed 002's `--start_stage 2 --checkpoint_path ./stage1_best`): phase 1 runs and keeps
its best weights; phase 2 then starts, through the stage's command, from that chosen checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.common.config import to_dict
from components.common.records import write_records
from components.train.stage import run
from tests.conftest import run_command
from tests.train.conftest import reversal_records

WEIGHTS = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}


def phases_config(make_config, tmp_path, method: str, **overrides):
    write_records(tmp_path / "domain" / "train.jsonl", reversal_records(40, seed=9))
    return make_config(
        method=method,
        datasets={"domain": str(tmp_path / "domain")},
        curriculum=[
            {"name": "general", "mix": {"main": 1.0}, "max_steps": 3, "learning_rate": 1e-2},
            # A rate too small to move a weight: phase 2's output is the weights it started from.
            {"name": "domain", "mix": {"domain": 1.0}, "max_steps": 1, "learning_rate": 1e-12},
        ],
        lr_scheduler="constant",
        warmup_ratio=0.0,
        **overrides,
    )


def train_cli(tmp_path, config, name: str) -> tuple[int, str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    status, _, stderr = run_command("components.train", "--config", str(path), limit_s=120)
    return status, stderr


@pytest.mark.parametrize("method", ["lora", "full"])
def test_phase_2_starts_from_phase_1s_chosen_best_checkpoint(make_config, tmp_path, method):
    first = phases_config(make_config, tmp_path, method, end_phase=1, eval_steps=1)
    run(first)
    best = tmp_path / "out" / "best" / "general"
    assert json.loads((best / "best.json").read_text())["step"] >= 1
    chosen = load_file(str(best / WEIGHTS[method]))

    second = phases_config(
        make_config,
        tmp_path,
        method,
        start_phase=2,
        init_checkpoint=str(best),
        output_dir=str(tmp_path / "2"),
    )
    status, stderr = train_cli(tmp_path, second, "phase2")
    assert status == 0, stderr

    started = load_file(str(tmp_path / "2" / WEIGHTS[method]))
    moved_in_phase_1 = [k for k in chosen if "lora_B" in k or method == "full"]
    assert moved_in_phase_1 and chosen.keys() == started.keys()
    for name in chosen:
        torch.testing.assert_close(started[name], chosen[name], rtol=0, atol=1e-9, msg=name)


def test_an_init_checkpoint_that_is_not_a_checkpoint_is_refused_in_one_line(make_config, tmp_path):
    (tmp_path / "notes").mkdir()
    config = phases_config(make_config, tmp_path, "lora", start_phase=2)
    path = tmp_path / "phase2.yaml"
    path.write_text(yaml.safe_dump({**to_dict(config), "init_checkpoint": str(tmp_path / "notes")}))
    status, _, stderr = run_command("components.train", "--config", str(path))
    last = stderr.strip().splitlines()[-1]
    assert status != 0 and "init_checkpoint" in last and "adapter_model.safetensors" in last, stderr
