"""The run check: every stage's Config built from a run's parameters, before anything runs.

`python -m pipelines.submit --check` calls `check_stage_configs` before a run is submitted, and the
pipeline's first task (`check_run` in pipelines/check_task.py) calls it again on the parameters the run
was started with (from the KFP UI too), so a bad run fails in seconds, before the teacher is paid or a GPU
is requested.
"""

import dataclasses
from pathlib import Path
from typing import Any

from components.common.config import deep_merge, from_dict, refuse_exposed_overrides, under
from components.common.errors import ConfigError, InputError
from components.common.logs import print_warning
from components.common.stage_spec import Parameter, StageSpec, config_fields
from components.download.component import SPEC as DOWNLOAD
from components.evaluate.component import SPEC as EVAL
from components.merge.component import SPEC as MERGE
from components.register.component import SPEC as REGISTER
from components.teacher.component import SPEC as TEACHER
from components.teacher_server.component import SPEC as TEACHER_SERVER
from components.train.component import SPEC as TRAIN

STAGE_SPECS: tuple[StageSpec, ...] = (DOWNLOAD, TEACHER_SERVER, TEACHER, TRAIN, MERGE, EVAL, REGISTER)
# Each stage's Config under the prefix its parameters and `<prefix>_overrides` take.
STAGE_CONFIGS = {spec.prefix: spec.config for spec in STAGE_SPECS}


def pipeline_parameters() -> list[Parameter]:
    """Every pipeline parameter, from the stages' specs; one several stages take (seed, store_uri) is
    declared alike by each."""
    found: dict[str, Parameter] = {}
    for spec in STAGE_SPECS:
        for parameter in spec.pipeline_parameters():
            seen = found.setdefault(parameter.name, parameter)
            if (seen.type, seen.default, seen.help) != (parameter.type, parameter.default, parameter.help):
                raise ValueError(f"{parameter.name}: {spec.stage} declares it unlike another stage does")
    return list(found.values())


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
    """bitsandbytes (a quantized local teacher, a quantized eval) runs on the CPU too, but a teacher or a
    student of real size is then far too slow to finish: say so in one line before the run starts, when
    the pod for it would have no GPU."""
    provider = configs["teacher"].provider
    if provider.is_local and provider.quantization != "none" and values.get("teacher_gpus", 0) < 1:
        print_warning(
            f"teacher_gpus: 0, and the local teacher loads in {provider.quantization} (bitsandbytes): it "
            "runs on the CPU, slowly; set teacher_gpus: 1 (and teacher_tolerations for GPU nodes)"
        )
    quantization = configs["eval"].quantization
    if quantization != "none" and values.get("eval_gpus", 0) < 1:
        print_warning(
            f"eval_gpus: 0, and eval scores the student in {quantization} (bitsandbytes): it runs on the "
            "CPU, slowly; set eval_gpus: 1, or eval quantization: none"
        )


def build_stage_configs(values: dict[str, Any]) -> dict[str, Any]:
    """Each stage's Config as its task will build it from `values` (every pipeline parameter)."""
    built = {}
    for spec in STAGE_SPECS:
        if not spec.runs(values):
            continue
        overrides = values.get(spec.overrides) or {}
        refuse_exposed_overrides(spec.config, spec.prefix, overrides)
        # The folders KFP makes for the task's artifacts, and the one it fetches a model source into.
        paths = {name: f"/check/{spec.prefix}/{name}" for name in path_inputs(spec)}
        data = config_fields(spec, values, paths)
        for f in dataclasses.fields(spec.config):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                data.setdefault(f.name, f"/check/{spec.prefix}/{f.name}")  # wired by the pipeline
        try:
            built[spec.prefix] = from_dict(spec.config, deep_merge(data, overrides))
        except ConfigError as error:
            raise ConfigError(under(spec.prefix, str(error))) from None
    return built


def path_inputs(spec: StageSpec) -> list[str]:
    return [a.name for a in spec.consumes + spec.produces] + [p.name for p in spec.inputs() if p.fetch]
