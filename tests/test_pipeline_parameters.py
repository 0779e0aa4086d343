"""Each pipeline parameter that sets a stage Config field is declared once, on the field: the compiled
pipeline (what KFP's UI shows) and every component that takes it agree with the field's default and help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from components.common.config import exposed_fields
from pipelines.distill_pipeline import PIPELINE_HELP
from pipelines.run_check import STAGE_CONFIGS

COMPILED = Path(__file__).resolve().parents[1] / "pipelines" / "distill_pipeline.yaml"
EXPOSED = [(stage, field) for stage, config in STAGE_CONFIGS.items() for field in exposed_fields(config)]


@pytest.fixture(scope="module")
def spec() -> dict:
    return next(yaml.safe_load_all(COMPILED.read_text()))


def component_defaults(spec: dict, parameter: str) -> dict[str, object]:
    """`task.input` -> the component's default, for every task input wired to the pipeline parameter."""
    found = {}

    def visit(dag: dict) -> None:
        for task_name, task in dag.get("tasks", {}).items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                visit(component["dag"])
            for name, wiring in task.get("inputs", {}).get("parameters", {}).items():
                if wiring.get("componentInputParameter") in (parameter, f"pipelinechannel--{parameter}"):
                    definition = component["inputDefinitions"]["parameters"][name]
                    found[f"{task_name}.{name}"] = definition.get("defaultValue", "<required>")

    visit(spec["root"]["dag"])
    return found


@pytest.mark.parametrize(("stage", "field"), EXPOSED, ids=[f"{s}.{f.path}" for s, f in EXPOSED])
def test_parameter_default_and_description_are_the_config_fields(spec, stage, field):
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert field.parameter in parameters, (
        f"{stage}.{field.path} is exposed as {field.parameter}, not a parameter"
    )
    parameter = parameters[field.parameter]
    wired = component_defaults(spec, field.parameter)
    assert wired, f"{field.parameter} reaches no task"
    if field.default is dataclasses.MISSING:  # a required field: the pipeline's default is the run's choice
        return
    expected = field.parameter_value(field.default)
    assert parameter.get("defaultValue") == expected, f"{field.parameter} != {stage}.{field.path} default"
    assert parameter["description"] == field.help
    for task_input, default in wired.items():
        assert default in (expected, "<required>"), f"{task_input} default {default!r} != {expected!r}"


def test_every_parameter_is_a_config_field_or_described_by_the_pipeline(spec):
    parameters = set(spec["root"]["inputDefinitions"]["parameters"])
    from_configs = {field.parameter for _, field in EXPOSED}
    assert parameters == from_configs | set(PIPELINE_HELP)
    assert not from_configs & set(PIPELINE_HELP)


def test_a_parameter_given_again_in_its_stage_overrides_is_refused_naming_both(capsys):
    """The override used to win silently over the parameter; now the task stops before the stage runs."""
    from components.common.entry import run_stage
    from components.train.config import Config

    fields = {
        "student_dir": "m",
        "data_dir": "d",
        "output_dir": "o",
        "tensorboard_dir": "t",
        "lora": {"r": 8},
    }
    ran = []
    with pytest.raises(SystemExit):
        run_stage(ran.append, Config, fields, {"lora": {"r": 32}}, parameters="train")
    assert not ran
    assert capsys.readouterr().err.strip() == (
        "error: train_lora_r and train_overrides.lora.r both set; give it once, as train_lora_r"
    )
    run_stage(ran.append, Config, fields, {"lora": {"dropout": 0.1}}, parameters="train")
    assert (ran[0].lora.r, ran[0].lora.dropout) == (8, 0.1)
