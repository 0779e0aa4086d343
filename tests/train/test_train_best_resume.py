"""Each curriculum phase's best weights survive a pod retry: kept in the run's store beside the checkpoints,
named by each checkpoint, copied back into a fresh output_dir; a changed file in the bucket is refused."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import boto3
import torch
from safetensors.torch import load_file

from components.common.records import Record, write_records
from components.common.store import open_store
from components.train.checkpoint import BestStore
from components.train.stage import run
from tests.train.conftest import reversal_record, reversal_records, train_until_killed

PHASES = ["general", "domain"]


def unreversed(record: Record) -> Record:
    """The record answered with the word as given: training on it moves away from the held-out answers."""
    word = record.messages[-1]["content"][::-1]
    return replace(record, messages=[*record.messages[:-1], {"role": "assistant", "content": word}])


def best_config(make_config, tmp_path: Path, run_id: str, **overrides):
    """Two phases of 4 and 3 steps, evaluated every step and checkpointed every 2, in S3. The second
    phase trains away from the held-out answers at a high rate: its held-out loss is lowest at its step 2
    (global 6), the first phase's at global step 2."""
    domain = tmp_path / "domain"
    if not domain.is_dir():
        write_records(domain / "train.jsonl", [unreversed(r) for r in reversal_records(40, seed=9)])
        write_records(domain / "test.jsonl", [reversal_record(word, "test") for word in ("dog", "pencil")])
    fields = {
        "datasets": {"domain": str(domain)},
        "curriculum": [
            {"name": "general", "mix": {"main": 1.0}, "max_steps": 4, "learning_rate": 1e-2},
            {"name": "domain", "mix": {"domain": 1.0}, "max_steps": 3, "learning_rate": 1.0},
        ],
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "eval_steps": 1,
        "eval_samples": 3,
        "sample_count": 0,
        "save_steps": 2,
        "save_total_limit": 2,
        "seed": 3,
        "store_uri": "s3://distill/best-resume",
        "run_id": run_id,
        "output_dir": str(tmp_path / run_id),
        "tensorboard_dir": str(tmp_path / f"tb-{run_id}"),
    }
    return make_config(**{**fields, **overrides})


def best_folders(config) -> set[str]:
    """'<phase>/step-<n>' of every best folder the run's store holds."""
    store = open_store(config.store_uri).child(f"runs/{config.run_id}/train/best")
    return {"/".join(key.split("/")[:2]) for key in store.list("")}


def summary_best(config) -> dict:
    return json.loads(Path(config.output_dir, "train_summary.json").read_text())["best"]


def test_kill_9_mid_curriculum_then_resume_keeps_every_phase_best(make_config, s3_endpoint, tmp_path):
    reference = best_config(make_config, tmp_path, "whole")
    run(reference)
    assert list(summary_best(reference)) == PHASES
    assert {phase: record["step"] for phase, record in summary_best(reference).items()} == {
        "general": 2,
        "domain": 6,
    }, "each phase's last evaluation is not its best"
    # Of the bests saved at steps 1, 2, 5 and 6, the store keeps those its kept checkpoints (4, 6) name.
    assert best_folders(reference) == {"general/step-00000002", "domain/step-00000006"}

    # Killed once checkpoint 6 (the second phase's step 2) is stored: the first phase is over, and the
    # evaluation at step 7 must lose against the best restored from step 6.
    retried = best_config(make_config, tmp_path, "retried")
    train_until_killed(retried, tmp_path / "retried.yaml", step=6)
    result = run(retried)
    assert result.resumed_from == 6 and result.steps == 7

    assert summary_best(retried) == summary_best(reference)
    for phase in PHASES:
        got, want = Path(retried.output_dir, "best", phase), Path(reference.output_dir, "best", phase)
        assert json.loads((got / "best.json").read_text()) == json.loads((want / "best.json").read_text())
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
        got_weights = load_file(got / "adapter_model.safetensors")
        want_weights = load_file(want / "adapter_model.safetensors")
        assert got_weights.keys() == want_weights.keys()
        for name in want_weights:
            torch.testing.assert_close(got_weights[name], want_weights[name], atol=1e-5, rtol=1e-4)


def test_a_changed_best_in_the_bucket_is_refused_and_the_run_still_finishes(
    make_config, s3_endpoint, tmp_path, caplog
):
    config = best_config(make_config, tmp_path, "tampered")
    run(config)
    best = summary_best(config)
    prefix = "best-resume/runs/tampered/train/best"
    general = f"{prefix}/general/step-{best['general']['step']:08d}/adapter_model.safetensors"
    s3 = boto3.client("s3")
    size = len(s3.get_object(Bucket="distill", Key=general)["Body"].read())
    s3.put_object(Bucket="distill", Key=general, Body=b"\0" * size)
    # A file the marker does not list is never fetched.
    planted = f"{prefix}/domain/step-{best['domain']['step']:08d}/pytorch_model.bin"
    s3.put_object(Bucket="distill", Key=planted, Body=b"planted pickle")

    retried = best_config(make_config, tmp_path, "tampered", output_dir=str(tmp_path / "retry"))
    with caplog.at_level(logging.WARNING, logger="components.train.checkpoint"):
        result = run(retried)
    assert result.steps == 7 and result.resumed_from == 6
    assert "best weights of phase general not restored" in caplog.text
    assert "adapter_model.safetensors" in caplog.text and "sha256 differs" in caplog.text
    assert not Path(retried.output_dir, "best", "general").exists()
    assert summary_best(retried) == {"domain": best["domain"]}
    domain = Path(retried.output_dir, "best", "domain")
    assert json.loads((domain / "best.json").read_text()) == best["domain"]
    assert not (domain / "pytorch_model.bin").exists()
    assert (domain / "adapter_model.safetensors").read_bytes() == (
        Path(config.output_dir, "best", "domain", "adapter_model.safetensors").read_bytes()
    )


def test_a_best_folder_listing_a_pickle_is_not_restored_even_with_matching_digests(tmp_path, caplog):
    stored = BestStore(open_store(str(tmp_path / "store")))
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")  # the attacker rewrote the marker to list it
    stored.save("general", 2, folder)
    with caplog.at_level(logging.WARNING, logger="components.train.checkpoint"):
        assert not stored.restore("general", 2, tmp_path / "restored")
    assert "lists 'pytorch_model.bin', not a safetensors, json or tokenizer file" in caplog.text
    assert not (tmp_path / "restored").exists()
    (folder / "pytorch_model.bin").unlink()
    stored.save("general", 2, folder)
    assert stored.restore("general", 2, tmp_path / "restored")
    assert (tmp_path / "restored" / "adapter_model.safetensors").read_bytes() == b"weights"
