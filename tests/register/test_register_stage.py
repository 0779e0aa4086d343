"""The register stage hands over only a gated model: to Kubeflow Model Registry (a REST server on loopback
that records the model-registry client's calls) and to KServe (an InferenceService checked against the
vendored KServe v0.20 CRD, applied to the fake Kubernetes API)."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest
import yaml

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.common.inference_service import ServingConfig, build_inference_service, service_name
from components.evaluate import Config as EvalConfig
from components.evaluate.stage import run as run_eval
from components.register import Config
from components.register.stage import HandOffRefused, run
from pipelines.loopback import ServerThread
from tests.capture_server import capture_server
from tests.packaging.conftest import role_rules
from tests.register.fake_model_registry import API, FakeModelRegistry

MODEL_URI = "s3://distill/pipeline-root/run-7/merge-adapter/merged"


@pytest.fixture(scope="module")
def passed_eval_dir(tiny_model_dir, memorized_student_dir, reversal_data_dir, tmp_path_factory):
    """The eval stage's real output for a distilled student that passed its gate."""
    out = tmp_path_factory.mktemp("eval")
    config = EvalConfig(
        student_dir=str(tiny_model_dir),
        trained_dir=str(memorized_student_dir),
        data_dir=str(reversal_data_dir),
        output_dir=str(out),
        max_new_tokens=12,
        batch_size=8,
        gate_metric="distilled_exact_match",
        min_score=0.9,
    )
    assert run_eval(config).gate_passed is True
    return out


@pytest.fixture
def registry(monkeypatch):
    fake = FakeModelRegistry()
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", fake.token)
    with ServerThread(fake.app()) as server:
        fake.url = server.url
        yield fake


def register_config(eval_dir, out, **fields) -> Config:
    values = {
        "model_uri": MODEL_URI,
        "eval_dir": str(eval_dir),
        "output_dir": str(out),
        "run_id": "run-7",
        "run_name": "llm-distillation-2026-11-29",
        "serving": {"namespace": "team"},
        **fields,
    }
    return from_dict(Config, values)


def test_a_gated_model_is_registered_with_its_metrics_and_the_run_id(passed_eval_dir, registry, tmp_path):
    result = run(
        register_config(passed_eval_dir, tmp_path, registry_url=registry.url, model_name="qwen-mini")
    )

    assert [(c.method, c.path) for c in registry.calls] == [
        ("GET", f"{API}/registered_models"),  # the client checks the server when it connects
        ("GET", f"{API}/registered_model"),
        ("POST", f"{API}/registered_models"),
        ("GET", f"{API}/model_version"),
        ("POST", f"{API}/model_versions"),
        ("POST", f"{API}/model_versions/2/artifacts"),
    ]
    assert {c.authorization for c in registry.calls} == {f"Bearer {registry.token}"}
    assert registry.calls[1].query == {"name": "qwen-mini"}
    assert registry.calls[2].body["name"] == "qwen-mini"
    version = registry.calls[4].body
    assert version["name"] == "llm-distillation-2026-11-29" and version["registeredModelId"] == "1"
    assert version["author"] == "kfp-distill"
    properties = version["customProperties"]
    assert properties["pipeline_run_id"] == {"string_value": "run-7", "metadataType": "MetadataStringValue"}
    assert properties["distilled_exact_match"] == {"double_value": 1.0, "metadataType": "MetadataDoubleValue"}
    assert properties["eval_gate"]["string_value"].startswith(
        "eval gate passed: distilled_exact_match = 1.0000"
    )
    assert properties["forgetting_gate"]["string_value"] == "forgetting gate off (max_regression not set)"
    assert registry.calls[5].body == {
        "name": "qwen-mini",
        "artifactType": "model-artifact",
        "modelFormatName": "huggingface",
        "modelFormatVersion": "1",
        "uri": MODEL_URI,
        "state": "UNKNOWN",
    }
    assert result.registration["registered_model_id"] == "1" and result.deployed is None
    assert (
        json.loads((tmp_path / "registration.json").read_text())["version"] == "llm-distillation-2026-11-29"
    )


def test_a_second_run_adds_a_version_and_the_same_version_again_is_refused(
    passed_eval_dir, registry, tmp_path
):
    run(register_config(passed_eval_dir, tmp_path / "a", registry_url=registry.url, run_name="v1"))
    run(register_config(passed_eval_dir, tmp_path / "b", registry_url=registry.url, run_name="v2"))
    assert len(registry.models) == 1 and sorted(v["name"] for v in registry.versions.values()) == ["v1", "v2"]
    with pytest.raises(
        InputError, match=re.escape("refused distilled-student version v2: Version v2 already exists")
    ):
        run(register_config(passed_eval_dir, tmp_path / "c", registry_url=registry.url, run_name="v2"))


@pytest.mark.parametrize("gate", ["gate", "forgetting_gate"])
def test_a_model_that_failed_a_gate_is_neither_registered_nor_deployed(
    passed_eval_dir, registry, tmp_path, gate
):
    evaluation = json.loads((passed_eval_dir / "eval.json").read_text())
    evaluation[gate] = {"passed": False, "message": f"{gate} failed: 12.0 points lost"}
    failed = tmp_path / "failed-eval"
    failed.mkdir()
    (failed / "eval.json").write_text(json.dumps(evaluation))
    with pytest.raises(HandOffRefused, match=f"{gate} failed: 12.0 points lost"):
        run(register_config(failed, tmp_path / "out", registry_url=registry.url, deploy=True))
    assert registry.calls == []
    assert not (tmp_path / "out" / "inferenceservice.yaml").exists()


def test_without_registry_url_or_deploy_only_the_inference_service_is_written(passed_eval_dir, tmp_path):
    result = run(register_config(passed_eval_dir, tmp_path))
    assert result.registration is None and result.deployed is None
    service = yaml.safe_load((tmp_path / "inferenceservice.yaml").read_text())
    assert service["spec"]["predictor"]["model"]["storageUri"] == MODEL_URI


def test_the_inference_service_is_valid_against_the_kserve_crd_and_served_by_its_hf_runtime(
    kserve_schema, vendor_dir
):
    serving = ServingConfig(
        namespace="team",
        gpus=2,
        max_model_len=8192,
        service_account="distill-s3-reader",
        args=["--dtype=bfloat16"],
    )
    service = build_inference_service(
        serving, model_name="Qwen2.5 Mini (distilled)", storage_uri=MODEL_URI, namespace="team", labels={}
    )
    jsonschema.validate(service, kserve_schema)
    model = service["spec"]["predictor"]["model"]
    assert service["metadata"]["name"] == "qwen2-5-mini-distilled"
    assert model["args"] == [
        "--model_name=qwen2-5-mini-distilled",
        "--backend=vllm",
        "--max-model-len=8192",
        "--dtype=bfloat16",
    ]
    assert (
        model["resources"]["limits"]["nvidia.com/gpu"]
        == "2"
        == model["resources"]["requests"]["nvidia.com/gpu"]
    )
    assert service["spec"]["predictor"]["serviceAccountName"] == "distill-s3-reader"
    runtime = yaml.safe_load(
        (vendor_dir / "kserve-v0.20.0" / "runtime-kserve-huggingfaceserver.yaml").read_text()
    )
    formats = {(f["name"], f.get("autoSelect")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], True) in formats  # KServe selects the HF runtime by itself

    broken = copy.deepcopy(service)
    broken["spec"]["predictor"]["model"]["args"] = "--backend=vllm"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, kserve_schema)


def test_cpu_serving_asks_for_no_gpu_and_leaves_the_backend_to_the_runtime(kserve_schema):
    service = build_inference_service(
        ServingConfig(gpus=0), model_name="m", storage_uri=MODEL_URI, namespace="team", labels={}
    )
    jsonschema.validate(service, kserve_schema)
    model = service["spec"]["predictor"]["model"]
    assert "nvidia.com/gpu" not in model["resources"]["limits"] and "--backend=vllm" not in model["args"]


def test_deploy_creates_the_inference_service_then_replaces_it_on_the_next_run(
    passed_eval_dir, cluster, tmp_path, kserve_schema
):
    first = run(register_config(passed_eval_dir, tmp_path / "a", deploy=True, run_name="v1"))
    assert first.deployed == "created"
    stored = cluster.inference_services["team", "distilled-student"]
    jsonschema.validate(stored, kserve_schema)
    assert stored["metadata"]["labels"]["kfp-distill/model-version"] == "v1"
    assert stored == {
        **yaml.safe_load((tmp_path / "a" / "inferenceservice.yaml").read_text()),
        "metadata": stored["metadata"],
    }

    second = run(register_config(passed_eval_dir, tmp_path / "b", deploy=True, run_name="v2"))
    assert second.deployed == "replaced"
    stored = cluster.inference_services["team", "distilled-student"]
    assert stored["metadata"]["labels"]["kfp-distill/model-version"] == "v2"
    assert stored["metadata"]["resourceVersion"] == "2"
    # Exactly what the Role in manifests/ grants the pipeline's service accounts for deploying.
    assert (
        cluster.api_calls
        == role_rules("distill-model-deployer")
        == {
            ("serving.kserve.io", "inferenceservices", "create"),
            ("serving.kserve.io", "inferenceservices", "get"),
            ("serving.kserve.io", "inferenceservices", "update"),
        }
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"registry_url": "model-registry:8080"},
            "registry_url: 'model-registry:8080' must look like https://",
        ),
        ({"registry_url": "https://user:pw@mr.example"}, "registry_url: holds credentials"),
        ({"serving": {"namespace": "Team_A"}}, "serving.namespace: 'Team_A' is not a Kubernetes name"),
        ({"serving": {"gpus": -1}}, "serving.gpus: -1 must be 0 or more"),
        ({"model_name": ""}, "model_name: empty"),
    ],
)
def test_bad_settings_fail_naming_the_field(fields, message, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(message)):
        register_config(tmp_path, tmp_path, **fields)


def test_model_names_become_kubernetes_names():
    assert service_name("Qwen/Qwen2.5-0.5B") == "qwen-qwen2-5-0-5b"
    assert service_name("7b-student") == "m-7b-student"
    assert len(service_name("x" * 100)) == 63


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://any-host:8080", True),
        ("http://model-registry.kubeflow.svc:8080", True),
        ("http://model-registry.kubeflow.svc.cluster.local:8080", False),
        ("http://127.0.0.1:8080", False),
        ("https://model-registry.example.com", False),
    ],
)
def test_the_registry_url_is_https_or_plain_http_inside_the_cluster(url, refused, tmp_path):
    if refused:
        with pytest.raises(ConfigError, match=re.escape(f"registry_url: {url} is plain http to")):
            register_config(tmp_path, tmp_path, registry_url=url)
    else:
        assert register_config(tmp_path, tmp_path, registry_url=url).registry_url == url


SA_TOKEN = "sa-token-7f3e9d"


@pytest.fixture
def service_account_token(tmp_path, monkeypatch):
    """The pod's service-account token (read by the model-registry client), MODEL_REGISTRY_TOKEN unset."""
    (tmp_path / "sa-token").write_text(SA_TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "sa-token"))
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_the_service_account_token_never_goes_outside_the_cluster_nor_through_a_proxy(
    passed_eval_dir, service_account_token, tmp_path, monkeypatch
):
    with capture_server() as capture:
        monkeypatch.setenv("HTTP_PROXY", capture.url)
        inside = "http://model-registry.kubeflow.svc.cluster.local:8080"
        error = None
        try:
            run(register_config(passed_eval_dir, tmp_path / "b", registry_url=inside))
        except Exception as raised:
            error = raised
        assert not capture.received(SA_TOKEN)
        assert isinstance(error, InputError) and "would go through the proxy HTTP_PROXY" in str(error)
    outside = register_config(passed_eval_dir, tmp_path / "a", registry_url="https://mr.example.com")
    with pytest.raises(InputError, match="mr.example.com is outside the cluster and MODEL_REGISTRY_TOKEN"):
        run(outside)


def another_teams_service(kserve_schema, labels: dict[str, str]) -> dict:
    """An InferenceService named like ours, created by someone else, valid against the KServe CRD."""
    service = build_inference_service(
        ServingConfig(gpus=0),
        model_name="distilled-student",
        storage_uri="s3://theirs/model",
        namespace="team",
        labels=labels,
    )
    service["metadata"]["resourceVersion"] = "7"
    jsonschema.validate(service, kserve_schema)
    return service


@pytest.mark.parametrize(
    "labels",
    [
        {"team": "search"},  # another team's
        {
            "app.kubernetes.io/part-of": "kfp-distill",
            "kfp-distill/model-name": "other-model",
        },  # another model's
    ],
)
def test_deploy_leaves_an_inference_service_it_did_not_create_for_this_model_alone(
    passed_eval_dir, cluster, tmp_path, kserve_schema, labels
):
    theirs = another_teams_service(kserve_schema, labels)
    cluster.inference_services["team", "distilled-student"] = copy.deepcopy(theirs)
    with pytest.raises(
        InputError, match="deploy: InferenceService team/distilled-student exists and is not kfp-distill's"
    ):
        run(register_config(passed_eval_dir, tmp_path / "out", deploy=True))
    assert cluster.inference_services["team", "distilled-student"] == theirs


@pytest.mark.parametrize(
    "override",
    [
        "register_overrides.model_uri=s3://elsewhere/model",
        "register_overrides.eval_dir=/tmp/forged-eval",
        "register_overrides.serving.service_account=cluster-admin-sa",
    ],
)
def test_a_run_cannot_choose_the_model_uri_eval_dir_or_service_account(override, capsys):
    from pipelines import submit

    assert submit.main(["--check", "--set", override]) == 2
    field = override.split("=")[0]
    assert capsys.readouterr().err.startswith(f"error: {field}: not a run's to set")
