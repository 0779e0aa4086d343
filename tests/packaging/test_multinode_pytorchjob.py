"""Multi-node training as a PyTorchJob, through the official kubernetes client against a fake Kubernetes
API whose fake operator runs each replica as a local process: the job's shape, log streaming, clean-up on
success, failure and timeout, replacing a leftover job, a real two-node torchrun rendezvous that
moves inputs and outputs through S3 (moto), and least privilege: restricted pods that get only the store's
keys from the pipeline, and a Role that grants exactly the API calls made."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import kubernetes_validate
import pytest
import yaml
from fake_kubernetes import FakeKubernetes  # tests/packaging is on sys.path (rootdir import mode)
from kubernetes import client as k8s
from kustomize_render import build
from pod_security import restricted_violations

from components.common.errors import ConfigError
from components.common.records import Record, write_records
from components.common.store import open_store
from components.train.multinode import (
    PyTorchJobSpec,
    build_pytorchjob,
    job_name_for,
    run_multinode_training,
    run_pytorchjob,
)
from pipelines.loopback import ServerThread

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SECRETS = {"distill-teacher": {"api-key": "TEACHER_API_KEY"}}


def pipeline_job_env() -> dict:
    """The Secrets and ConfigMaps the compiled pipeline hands the train task for the job's pods."""
    pipeline = next(yaml.safe_load_all((REPO / "pipelines" / "distill_pipeline.yaml").read_text()))
    inputs = pipeline["root"]["dag"]["tasks"]["train-student"]["inputs"]["parameters"]
    return inputs["job_env"]["runtimeValue"]["constant"]


def role_rules() -> set[tuple[str, str, str]]:
    """(group, resource, verb) granted by the Role in manifests/ that the train task runs under (both
    engines: TrainJob and PyTorchJob)."""
    (role,) = [
        r
        for r in build(REPO / "manifests" / "base")
        if r["kind"] == "Role" and r["metadata"]["name"] == "distill-train-launcher"
    ]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def is_credential(name: str) -> bool:
    return any(word in name for word in ("KEY", "TOKEN", "SECRET"))


@pytest.fixture
def cluster(tmp_path):
    fake = FakeKubernetes(workdir=tmp_path / "pods", secrets={"distill-teacher": {"api-key": "sk-test"}})
    fake.workdir.mkdir()
    with ServerThread(fake.app()) as server:
        configuration = k8s.Configuration(host=server.url)
        configuration.api_key = {"authorization": fake.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        with k8s.ApiClient(configuration) as api_client:
            yield fake, api_client
        fake.shutdown()


def python_job(name: str, code: str, nodes: int = 2) -> PyTorchJobSpec:
    return PyTorchJobSpec(
        name=name,
        namespace="team",
        image="ghcr.io/kfp-distill/kfp-distill-train:test",
        command=["python", "-c", code],
        nodes=nodes,
        gpus_per_node=0,
        env_from_secrets=SECRETS,
    )


def test_job_has_a_master_and_workers_with_gpus_shm_and_secrets_by_reference():
    spec = PyTorchJobSpec(
        name="distill-train-abc",
        namespace="team",
        image="ghcr.io/kfp-distill/kfp-distill-train:1",
        command=["python", "-m", "components.train.multinode"],
        nodes=4,
        gpus_per_node=8,
        env={"NCCL_DEBUG": "WARN"},
        env_from_secrets={"distill-s3": {"access-key-id": "AWS_ACCESS_KEY_ID"}},
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        active_deadline_s=86400,
    )
    job = build_pytorchjob(spec)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    assert job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["runPolicy"] == {
        "cleanPodPolicy": "None",
        "backoffLimit": 0,
        "activeDeadlineSeconds": 86400,
    }
    for replica in replicas.values():
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": replica["template"]["spec"],
        }
        kubernetes_validate.validate(pod, "1.30", strict=True)
        (container,) = pod["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        secret_env = [e for e in container["env"] if "valueFrom" in e]
        assert secret_env == [
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "distill-s3", "key": "access-key-id"}},
            }
        ]
    assert (
        "Worker" not in build_pytorchjob(python_job("single", "pass", nodes=1))["spec"]["pytorchReplicaSpecs"]
    )


def test_job_pods_run_restricted_on_a_read_only_root_with_scratch_volumes():
    job = build_pytorchjob(python_job("locked", "pass", nodes=3))
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert restricted_violations(pod) == []
        assert pod["automountServiceAccountToken"] is False
        # The operator's init container (a root busybox waiting for the Master) must still start.
        assert "runAsNonRoot" not in pod["securityContext"]
        (container,) = pod["containers"]
        empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
        writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
        assert {"/tmp", "/home/distill", "/dev/shm"} <= writable  # the images' HOME (docker/*.Dockerfile)


def read_only_root_available() -> bool:
    """Whether this machine lets an unprivileged process remount / read-only in its own namespaces."""
    if shutil.which("unshare") is None:
        return False
    command = ["unshare", "-rm", "mount", "-o", "remount,bind,ro", "/"]
    return subprocess.run(command, capture_output=True).returncode == 0


def read_only_pod_script(scratch: list[str], keep: list[Path]) -> str:
    """A shell script that makes / read-only and puts a fresh tmpfs on each scratch path, as the pod's
    emptyDirs, then runs "$@". The code and the interpreter (`keep`) stay reachable read-only where a
    scratch mount would hide them, as in a clone under /tmp: each is held on a tmpfs over /mnt first."""
    hidden = [path for path in keep if any(path.is_relative_to(mount) for mount in scratch)]
    hidden = [path for path in hidden if not any(path != top and path.is_relative_to(top) for top in hidden)]
    hold = [f"mkdir /mnt/{i} && mount --bind {path} /mnt/{i}" for i, path in enumerate(hidden)]
    back = [
        f"mkdir -p {path} && mount --bind /mnt/{i} {path} && mount -o remount,bind,ro {path}"
        for i, path in enumerate(hidden)
    ]
    steps = [
        *(["mount -t tmpfs hold /mnt", *hold] if hidden else []),
        "mount -o remount,bind,ro /",
        *(f"mount -t tmpfs scratch {path}" for path in scratch),
        *back,
        "mkdir /tmp/home",
        'exec "$@"',
    ]
    return " && ".join(steps)


@pytest.mark.slow
@pytest.mark.skipif(not read_only_root_available(), reason="needs user and mount namespaces (unshare -rm)")
def test_a_job_pod_trains_with_a_read_only_root_and_only_its_scratch_volumes_writable(
    s3_endpoint, tiny_model_dir, tmp_path
):
    """The pod's own command (`python -m components.train.multinode`, real torchrun and trainer) with the
    root filesystem read-only and a fresh tmpfs on each of the pod's emptyDir mounts that exists here;
    HOME stands in for the images' home under /tmp. Inputs and outputs go through S3, as in the pods."""
    pod = build_pytorchjob(python_job("ro", "pass", nodes=1))["spec"]["pytorchReplicaSpecs"]["Master"]
    (container,) = pod["template"]["spec"]["containers"]
    scratch = [m["mountPath"] for m in container["volumeMounts"] if Path(m["mountPath"]).is_dir()]
    assert "/tmp" in scratch
    data = tmp_path / "data"
    data.mkdir()
    words = ["kite", "hello", "abc", "moon"] * 3
    records = [
        Record(
            id=str(i), messages=[{"role": "user", "content": w}, {"role": "assistant", "content": w[::-1]}]
        )
        for i, w in enumerate(words)
    ]
    write_records(data / "train.jsonl", records)
    open_store("s3://distill/ro/student").upload_dir(tiny_model_dir, "")
    open_store("s3://distill/ro/data").upload_dir(data, "")
    payload = {
        "fields": {"method": "lora", "max_steps": 4, "batch_size": 4, "save_steps": 2},
        "inputs": {"student_dir": "s3://distill/ro/student", "data_dir": "s3://distill/ro/data"},
        "outputs": {"output_dir": "s3://distill/ro/out/trained", "tensorboard_dir": "s3://distill/ro/out/tb"},
        "nodes": 1,
        "gpus_per_node": 0,
        "module": "components.train",
    }
    payload["fields"].update(store_uri="s3://distill/ro/store", run_id="read-only-root")
    script = read_only_pod_script(scratch, keep=[REPO, Path(sys.prefix)])
    env = {**os.environ, "DISTILL_TRAIN_JOB": json.dumps(payload), "HOME": "/tmp/home"}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO), TRITON_CACHE_DIR="/tmp/triton")
    env.pop("DISTILL_WORKDIR", None)
    command = [sys.executable, "-m", "components.train.multinode"]
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *command],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(open_store("s3://distill/ro/out/trained").read_bytes("train_summary.json"))
    assert summary["steps"] == 4


def test_job_names_are_valid_and_stable_per_run():
    name = job_name_for("3F2A1BC0-aaaa-bbbb-cccc-1234567890ab-extra-long-suffix")
    assert name == job_name_for("3F2A1BC0-aaaa-bbbb-cccc-1234567890ab-extra-long-suffix")
    assert name.startswith("distill-train-3f2a1bc0-aaaa") and len(name) <= 52 and not name.endswith("-")
    with pytest.raises(ConfigError, match="nodes: must be at least 1"):
        python_job("x", "pass", nodes=0)


def test_logs_of_every_pod_are_streamed_and_the_job_is_deleted(cluster):
    fake, api_client = cluster
    code = (
        "import os; print('hello from rank', os.environ['RANK'], os.environ['TEACHER_API_KEY'] == 'sk-test')"
    )
    lines: list[str] = []
    handler = signal.getsignal(signal.SIGTERM)
    state = run_pytorchjob(python_job("hello", code), api_client=api_client, poll_s=0.1, echo=lines.append)
    assert state == "Succeeded"
    assert signal.getsignal(signal.SIGTERM) is handler  # the SIGTERM guard is lifted again
    assert "[hello-master-0] hello from rank 0 True" in lines
    assert "[hello-worker-0] hello from rank 1 True" in lines
    assert fake.deleted == ["hello"] and fake.jobs == {}


def test_a_failing_pod_fails_the_run_and_the_job_is_still_deleted(cluster):
    fake, api_client = cluster
    code = (
        "import os, sys; print('rank', os.environ['RANK']); sys.exit(3 if os.environ['RANK'] == '1' else 0)"
    )
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="PyTorchJob team/broken failed: pod broken-worker-0 failed"):
        run_pytorchjob(python_job("broken", code), api_client=api_client, poll_s=0.1, echo=lines.append)
    assert "[broken-worker-0] rank 1" in lines
    assert fake.deleted == ["broken"]


def test_a_job_that_runs_too_long_is_stopped_and_deleted(cluster):
    fake, api_client = cluster
    with pytest.raises(TimeoutError, match="still running after 1s"):
        run_pytorchjob(
            python_job("slow", "import time; time.sleep(60)"), api_client=api_client, poll_s=0.1, timeout_s=1
        )
    assert fake.deleted == ["slow"] and fake.pods == {}


def test_a_job_left_by_an_earlier_attempt_is_replaced(cluster):
    fake, api_client = cluster
    leftover = build_pytorchjob(python_job("retry", "import time; time.sleep(60)"))
    k8s.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "kubeflow.org", "v1", "team", "pytorchjobs", leftover
    )
    state = run_pytorchjob(
        python_job("retry", "print('second attempt')"), api_client=api_client, poll_s=0.1, echo=print
    )
    assert state == "Succeeded"
    assert fake.deleted == ["retry", "retry"]
    assert (
        fake.created[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
            "command"
        ][-1]
        == "print('second attempt')"
    )


def test_two_nodes_train_through_torchrun_with_inputs_and_outputs_in_s3(cluster, s3_endpoint, tmp_path):
    fake, api_client = cluster
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket="distill", Key="pipeline-root/student/config.json", Body=json.dumps({"model_type": "qwen2"})
    )
    s3.put_object(Bucket="distill", Key="pipeline-root/data/train.jsonl", Body=b"{}\n")
    # The pods get credentials only through the Secret and ConfigMap references, as on the cluster,
    # and the cluster holds every Secret of the pipeline.
    fake.base_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not is_credential(k)}
    fake.base_env["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path])
    fake.secrets["distill-s3"] = {"access-key-id": "test-access-key", "secret-access-key": "test-secret-key"}
    fake.secrets["distill-hf"] = {"token": "hf-test"}
    fake.secrets["distill-judge"] = {"api-key": "judge-test"}
    fake.config_maps["distill-s3-endpoint"] = {"endpoint-url": s3_endpoint, "region": "us-east-1"}
    train_image = "registry.example.com/ml/kfp-distill-train:abc1234"
    fake.other_pods["llm-distillation-xyz-train"] = {
        "metadata": {"name": "llm-distillation-xyz-train", "namespace": "team", "uid": "uid-123"},
        "spec": {"containers": [{"name": "main", "image": train_image}]},
    }
    fields = {
        "student_dir": "/kfp/inputs/student",  # the KFP pod's local copies: not visible to the job's pods
        "data_dir": "/kfp/inputs/data",
        "output_dir": str(tmp_path / "trained"),
        "tensorboard_dir": str(tmp_path / "tensorboard"),
        "method": "lora",
        "max_steps": 3,
    }
    summary = run_multinode_training(
        fields,
        {"student_dir": "s3://distill/pipeline-root/student", "data_dir": "s3://distill/pipeline-root/data"},
        store_uri="s3://distill",
        run_id="run-0001",
        pod_name="llm-distillation-xyz-train",
        nodes=2,
        gpus_per_node=0,
        namespace="team",
        env_from_secrets=pipeline_job_env()["secrets"],
        env_from_config_maps=pipeline_job_env()["config_maps"],
        module="fake_trainer",
        engine="pytorchjob",
        api_client=api_client,
        poll_s=0.2,
    )
    assert summary == {
        "method": "lora",
        "base_model": "qwen2",
        "steps": 3,
        "final_loss": 0.5,
        "world_size": 2,
        "rank_sum": 1,
        "nodes": 2,
        "credentials": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],  # never the teacher's key
    }
    assert (tmp_path / "tensorboard" / "events.out.tfevents.fake").exists()
    assert fake.deleted == ["distill-train-run-0001"]
    (job,) = fake.created
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "llm-distillation-xyz-train", "uid": "uid-123"}
    ]
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == train_image
        assert restricted_violations(replica["template"]["spec"]) == []
    # The train task's Role grants exactly the calls it made: nothing missing, nothing spare.
    assert fake.api_calls == {rule for rule in role_rules() if rule[0] != "trainer.kubeflow.org"}
    staged = s3.list_objects_v2(Bucket="distill", Prefix="runs/run-0001/train/multinode/")["Contents"]
    assert {item["Key"].rsplit("/", 1)[-1] for item in staged} == {
        "train_summary.json",
        "events.out.tfevents.fake",
    }


def test_multinode_training_needs_a_store_and_an_image(cluster, tmp_path):
    _, api_client = cluster
    with pytest.raises(ConfigError, match="image: not running in a KFP pod"):
        run_multinode_training(
            {},
            {},
            store_uri=str(tmp_path),
            run_id="r",
            nodes=2,
            gpus_per_node=1,
            namespace="team",
            api_client=api_client,
            pod_name="not-a-pod",
        )
    with pytest.raises(ConfigError, match="store_uri: multi-node training passes inputs and outputs"):
        run_multinode_training(
            {},
            {},
            store_uri="",
            run_id="r",
            image="i",
            nodes=2,
            gpus_per_node=1,
            namespace="team",
            api_client=api_client,
        )


def test_a_terminated_train_pod_deletes_its_job(cluster, tmp_path):
    fake, api_client = cluster
    configuration = api_client.configuration
    script = tmp_path / "driver.py"
    script.write_text(
        f"""
from kubernetes import client as k8s
from components.train.multinode import PyTorchJobSpec, run_pytorchjob
configuration = k8s.Configuration(host={configuration.host!r})
configuration.api_key = {{"authorization": {fake.token!r}}}
configuration.api_key_prefix = {{"authorization": "Bearer"}}
spec = PyTorchJobSpec(name="killed", namespace="team", image="i", command=["python", "-c", "import time; time.sleep(60)"])
run_pytorchjob(spec, api_client=k8s.ApiClient(configuration), poll_s=0.1)
"""
    )
    driver = subprocess.Popen([sys.executable, str(script)], cwd=HERE.parents[1])
    deadline = time.monotonic() + 60
    while ("team", "killed") not in fake.jobs and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.1)
    assert ("team", "killed") in fake.jobs
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=30) != 0
    assert fake.deleted == ["killed"] and fake.pods == {}
