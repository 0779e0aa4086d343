"""The run's teacher server: its KServe InferenceService (valid against the vendored KServe v0.20 CRD),
created, waited for and deleted through the real Kubernetes client against the fake Kubernetes API."""

from __future__ import annotations

import jsonschema
import pytest

from components.common.errors import ConfigError, InputError
from components.common.inference_service import ServingConfig, custom_objects_api
from components.teacher_server.config import Config
from components.teacher_server.stage import remove, start, teacher_service
from tests.packaging.conftest import role_rules


def config(**fields) -> Config:
    serving = ServingConfig(namespace="team", gpus=fields.pop("gpus", 2))
    return Config(
        **{
            "source": "hf://Qwen/Qwen3-32B@0123abc",
            "run_id": "run-7F3a",
            "serving": serving,
            "poll_s": 0.01,
            **fields,
        }
    )


def test_teacher_server_is_the_hf_runtime_with_vllm_on_its_gpus(kserve_schema):
    service = teacher_service(config())
    jsonschema.validate(service, kserve_schema)
    model = service["spec"]["predictor"]["model"]
    assert service["metadata"]["name"] == "teacher-run-7f3a"
    assert service["metadata"]["labels"] == {"kfp-distill/run-id": "run-7F3a"}
    assert model["storageUri"] == "hf://Qwen/Qwen3-32B:0123abc"
    assert model["modelFormat"] == {"name": "huggingface"} and "--backend=vllm" in model["args"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "2"
    s3 = teacher_service(config(source="s3://models/teacher/"))
    assert s3["spec"]["predictor"]["model"]["storageUri"] == "s3://models/teacher"


def test_teacher_server_start_waits_until_ready_and_points_the_teacher_at_it(cluster, kserve_schema):
    cluster.isvc_ready_after = 2
    served = start(config(), custom_objects_api())
    address = "http://teacher-run-7f3a-predictor.team.svc.cluster.local"
    assert (served.base_url, served.scoring_url) == (f"{address}/openai/v1", f"{address}/openai")
    assert cluster.isvc_reads["team", "teacher-run-7f3a"] == 3
    jsonschema.validate(cluster.inference_services["team", "teacher-run-7f3a"], kserve_schema)
    # A retried task finds the server of its earlier attempt and uses it.
    assert start(config(), custom_objects_api()) == served and len(cluster.inference_services) == 1
    assert remove(config(), custom_objects_api()) and not cluster.inference_services
    # Exactly what the Role in manifests/ grants the pipeline's service accounts for the served teacher.
    assert cluster.api_calls == role_rules("distill-teacher-server")


def test_teacher_server_not_ready_in_time_fails_naming_why_and_the_exit_handler_still_deletes_it(cluster):
    cluster.isvc_ready_after = None
    with pytest.raises(
        InputError, match=r"teacher-run-7f3a not Ready within 0.05 s \(predictor pod: Back-off"
    ):
        start(config(ready_timeout_s=0.05), custom_objects_api())
    assert remove(config(), custom_objects_api()) is True
    assert cluster.deleted == ["teacher-run-7f3a"] and not cluster.inference_services
    assert remove(config(), custom_objects_api()) is False  # gone already: the handler does not fail


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"source": "tiny://qwen2"},
            r"^teacher_server_source: 'tiny://qwen2' is a tiny source; KServe fetches",
        ),
        ({"source": "./teacher"}, r"^teacher_server_source: './teacher' is a local source"),
        ({"source": "hf://Qwen"}, r"^teacher_server_source: source 'hf://Qwen': expected"),
        ({"gpus": 0}, r"^teacher_server_gpus: 0; the vLLM backend needs at least 1 GPU"),
    ],
)
def test_teacher_server_refuses_what_kserve_cannot_serve_at_load(fields, message):
    with pytest.raises(ConfigError, match=message):
        config(**fields)


def test_teacher_server_address_points_the_teacher_stage_and_kd_scoring_at_it():
    from components.common.served_teacher import teacher_inputs, train_overrides
    from pipelines.run_check import check_stage_configs
    from pipelines.submit import pipeline_defaults
    from tests.conftest import COMPILED

    address = "http://teacher-run-7f3a-predictor.team.svc.cluster.local"
    defaults = pipeline_defaults(COMPILED)
    values = {**defaults, **teacher_inputs(address, "run-7F3a"), "train_kd": "logits"}
    values["train_kd_teacher_source"] = "hf://Qwen/Qwen3-32B"  # its tokenizer
    values["train_overrides"] = train_overrides(address, True, {"kd": {"alpha": 0.7}})
    configs = check_stage_configs(values)
    provider = configs["teacher"].provider
    assert (provider.name, provider.base_url) == ("vllm", f"{address}/openai/v1")
    assert provider.model == "teacher-run-7f3a"  # the model name KServe serves it under
    assert (configs["train"].kd.teacher_url, configs["train"].kd.alpha) == (f"{address}/openai", 0.7)
    # A KD kind that asks no teacher to score keeps no teacher_url, which its Config would refuse.
    assert train_overrides(address, False, {}) == {}
