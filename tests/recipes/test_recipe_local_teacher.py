"""Recipe 5 on tiny models made on the spot: a base + LoRA adapter teacher labels the prompts offline in
the teacher stage, then the same base + adapter, unmerged, is the online KD teacher of the train stage
(KL at T=2, alpha 0.5). On CPU both run in fp32; 8-bit loading is the GPU path (test_recipe_gpus.py)."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from components.common.config import from_dict
from components.common.errors import InputError
from components.common.records import read_records
from components.teacher import Config as TeacherConfig
from components.teacher.stage import run as run_teacher
from components.train import Config as TrainConfig
from components.train.modeling import load_teacher
from components.train.settings import model_loading
from components.train.stage import run as run_train
from pipelines.demo_teacher import write_demo_dataset


def test_base_plus_adapter_teacher_labels_offline_then_teaches_online(
    tmp_path, tiny_model_dir, tiny_teacher_dir, teacher_adapter
):
    write_demo_dataset(tmp_path / "prompts.jsonl", 6)
    teacher = from_dict(
        TeacherConfig,
        {
            "dataset": str(tmp_path / "prompts.jsonl"),
            "output_dir": str(tmp_path / "data"),
            "store_uri": str(tmp_path / "store"),
            "progress_bar": False,
            "test_ratio": 0.0,
            "on_length": "keep",
            "provider": {
                "name": "local",
                "model": str(tiny_teacher_dir),
                "adapter": str(teacher_adapter),
                "max_tokens": 6,
            },
        },
    )
    labelled = run_teacher(teacher)
    records = read_records(tmp_path / "data" / "train.jsonl")
    assert labelled.metrics["records"] == 6
    assert {record.teacher["params"]["adapter"] for record in records} == {str(teacher_adapter)}

    train = from_dict(
        TrainConfig,
        {
            "student_dir": str(tiny_model_dir),
            "data_dir": str(tmp_path / "data"),
            "output_dir": str(tmp_path / "trained"),
            "tensorboard_dir": str(tmp_path / "tb"),
            "max_steps": 2,
            "batch_size": 3,
            "logging_steps": 1,
            "max_length": 96,
            "kd": {
                "kind": "logits",
                "teacher_dir": str(tiny_teacher_dir),
                "teacher_adapter": str(teacher_adapter),
                "temperature": 2.0,
                "alpha": 0.5,
            },
        },
    )
    result = run_train(train)
    assert result.steps == 2 and result.loss_parts["kd"] > 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/kd_temperature")] == [2.0, 2.0]
    assert json.loads((tmp_path / "trained" / "train_summary.json").read_text())["kd"] == "logits"


def test_the_kd_teacher_is_the_base_with_its_adapter_applied(
    tmp_path, tiny_model_dir, tiny_teacher_dir, teacher_adapter
):
    def teacher(**kd) -> TrainConfig:
        fields = dict(
            student_dir=str(tiny_model_dir),
            data_dir="d",
            output_dir="o",
            tensorboard_dir="t",
            attention="sdpa",
        )
        return from_dict(
            TrainConfig, {**fields, "kd": {"kind": "logits", "teacher_dir": str(tiny_teacher_dir), **kd}}
        )

    ids = torch.tensor([[1, 2, 3, 4]])
    cpu = torch.device("cpu")
    plain = load_teacher(teacher().kd, model_loading(teacher()), cpu, "fp32")(input_ids=ids).logits
    with_adapter = teacher(teacher_adapter=str(teacher_adapter))
    adapted_model = load_teacher(with_adapter.kd, model_loading(with_adapter), cpu, "fp32")
    adapted = adapted_model(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)
    assert not any(p.requires_grad for p in adapted_model.parameters())
    with pytest.raises(InputError, match="kd.teacher_adapter: .* holds no adapter_config.json"):
        load_teacher(teacher(teacher_adapter=str(tmp_path)).kd, model_loading(with_adapter), cpu, "fp32")
