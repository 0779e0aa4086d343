"""Checkpoints in the store: kill -9 mid-training and resume to the same weights; partial ones never used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.common.config import to_dict
from components.common.errors import InputError
from components.common.store import open_store
from components.train import run
from components.train.checkpoint import CheckpointStore

REPO = Path(__file__).resolve().parents[2]


def adapter(config) -> dict[str, torch.Tensor]:
    return load_file(f"{config.output_dir}/adapter_model.safetensors")


def test_kill_9_mid_training_then_resume_reaches_the_uninterrupted_weights(make_config, tmp_path):
    common = {"max_steps": 12, "save_steps": 4, "save_total_limit": 2, "logging_steps": 5, "seed": 3}
    reference = make_config(
        **common,
        store_uri=str(tmp_path / "store-a"),
        output_dir=str(tmp_path / "a"),
        tensorboard_dir=str(tmp_path / "tb-a"),
    )
    run(reference)

    interrupted = make_config(
        **common,
        store_uri=str(tmp_path / "store-b"),
        output_dir=str(tmp_path / "b"),
        tensorboard_dir=str(tmp_path / "tb-b"),
    )
    config_file = tmp_path / "b.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(interrupted)))
    checkpoints = tmp_path / "store-b" / "runs" / "local" / "train" / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, "-m", "components.train", "--config", str(config_file)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300  # a hang guard for a loaded machine, not a speed check
    while not (checkpoints / "step-00000004" / "COMPLETE").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()

    result = run(interrupted)
    assert result.steps == 12
    assert result.resumed_from >= 4, "the second attempt continued from a checkpoint, not from scratch"
    got, want = adapter(interrupted), adapter(reference)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
    # Only the last save_total_limit complete checkpoints remain.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000008", "step-00000012"]


def test_an_incomplete_checkpoint_is_never_resumed_and_old_ones_are_pruned(tmp_path):
    store = open_store(str(tmp_path / "ckpt"))
    checkpoints = CheckpointStore(store, keep=2)
    local = tmp_path / "state"
    local.mkdir()
    (local / "trainer.json").write_text("{}")
    (local / "weights.bin").write_bytes(b"x" * 100)
    for step in (10, 20, 30):
        checkpoints.save(step, local)
    assert checkpoints.latest() == 30
    assert sorted({key.split("/")[0] for key in store.list("")}) == ["step-00000020", "step-00000030"]
    # A pod killed while uploading step 40: files written, no COMPLETE marker.
    store.write_text("step-00000040/trainer.json", "{}")
    assert checkpoints.latest() == 30
    # Or killed after the marker of a re-save but with a file missing.
    store.delete("step-00000030/weights.bin")
    assert checkpoints.latest() == 20


def test_checkpoints_and_live_tensorboard_go_to_s3(make_config, s3_endpoint, tmp_path):
    config = make_config(
        max_steps=4,
        save_steps=2,
        store_uri="s3://distill/team",
        run_id="run-7",
        tensorboard_sync_seconds=0.0,
    )
    run(config)
    keys = [
        item["Key"]
        for item in boto3.client("s3").list_objects_v2(Bucket="distill", Prefix="team/runs/run-7/train/")[
            "Contents"
        ]
    ]
    assert "team/runs/run-7/train/checkpoints/step-00000004/COMPLETE" in keys
    assert "team/runs/run-7/train/checkpoints/step-00000004/trainable.safetensors" in keys
    assert any(k.startswith("team/runs/run-7/train/tensorboard/events.out.tfevents") for k in keys)
    # A retry of the same run finds its newest checkpoint and has nothing left to do.
    first_loss = json.loads(Path(config.output_dir, "train_summary.json").read_text())["final_loss"]
    again = run(config)
    assert again.steps == 4 and again.resumed_from == 4
    assert again.final_loss == first_loss, "the loss recorded by the checkpoint, not NaN"


def test_a_checkpoint_of_another_lora_shape_is_refused_not_half_loaded(make_config, tmp_path):
    store = str(tmp_path / "store")
    run(make_config(max_steps=2, save_steps=2, store_uri=store, lora={"r": 8, "alpha": 16}))
    other = make_config(max_steps=4, save_steps=2, store_uri=store, lora={"r": 4, "alpha": 8})
    with pytest.raises(
        InputError, match="checkpoint step-00000002 does not match this model's trainable weights"
    ):
        run(other)
