"""The run check: every stage's Config built from a run's parameters, before anything runs.

`python -m pipelines.submit --check` calls `check_stage_configs` before a run is submitted, and the
pipeline's first task (`check_run` in pipelines/check_task.py) calls it again on the parameters the run
was started with (from the KFP UI too), so a bad run fails in seconds, before the teacher is paid or a GPU
is requested.
"""

import dataclasses
from pathlib import Path
from typing import Any

from components.common.config import (
    deep_merge,
    exposed_fields,
    from_dict,
    refuse_exposed_overrides,
    set_dotted,
    under,
)
from components.common.errors import ConfigError, InputError
from components.download.config import Config as DownloadConfig
from components.evaluate.config import Config as EvalConfig
from components.merge.config import Config as MergeConfig
from components.register.config import Config as RegisterConfig
from components.teacher.config import Config as TeacherConfig
from components.train.config import Config as TrainConfig

# Each stage's Config under the prefix its parameters and `<prefix>_overrides` take.
STAGE_CONFIGS = {
    "download": DownloadConfig,
    "teacher": TeacherConfig,
    "train": TrainConfig,
    "merge": MergeConfig,
    "eval": EvalConfig,
    "register": RegisterConfig,
}


def check_stage_configs(values: dict[str, Any]) -> dict[str, Any]:
    """Build each stage's Config from the run's parameters (`values`: every pipeline parameter) as its
    task will, with placeholder folders for the artifacts, so that the Configs' own checks run now; a
    ConfigError names the stage's field. Then check that the tasks which need a GPU for what their Config
    asks are given one. Returns the Configs by stage."""
    configs = build_stage_configs(values)
    check_gpus(configs, values)
    return configs


def check_run_inputs(values: dict[str, Any]) -> None:
    """What the check task checks where the stages will run: the Configs (check_stage_configs), then that
    a dataset given as a local path is there, before the student is downloaded or built."""
    configs = check_stage_configs(values)
    check_local_dataset(configs["teacher"].dataset)


def check_local_dataset(dataset: str) -> None:
    """A local dataset path (no s3:// or hf://) must exist in the task's image; `submit --check` runs
    where the path may not be, so only the check task (and run_local) call this."""
    if "://" not in dataset and not Path(dataset).exists():
        raise InputError(
            f"teacher_dataset: {dataset} does not exist; give an existing prompts file or folder, "
            "an s3:// URI or hf://datasets/org/name"
        )


def check_gpus(configs: dict[str, Any], values: dict[str, Any]) -> None:
    """bitsandbytes (a quantized local teacher, a quantized eval) runs only on CUDA: refuse a run whose
    pod for it would have no GPU, here rather than after the earlier tasks have run."""
    provider = configs["teacher"].provider
    if provider.is_local and provider.quantization != "none" and values.get("teacher_gpus", 0) < 1:
        raise ConfigError(
            f"teacher_gpus: the local teacher loads in {provider.quantization} (bitsandbytes), which needs a "
            "GPU; set teacher_gpus: 1 (and teacher_tolerations for GPU nodes)"
        )
    quantization = configs["eval"].quantization
    if quantization != "none" and values.get("eval_gpus", 0) < 1:
        raise ConfigError(
            f"eval_gpus: eval scores the student in {quantization} (bitsandbytes), which needs a GPU; set "
            "eval_gpus: 1, or eval quantization: none"
        )


def build_stage_configs(values: dict[str, Any]) -> dict[str, Any]:
    """Each stage's Config as its task will build it from `values` (every pipeline parameter)."""
    built = {}
    for stage, config in STAGE_CONFIGS.items():
        overrides = values.get(f"{stage}_overrides") or {}
        refuse_exposed_overrides(config, stage, overrides)
        data: dict[str, Any] = {}
        for f in dataclasses.fields(config):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                data[f.name] = f"/check/{stage}/{f.name}"  # an artifact folder KFP makes for the task
        if any(f.name == "store_uri" for f in dataclasses.fields(config)):
            data["store_uri"] = values["store_uri"]
        for exposed_field in exposed_fields(config):
            set_dotted(data, exposed_field.path, exposed_field.field_value(values[exposed_field.parameter]))
        if stage == "train" and values.get("train_kd_teacher_source"):
            set_dotted(data, "kd.teacher_dir", "/check/train/kd-teacher")  # downloaded by the task
        try:
            built[stage] = from_dict(config, deep_merge(data, overrides))
        except ConfigError as error:
            raise ConfigError(under(stage, str(error))) from None
    return built
