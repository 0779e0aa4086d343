"""Each pipeline parameter is declared once, in a stage's spec or on the Config field it sets: the compiled
pipeline (what KFP's UI shows) and every task that takes it agree with that declaration's default and help,
and exposing a Config field is all it takes to add a parameter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.run_check import STAGE_SPECS, pipeline_parameters
from tests.conftest import COMPILED, REPO

DECLARED = [(spec.stage, parameter) for spec in STAGE_SPECS for parameter in spec.pipeline_parameters()]
PLACEMENT = {parameter.name for spec in STAGE_SPECS for parameter in spec.placement}


def load(path: Path) -> dict:
    return next(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def spec() -> dict:
    return load(COMPILED)


def task_defaults(spec: dict, parameter: str) -> dict[str, object]:
    """`task.input` -> the component's default, for every task input wired to the pipeline parameter."""
    found = {}

    def visit(dag: dict) -> None:
        for task_name, task in dag.get("tasks", {}).items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                visit(component["dag"])
            for name, wiring in task.get("inputs", {}).get("parameters", {}).items():
                definitions = component.get("inputDefinitions", {}).get("parameters", {})
                if name not in definitions:  # a value KFP passes for a resource request, not an input
                    continue
                if wiring.get("componentInputParameter") in (parameter, f"pipelinechannel--{parameter}"):
                    found[f"{task_name}.{name}"] = definitions[name].get("defaultValue", "<required>")

    visit(spec["root"]["dag"])
    return found


@pytest.mark.parametrize(("stage", "parameter"), DECLARED, ids=[f"{s}.{p.name}" for s, p in DECLARED])
def test_parameter_default_and_description_are_declared_once(spec, stage, parameter):
    compiled = spec["root"]["inputDefinitions"]["parameters"][parameter.name]
    assert compiled.get("defaultValue") == parameter.default, f"{parameter.name} != {stage}'s declaration"
    assert compiled["description"] == parameter.help
    wired = task_defaults(spec, parameter.name)
    assert wired, f"{parameter.name} reaches no task"
    for task_input, default in wired.items():
        assert default in (parameter.default, "<required>"), f"{task_input} default {default!r}"
        name = task_input.partition(".")[2].removeprefix("pipelinechannel--")  # KFP's name in a loop
        assert name == parameter.name, f"{task_input} spells {parameter.name} otherwise"


def test_every_parameter_is_declared_by_a_stage(spec):
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {p.name for p in pipeline_parameters()}


def test_a_parameter_given_again_in_its_stage_overrides_is_refused_naming_both(capsys):
    """An override of an exposed field would win silently over the parameter: the task stops first."""
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


# Marks train's warmup_ratio exposed, as `field(default=0.03, metadata=exposed(...))` in its Config would,
# before anything reads the Config, then compiles the pipeline and builds the train Config as the run check
# and the task do.
EXPOSE_WARMUP = """
import dataclasses, json, pathlib, sys, types
from components.common.config import exposed
from components.train.config import Config
warmup = {f.name: f for f in dataclasses.fields(Config)}["warmup_ratio"]
warmup.metadata = types.MappingProxyType(exposed("train_warmup_ratio", "share of the steps spent warming up."))
from pipelines.distill_pipeline import compile_pipeline
from pipelines.run_check import build_stage_configs
from pipelines.submit import pipeline_defaults
compile_pipeline(sys.argv[1])
values = {**pipeline_defaults(pathlib.Path(sys.argv[1])), "train_warmup_ratio": 0.1}
print(json.dumps(build_stage_configs(values)["train"].warmup_ratio))
"""


def test_exposing_a_config_field_is_all_it_takes_to_add_a_parameter(tmp_path):
    compiled = tmp_path / "pipeline.yaml"
    done = subprocess.run(
        [sys.executable, "-c", EXPOSE_WARMUP, str(compiled)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.1"
    spec = load(compiled)
    parameter = spec["root"]["inputDefinitions"]["parameters"]["train_warmup_ratio"]
    assert parameter["defaultValue"] == 0.03
    assert parameter["description"] == "share of the steps spent warming up."
    assert task_defaults(spec, "train_warmup_ratio") == {
        "check-run.train_warmup_ratio": "<required>",
        "train-student.train_warmup_ratio": 0.03,
    }
