"""Which engine draws the on-policy samples: vLLM beside the student where it can run, HF generate
otherwise (the vLLM branch itself needs a GPU and the vllm package)."""

from __future__ import annotations

import pytest
import torch

from components.common.errors import ConfigError
from components.train.stage import run
from components.train.vllm_sampling import sampling_engine

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize(
    ("engine", "device", "method", "installed", "chosen"),
    [
        ("auto", CUDA, "full", True, "vllm"),
        ("vllm", CUDA, "full", True, "vllm"),
        ("auto", CPU, "full", True, "hf"),
        ("auto", CUDA, "full", False, "hf"),
        ("auto", CUDA, "lora", True, "hf"),
        ("hf", CUDA, "full", True, "hf"),
    ],
)
def test_on_policy_samples_with_vllm_only_where_it_can_run(engine, device, method, installed, chosen):
    assert sampling_engine(engine, device, method, installed) == chosen


@pytest.mark.parametrize(
    ("device", "method", "installed", "why"),
    [
        (CPU, "full", True, "a CUDA GPU; use auto or hf"),
        (CUDA, "full", False, "the vllm package .the GPU images' vllm extra.; use"),
        (CUDA, "lora", True, "method full .a LoRA student samples with HF generate.; use"),
    ],
)
def test_on_policy_engine_vllm_where_it_cannot_run_names_why(device, method, installed, why):
    with pytest.raises(ConfigError, match=rf"^kd.on_policy.engine: vllm needs {why}"):
        sampling_engine("vllm", device, method, installed)


def test_the_train_stage_refuses_on_policy_engine_vllm_without_a_gpu_before_loading_models(
    make_config, tiny_teacher_dir
):
    kd = {"kind": "on_policy", "teacher_dir": str(tiny_teacher_dir), "on_policy": {"engine": "vllm"}}
    with pytest.raises(ConfigError, match=r"^kd.on_policy.engine: vllm needs a CUDA GPU"):
        run(make_config(max_steps=1, kd=kd, method="full"))
