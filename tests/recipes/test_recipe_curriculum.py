"""Recipe 3's curriculum, run by the train stage on tiny models made on the spot: three phases general ->
domain -> task at KD temperatures 4 / 2 / 1, the phases' extra datasets fetched from the store (a real S3
API on loopback), the task share ramped within a phase, held-out loss with the best weights of each phase
kept, and teacher-vs-student samples in TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from components.common.config import from_dict
from components.common.records import write_records
from components.common.store import open_store
from components.train import Config
from components.train.curriculum import RampStream
from components.train.data import Example
from components.train.stage import run
from tests.train.conftest import reversal_record, reversal_records


def teacher_data(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    write_records(folder / "train.jsonl", reversal_records(24, seed))
    write_records(folder / "test.jsonl", [reversal_record(w, "test") for w in ("abc", "hello", "kite")])
    return folder


def upload(folder: Path, uri: str) -> str:
    store = open_store(uri)
    for name in ("train.jsonl", "test.jsonl"):
        store.upload_file(folder / name, name)
    return uri


def scalars(events: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in events.Scalars(tag)]


@pytest.mark.slow
def test_three_phase_kd_curriculum_as_recipe_3_runs_it(
    tmp_path, tiny_model_dir, tiny_teacher_dir, s3_endpoint
):
    general = upload(teacher_data(tmp_path / "general", 1), "s3://distill/runs/general-001/teacher-data")
    domain = upload(teacher_data(tmp_path / "domain", 2), "s3://distill/runs/domain-001/teacher-data")
    phase = dict(max_steps=4)
    config = from_dict(
        Config,
        {
            "student_dir": str(tiny_model_dir),
            "data_dir": str(teacher_data(tmp_path / "task", 3)),
            "datasets": {"general": general, "domain": domain},
            "output_dir": str(tmp_path / "out"),
            "tensorboard_dir": str(tmp_path / "tb"),
            "batch_size": 8,
            "max_length": 64,
            "logging_steps": 1,
            "kd": {"kind": "logits", "teacher_dir": str(tiny_teacher_dir), "alpha": 0.5},
            "intermediate": {"hidden_weight": 1.0},
            "eval_steps": 2,
            "eval_samples": 4,
            "sample_count": 1,
            "sample_max_new_tokens": 4,
            "curriculum": [
                {
                    "name": "general",
                    "mix": {"general": 1.0},
                    "temperature": 4.0,
                    "learning_rate": 5e-4,
                    **phase,
                },
                {
                    "name": "domain",
                    "mix": {"domain": 1.0},
                    "temperature": 2.0,
                    "learning_rate": 3e-4,
                    **phase,
                },
                {
                    "name": "task",
                    "mix": {"main": {"from": 0.0, "to": 1.0}, "domain": {"from": 1.0, "to": 0.0}},
                    "temperature": 1.0,
                    "learning_rate": 1e-4,
                    "hidden_weight": 0.0,
                    **phase,
                },
            ],
        },
    )

    result = run(config)

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    # The temperature the KD loss used at every logged step: 4 in phase 0, 2 in phase 1, 1 in phase 2.
    assert scalars(events, "train/kd_temperature") == [4.0] * 4 + [2.0] * 4 + [1.0] * 4
    assert scalars(events, "train/phase") == [0.0] * 4 + [1.0] * 4 + [2.0] * 4
    # Within the task phase the task share ramps from 0 to 1 (the domain share the other way).
    task_share = scalars(events, "train/share_main")
    assert task_share[0] == 0.0 and task_share[-1] == 1.0 and task_share == sorted(task_share)
    assert scalars(events, "train/share_domain")[4:] == [1.0 - share for share in task_share]
    # Held-out loss at steps 2 and 4 of each phase; each phase's best weights kept beside its record.
    assert len(scalars(events, "eval/loss")) == 6
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert list(summary["best"]) == ["general", "domain", "task"]
    for name, best in summary["best"].items():
        folder = tmp_path / "out" / "best" / name
        assert (folder / "adapter_model.safetensors").is_file()
        assert json.loads((folder / "best.json").read_text()) == best
        assert best["loss"] == pytest.approx(min(scalars(events, f"eval/loss_{name}")), rel=1e-6)
    # Teacher-vs-student samples at each evaluation, in TensorBoard's TEXT tab.
    text_tags = events.Tags()["tensors"]
    assert {"samples/general/text_summary", "samples/task/text_summary"} <= set(text_tags)
    sample = events.Tensors("samples/task/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert sample.startswith("| prompt | teacher | student |") and "Reverse the letters of: abc" in sample
    assert result.steps == 12


def test_a_ramped_share_moves_from_its_first_to_its_last_value_over_the_phase():
    sources = {
        name: [Example([1, 2], [-100, 2], f"{name}-{i}", source=name) for i in range(10)]
        for name in ("main", "general")
    }
    stream = RampStream(
        sources, {"main": (0.3, 0.7), "general": (0.7, 0.3)}, 8, seed=1, batches_per_epoch=50, horizon=1000
    )

    def main_share(indices) -> float:
        drawn = [example.source for index in indices for example in stream.get(index)]
        return drawn.count("main") / len(drawn)

    assert stream.shares(0)["main"] == pytest.approx(0.3) and stream.shares(999)["main"] == pytest.approx(0.7)
    assert main_share(range(0, 100)) == pytest.approx(0.32, abs=0.04)
    assert main_share(range(900, 1000)) == pytest.approx(0.68, abs=0.04)
    assert [e.record_id for e in stream.get(500)] == [e.record_id for e in stream.get(500)]
