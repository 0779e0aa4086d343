"""GPU needs of the recipes: a local quantized teacher and a quantized eval ask for a GPU in the pipeline,
a run that gives them none is told before submission that they will run on the CPU, slowly, and the
quantized loaders load through bitsandbytes on this machine (CPU or CUDA)."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.common.config import from_dict
from components.common.devices import resolve_device
from components.evaluate.sampling import load_model
from components.teacher.config import Config as TeacherConfig
from components.teacher.local import LocalTeacher
from pipelines.submit import main
from tests.recipes.conftest import RECIPES

RECIPE = {path.stem: path for path in RECIPES}


def compiled_tasks(package_path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(package_path.read_text())
    return spec["deploymentSpec"]["executors"], platform["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]


def test_teacher_and_eval_tasks_take_gpus_and_tolerations_from_parameters(package):  # noqa: F811
    executors, kubernetes = compiled_tasks(package)
    by_gpus = {}
    for name, executor in executors.items():
        accelerator = executor["container"].get("resources", {}).get("accelerator")
        if accelerator:
            by_gpus[name] = accelerator["resourceCount"]
    assert by_gpus["exec-teacher-data"].endswith("teacher_gpus']}}")
    assert by_gpus["exec-teacher-data-2"].endswith("teacher_gpus']}}")
    assert by_gpus["exec-evaluate-student"].endswith("eval_gpus']}}")
    assert "teacher_tolerations" in str(kubernetes["exec-teacher-data"]["tolerations"])
    assert "eval_tolerations" in str(kubernetes["exec-evaluate-student"]["tolerations"])


def test_a_local_8bit_teacher_without_a_gpu_is_warned_of_before_submission(package, capsys):  # noqa: F811
    recipe = str(RECIPE["local_teacher_offline_online_kd"])
    assert main(["--check", "--config", recipe, "--package", str(package), "--set", "teacher_gpus=0"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warned == [
        "warning: teacher_gpus: 0, and the local teacher loads in 8bit (bitsandbytes): it runs on the CPU, "
        "slowly; set teacher_gpus: 1 (and teacher_tolerations for GPU nodes)"
    ]


def test_a_quantized_eval_without_a_gpu_is_warned_of_before_submission(package, capsys):  # noqa: F811
    recipe = str(RECIPE["api_teacher_lora_sft"])
    assert main(["--check", "--config", recipe, "--package", str(package), "--set", "eval_gpus=0"]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: eval_gpus: 0, and eval scores the student in 4bit (bitsandbytes): it runs on the CPU" in err
    )


def test_the_recipes_quantized_loaders_load_4bit_and_8bit_on_this_machine(tiny_model_dir, tmp_path):
    """A quantized eval and a quantized local teacher load through bitsandbytes on a CPU as on CUDA."""
    import bitsandbytes as bnb

    device = resolve_device("auto")
    model, _ = load_model(tiny_model_dir, "auto", device, "trained_dir", quantization="4bit")
    assert model.config.quantization_config.load_in_4bit
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    teacher = from_dict(
        TeacherConfig,
        {
            "dataset": str(tmp_path / "p.jsonl"),
            "output_dir": str(tmp_path / "out"),
            "provider": {"name": "local", "model": str(tiny_model_dir), "quantization": "8bit"},
        },
    )
    local = LocalTeacher(teacher.provider)
    local.load()
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in local._model.modules())
