"""The run check: every stage's Config built from a run's parameters, before anything runs.

`python -m pipelines.submit --check` calls `check_stage_configs` before a run is submitted, and the
pipeline's first task (`check_run` in pipelines/check_task.py) calls it again on the parameters the run was started with (from the
KFP UI too), so a bad run fails in seconds, before the teacher is paid or a GPU is requested.
"""

import dataclasses
from typing import Any

from components.common.config import deep_merge, exposed_fields, from_dict, refuse_exposed_overrides, under
from components.common.errors import ConfigError
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


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, name = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[name] = value


def check_stage_configs(values: dict[str, Any]) -> None:
    """Build each stage's Config from the run's parameters (`values`: every pipeline parameter) as its
    task will, with placeholder folders for the artifacts, so that the Configs' own checks run now; a
    ConfigError names the stage's field."""
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
            _set_path(data, exposed_field.path, exposed_field.field_value(values[exposed_field.parameter]))
        if stage == "train" and values.get("train_kd_teacher_source"):
            _set_path(data, "kd.teacher_dir", "/check/train/kd-teacher")  # downloaded by the task
        try:
            from_dict(config, deep_merge(data, overrides))
        except ConfigError as error:
            raise ConfigError(under(stage, str(error))) from None
