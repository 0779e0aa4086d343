"""manifests/ renders (kustomize-equivalent), validates offline against the Kubernetes schemas, and agrees
with the pipeline: the Secret and ConfigMap names and keys the tasks read, the S3 settings the KFP
launcher reads, the TensorBoard image, its isolation and read-only keys, and the RBAC that multi-node
training needs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from pipelines import distill_pipeline
from pipelines.images import image_for
from tests.packaging.kustomize_render import build
from tests.packaging.pod_security import restricted_violations

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = ["base", "overlays/minio", "overlays/seaweedfs", "overlays/aws", "overlays/kubeflow-profile"]
KUBERNETES_VERSION = "1.30"
NAMESPACE = "distill"


def rendered(overlay: str) -> list[dict]:
    return build(MANIFESTS / overlay)


def find(resources: list[dict], kind: str, name: str) -> dict:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def example_secrets() -> dict[str, dict]:
    documents = yaml.safe_load_all((MANIFESTS / "secrets" / "example.yaml").read_text())
    return {document["metadata"]["name"]: document for document in documents}


def launcher_providers(resources: list[dict]) -> dict:
    return yaml.safe_load(find(resources, "ConfigMap", "kfp-launcher")["data"]["providers"])


def canonical(resources: list[dict]) -> list[dict]:
    key = lambda r: (r["apiVersion"], r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])  # noqa: E731
    return sorted(resources, key=key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_resource_is_valid_for_kubernetes(overlay):
    for resource in rendered(overlay):
        if resource["apiVersion"].startswith("kubeflow.org/"):
            continue  # CRDs: checked by the Profile test below
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_example_secrets_are_valid_and_hold_placeholders_only():
    for name, secret in example_secrets().items():
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
        for key, value in secret["stringData"].items():
            assert value.startswith("<") and value.endswith(">"), f"{name}.{key} looks like a real value"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_pipeline_namespace_with_the_project_label(overlay):
    for resource in rendered(overlay):
        if resource["kind"] in {"Namespace", "Profile"}:
            continue
        assert resource["metadata"]["namespace"] == NAMESPACE, resource["metadata"]["name"]
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kfp-distill"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize built in) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_python_renderer_matches_kubectl_kustomize(overlay):
    output = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / overlay)], check=True, capture_output=True, text=True
    ).stdout
    assert canonical(list(yaml.safe_load_all(output))) == canonical(rendered(overlay))


def test_secrets_and_configmaps_read_by_the_pipeline_are_documented_with_their_keys():
    secrets = example_secrets()
    for name, keys, _optional in (
        distill_pipeline.TEACHER_SECRET,
        distill_pipeline.S3_SECRET,
        distill_pipeline.HF_SECRET,
        distill_pipeline.JUDGE_SECRET,
    ):
        assert name in secrets, f"Secret {name} is read by the pipeline but not in manifests/secrets/"
        assert set(keys) <= set(secrets[name]["stringData"])
    name, keys = distill_pipeline.S3_CONFIGMAP
    endpoint = find(rendered("overlays/minio"), "ConfigMap", name)
    assert set(endpoint["data"]) == set(keys)


def test_every_secret_and_configmap_in_the_compiled_pipeline_is_provided_with_its_keys():
    compiled = list(yaml.safe_load_all((REPO / "pipelines" / "distill_pipeline.yaml").read_text()))
    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {name: set(secret["stringData"]) for name, secret in example_secrets().items()}
    config_maps = {
        resource["metadata"]["name"]: set(resource["data"])
        for resource in rendered("overlays/minio")
        if resource["kind"] == "ConfigMap"
    }
    referenced = 0
    for executor, settings in executors.items():
        for reference in settings.get("secretAsEnv", []):
            keys = {item["secretKey"] for item in reference["keyToEnv"]}
            assert keys <= secrets.get(reference["secretName"], set()), (
                f"{executor}: {reference['secretName']}"
            )
            referenced += 1
        for reference in settings.get("configMapAsEnv", []):
            keys = {item["configMapKey"] for item in reference["keyToEnv"]}
            assert keys <= config_maps.get(reference["configMapName"], set()), executor
            referenced += 1
    assert referenced >= 5  # every task reaches the store at least


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kfp_launcher_s3_providers_follow_the_launcher_schema(overlay):
    resources = rendered(overlay)
    launcher = find(resources, "ConfigMap", "kfp-launcher")["data"]
    assert urlparse(launcher["defaultPipelineRoot"]).scheme == "s3"
    s3 = launcher_providers(resources)["s3"]
    default_keys = {"endpoint", "region", "disableSSL", "forcePathStyle", "maxRetries", "credentials"}
    override_keys = default_keys | {"bucketName", "keyPrefix"}
    secrets = example_secrets()
    for settings, allowed in [(s3["default"], default_keys)] + [
        (o, override_keys) for o in s3.get("overrides", [])
    ]:
        assert set(settings) <= allowed, f"unknown launcher keys {set(settings) - allowed}"
        assert isinstance(settings.get("disableSSL", False), bool)
        reference = settings["credentials"]["secretRef"]
        assert set(reference) == {"secretName", "accessKeyKey", "secretKeyKey"}
        if reference["secretName"] == "distill-s3":
            assert {reference["accessKeyKey"], reference["secretKeyKey"]} <= set(
                secrets["distill-s3"]["stringData"]
            )


@pytest.mark.parametrize(
    "overlay, host, secure",
    [
        ("base", "s3.amazonaws.com", True),
        ("overlays/aws", "s3.eu-west-1.amazonaws.com", True),
        ("overlays/minio", "minio-service.kubeflow.svc.cluster.local:9000", False),
        ("overlays/seaweedfs", "seaweedfs.kubeflow.svc.cluster.local:8333", False),
    ],
)
def test_tasks_and_launcher_reach_the_same_object_store(overlay, host, secure):
    resources = rendered(overlay)
    default = launcher_providers(resources)["s3"]["default"]
    assert default["endpoint"] == host and default["disableSSL"] is not secure
    endpoint = find(resources, "ConfigMap", "distill-s3-endpoint")["data"]
    if secure:  # AWS: boto3 finds the regional endpoint itself; an AWS_ENDPOINT_URL would only pin it.
        assert "endpoint-url" not in endpoint
        assert endpoint["region"] == default["region"]
    else:
        assert endpoint["endpoint-url"] == f"http://{host}"


def test_tensorboard_reads_the_run_logs_from_s3_with_the_eval_image(monkeypatch):
    monkeypatch.delenv("REGISTRY", raising=False)
    monkeypatch.delenv("TAG", raising=False)
    resources = rendered("base")
    deployment = find(resources, "Deployment", "distill-tensorboard")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image_for("eval"), "bump newTag in manifests/base/kustomization.yaml"
    assert urlparse(find(resources, "ConfigMap", "distill-tensorboard")["data"]["logdir"]).scheme == "s3"
    secrets = example_secrets()
    for variable in container["env"]:
        reference = variable.get("valueFrom", {})
        if "secretKeyRef" in reference:
            assert (
                reference["secretKeyRef"]["key"] in secrets[reference["secretKeyRef"]["name"]]["stringData"]
            )
        if "configMapKeyRef" in reference and not reference["configMapKeyRef"].get("optional"):
            configmap = find(resources, "ConfigMap", reference["configMapKeyRef"]["name"])
            assert reference["configMapKeyRef"]["key"] in configmap["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tensorboard_reads_with_keys_of_its_own_and_is_reachable_only_through_port_forward(overlay):
    """TensorBoard has no authentication: loopback only, no Service, a NetworkPolicy that admits nothing;
    its store keys are a read-only Secret that no pipeline task or the KFP launcher uses."""
    resources = rendered(overlay)
    pod_template = find(resources, "Deployment", "distill-tensorboard")["spec"]["template"]
    pod, labels = pod_template["spec"], pod_template["metadata"]["labels"]
    (container,) = pod["containers"]
    from_secrets = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"]["name"]
        for variable in container["env"]
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert from_secrets == {
        "AWS_ACCESS_KEY_ID": "distill-s3-readonly",
        "AWS_SECRET_ACCESS_KEY": "distill-s3-readonly",
    }
    compiled = list(yaml.safe_load_all((REPO / "pipelines" / "distill_pipeline.yaml").read_text()))
    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    read_write = {ref["secretName"] for task in executors.values() for ref in task.get("secretAsEnv", [])}
    read_write.add(launcher_providers(resources)["s3"]["default"]["credentials"]["secretRef"]["secretName"])
    assert "distill-s3-readonly" not in read_write
    assert "distill-s3-readonly" in example_secrets()

    args = container["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1" and "--bind_all" not in args
    assert "httpGet" not in container["readinessProbe"]  # the kubelet would probe the pod IP
    services = [r for r in resources if r["kind"] == "Service"]
    assert not [s for s in services if s["spec"].get("selector", {}).items() <= labels.items()]
    policies = [
        r
        for r in resources
        if r["kind"] == "NetworkPolicy" and r["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert policies, "no NetworkPolicy selects the TensorBoard pods"
    assert all("Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress") for p in policies)
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_tensorboard_as_deployed_listens_on_loopback_only_and_its_probe_passes(tmp_path):
    """The manifest's own command, arguments and readiness probe, run here (with a free port)."""
    from tests.conftest import free_port

    container = find(rendered("base"), "Deployment", "distill-tensorboard")["spec"]["template"]["spec"][
        "containers"
    ][0]
    port = str(free_port())
    args = [port if a == "6006" else a.replace("$(TB_LOGDIR)", str(tmp_path)) for a in container["args"]]
    probe = [a.replace(":6006/", f":{port}/") for a in container["readinessProbe"]["exec"]["command"]]
    binaries = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(binaries / container["command"][0]), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while subprocess.run([sys.executable, *probe[1:]], capture_output=True).returncode != 0:
            assert server.poll() is None, "tensorboard exited"
            assert time.monotonic() < deadline, "the readiness probe never passed"
            time.sleep(0.5)
        address = non_loopback_address()
        if address is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, int(port)), timeout=5).close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_only_the_train_tasks_own_account_may_run_training_jobs_and_nothing_more():
    resources = rendered("base")
    role = find(resources, "Role", "distill-train-launcher")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        (group, plural, verb)
        for group, plural in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs"))
        for verb in ("create", "get", "delete")
    }
    needed |= {("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get")}
    assert granted == needed  # the calls the train task makes, see test_multinode_*.py
    binding = find(resources, "RoleBinding", "distill-train-launcher")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "distill-train-launcher", "namespace": NAMESPACE}
    ]
    token = find(resources, "Secret", "distill-train-launcher-token")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "distill-train-launcher"
    # Only the train task mounts the account's token; every other task runs without it.
    compiled = list(yaml.safe_load_all((REPO / "pipelines" / "distill_pipeline.yaml").read_text()))
    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounting = {
        name
        for name, settings in executors.items()
        for volume in settings.get("secretAsVolume", [])
        if volume["secretName"] == token["metadata"]["name"]
    }
    assert mounting == {"exec-train-student"}


def test_kubeflow_profile_overlay_lets_the_profile_own_the_namespace():
    resources = rendered("overlays/kubeflow-profile")
    assert not [r for r in resources if r["kind"] == "Namespace"]
    profile = find(resources, "Profile", NAMESPACE)
    assert profile["spec"]["owner"]["kind"] == "User"
    assert "requests.nvidia.com/gpu" in profile["spec"]["resourceQuotaSpec"]["hard"]
    assert "namespace" not in profile["metadata"]  # cluster-scoped


def test_renderer_refuses_kustomize_features_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(ValueError, match=r"unsupported fields \['configMapGenerator'\]"):
        build(tmp_path)
