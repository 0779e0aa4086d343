"""Checkpoints in the store: kill -9 mid-training and resume to the same weights; partial ones never used."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import load_file

from components.common.errors import InputError
from components.common.store import open_store
from components.train.checkpoint import CheckpointStore
from components.train.stage import run
from tests.train.conftest import plant_code_in_optimizer_state, train_until_killed

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
    train_until_killed(interrupted, tmp_path / "b.yaml", step=4)
    checkpoints = tmp_path / "store-b" / "runs" / "local" / "train" / "checkpoints"
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


def test_a_checkpoint_of_another_configuration_is_refused_naming_the_difference(make_config, tmp_path):
    store = str(tmp_path / "store")
    first_run = {"max_steps": 4, "save_steps": 2, "store_uri": store, "run_id": "run-1"}
    first = make_config(**first_run, lora={"r": 8, "alpha": 16})
    run(first)
    marker = json.loads(Path(store, "runs/run-1/train/checkpoints/step-00000004/COMPLETE").read_text())
    assert marker["run"]["run_id"] == "run-1" and marker["run"]["owner"]["pid"] == os.getpid()
    assert marker["run"]["config"]["lora.r"] == 8
    other = make_config(**first_run, lora={"r": 4, "alpha": 8})
    with pytest.raises(
        InputError,
        match=r"checkpoint step-00000004 .* another configuration \(lora.alpha: 16 -> 8; lora.r: 8 -> 4\)",
    ):
        run(other)
    # Same fields, other data: the inputs are compared by content.
    data = tmp_path / "other-data"
    data.mkdir()
    (data / "train.jsonl").write_text(
        "\n".join(Path(first.data_dir, "train.jsonl").read_text().splitlines()[:-1])
    )
    moved = make_config(**first_run, lora={"r": 8, "alpha": 16}, data_dir=str(data))
    with pytest.raises(InputError, match=r"\(data_dir: its content differs\)"):
        run(moved)
    # Where outputs go and how often to log is no reason to refuse.
    again = make_config(
        **first_run, lora={"r": 8, "alpha": 16}, output_dir=str(tmp_path / "elsewhere"), logging_steps=1
    )
    assert run(again).resumed_from == 4


@pytest.mark.parametrize(
    ("rewrite_marker", "refusal"),
    [
        (False, "optimizer.pt in .* is not the file that was saved"),
        (True, "optimizer.pt holds more than tensors and plain data, so loading it could run code"),
    ],
)
def test_code_planted_in_a_checkpoint_is_never_run_and_the_resume_is_refused(
    make_config, tmp_path, rewrite_marker, refusal
):
    config = make_config(max_steps=4, save_steps=2, store_uri=str(tmp_path / "store"))
    run(config)
    evidence = tmp_path / "code-ran.txt"
    plant_code_in_optimizer_state(config, evidence, rewrite_marker)
    with pytest.raises(InputError, match=refusal):
        run(config)
    assert not evidence.exists(), "the planted pickle ran"


def test_a_resume_fetches_only_the_files_the_marker_lists_and_checks_each(tmp_path):
    store = open_store(str(tmp_path / "ckpt"))
    checkpoints = CheckpointStore(store, keep=2)
    local = tmp_path / "state"
    (local / "accelerate").mkdir(parents=True)
    (local / "accelerate" / "pytorch_model.bin").write_bytes(b"w" * 64)
    checkpoints.save(2, local)
    # DeepSpeed/accelerate would unpickle any custom_checkpoint_*.pkl found in the folder.
    store.write_bytes("step-00000002/accelerate/custom_checkpoint_0.pkl", b"planted")
    checkpoints.download(2, tmp_path / "fetched")
    assert sorted(p.name for p in (tmp_path / "fetched").rglob("*") if p.is_file()) == ["pytorch_model.bin"]
    # A listed file changed in the store, same size: refused before anything loads it.
    store.write_bytes("step-00000002/accelerate/pytorch_model.bin", b"x" * 64)
    with pytest.raises(InputError, match="accelerate/pytorch_model.bin .* sha256 differs"):
        checkpoints.download(2, tmp_path / "again")
