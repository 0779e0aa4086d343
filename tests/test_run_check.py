"""The run check over a run's parameters: what the pipeline's first task and `submit --check` both do."""

import inspect

import pytest

from components.common.errors import ConfigError
from pipelines.check_task import check_run
from pipelines.run_check import check_stage_configs
from pipelines.submit import pipeline_defaults
from tests.conftest import COMPILED


@pytest.fixture(scope="module")
def defaults() -> dict:
    return pipeline_defaults(COMPILED)


def test_the_check_task_takes_every_pipeline_parameter(defaults):
    assert set(check_run.component_spec.inputs) == set(defaults)
    assert set(inspect.signature(check_run.python_func).parameters) == set(defaults)


def test_the_pipeline_defaults_pass_the_check(defaults):
    check_stage_configs(defaults)


def test_a_bad_override_is_refused_with_its_stage_and_field(defaults):
    with pytest.raises(ConfigError, match=r"train\.lora\.dropout"):
        check_stage_configs({**defaults, "train_overrides": {"lora": {"dropout": 1.5}}})


def test_a_parameter_also_given_as_an_override_is_refused(defaults):
    with pytest.raises(ConfigError, match=r"train_lora_r"):
        check_stage_configs({**defaults, "train_overrides": {"lora": {"r": 4}}})


@pytest.mark.parametrize("source", ["hf://Qwen/Qwen3-32B@0123abc", "s3://models/teacher"])
def test_a_teacher_server_source_kserve_fetches_passes_the_check(defaults, source):
    configs = check_stage_configs({**defaults, "teacher_server_source": source, "teacher_server_gpus": 2})
    assert configs["teacher_server"].serving.gpus == 2
    assert "teacher_server" not in check_stage_configs(defaults)  # empty: no server


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ({"teacher_server_source": "/models/teacher"}, r"teacher_server_source: .* KServe fetches"),
        (
            {"teacher_server_source": "hf://Qwen/Qwen3-32B", "teacher_server_gpus": 0},
            r"teacher_server_gpus: 0",
        ),
    ],
)
def test_a_teacher_server_kserve_cannot_serve_is_refused_by_the_check(defaults, values, refusal):
    with pytest.raises(ConfigError, match=refusal):
        check_stage_configs({**defaults, **values})
