"""Helpers of the packaging tests: the fake Kubernetes cluster the multi-node training jobs run on, what
the compiled pipeline and the manifests grant the train task, and a train task terminated mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml
from kubernetes import client as k8s

from pipelines.loopback import ServerThread
from tests.packaging.fake_kubernetes import FakeKubernetes
from tests.packaging.kustomize_render import build

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAIN_POD = "llm-distillation-xyz-train"
TRAIN_IMAGE = "registry.example.com/ml/kfp-distill-train:abc1234"
TRAIN_ROLE = "distill-train-launcher"  # the Role the train task runs under (both engines)


def pipeline_job_env() -> dict:
    """The Secrets and ConfigMaps the compiled pipeline hands the train task for the job's pods."""
    pipeline = next(yaml.safe_load_all((REPO / "pipelines" / "distill_pipeline.yaml").read_text()))
    inputs = pipeline["root"]["dag"]["tasks"]["train-student"]["inputs"]["parameters"]
    return inputs["job_env"]["runtimeValue"]["constant"]


def role_rules(role_name: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) granted by the Role `role_name` in manifests/base."""
    (role,) = [
        r
        for r in build(REPO / "manifests" / "base")
        if r["kind"] == "Role" and r["metadata"]["name"] == role_name
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


def our_runtime(max_restarts: int | None = None) -> dict:
    """manifests/trainer's ClusterTrainingRuntime, optionally with another restart limit."""
    (runtime,) = build(REPO / "manifests" / "trainer")
    if max_restarts is not None:
        runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] = max_restarts
    return runtime


@pytest.fixture
def cluster(tmp_path):
    """The fake Kubernetes API on loopback serving both engines (our runtime installed), and a client."""
    fake = FakeKubernetes(
        workdir=tmp_path / "pods",
        secrets={"distill-teacher": {"api-key": "sk-test"}},
        runtimes={"distill-torch": our_runtime()},
    )
    fake.workdir.mkdir()
    with ServerThread(fake.app()) as server:
        configuration = k8s.Configuration(host=server.url)
        configuration.api_key = {"authorization": fake.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        with k8s.ApiClient(configuration) as api_client:
            yield fake, api_client
        fake.shutdown()


@pytest.fixture
def store_cluster(cluster, s3_endpoint):
    """The fake cluster holding every Secret of the pipeline and its ConfigMap, the train pod, and the
    student and data in S3; the job's pods get credentials only through the references, as on the
    cluster."""
    fake, api_client = cluster
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket="distill", Key="pipeline-root/student/config.json", Body=json.dumps({"model_type": "qwen2"})
    )
    s3.put_object(Bucket="distill", Key="pipeline-root/data/train.jsonl", Body=b"{}\n")
    fake.base_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not is_credential(k)}
    fake.base_env["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path])
    fake.secrets["distill-s3"] = {"access-key-id": "test-access-key", "secret-access-key": "test-secret-key"}
    fake.secrets["distill-hf"] = {"token": "hf-test"}
    fake.secrets["distill-judge"] = {"api-key": "judge-test"}
    fake.config_maps["distill-s3-endpoint"] = {"endpoint-url": s3_endpoint, "region": "us-east-1"}
    fake.other_pods[TRAIN_POD] = {
        "metadata": {"name": TRAIN_POD, "namespace": "team", "uid": "uid-123"},
        "spec": {
            "containers": [{"name": "main", "image": TRAIN_IMAGE}],
            "imagePullSecrets": [{"name": "regcred"}],
        },
    }
    return fake, api_client, s3


def train(
    api_client, tmp_path, run_id: str, fields: dict | None = None, **settings
) -> tuple[dict, list[str]]:
    """run_multinode_training of a 2-node LoRA run of the fake trainer on the store_cluster, as the
    train task runs it; returns its summary and what it echoed."""
    from components.train.multinode import run_multinode_training

    lines: list[str] = []
    fields = {
        "student_dir": "/kfp/inputs/student",  # the KFP pod's local copies: not visible to the job's pods
        "data_dir": "/kfp/inputs/data",
        "output_dir": str(tmp_path / run_id / "trained"),
        "tensorboard_dir": str(tmp_path / run_id / "tensorboard"),
        "method": "lora",
        "max_steps": 3,
        **(fields or {}),
    }
    summary = run_multinode_training(
        fields,
        {"student_dir": "s3://distill/pipeline-root/student", "data_dir": "s3://distill/pipeline-root/data"},
        store_uri="s3://distill",
        run_id=run_id,
        pod_name=TRAIN_POD,
        nodes=2,
        gpus_per_node=0,
        namespace="team",
        env_from_secrets=pipeline_job_env()["secrets"],
        env_from_config_maps=pipeline_job_env()["config_maps"],
        optional_secrets=pipeline_job_env()["optional_secrets"],
        module="fake_trainer",
        api_client=api_client,
        poll_s=0.2,
        echo=lines.append,
        **settings,
    )
    return summary, lines


def python_spec(spec_class: type, name: str, code: str, nodes: int = 2, **fields):
    """A job of either engine (`spec_class`) whose `nodes` CPU pods run `python -c code` in namespace team."""
    return spec_class(
        name=name,
        namespace="team",
        image="ghcr.io/kfp-distill/kfp-distill-train:test",
        command=["python", "-c", code],
        nodes=nodes,
        gpus_per_node=0,
        **fields,
    )


def assert_trained_on_two_nodes(fake, summary: dict, tmp_path, run_id: str) -> None:
    """What `train` returns when both nodes trained: the fake trainer's summary of the two ranks, its
    TensorBoard events in the task's folder, and the job deleted."""
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
    assert (tmp_path / run_id / "tensorboard" / "events.out.tfevents.fake").exists()
    assert fake.deleted == [f"distill-train-{run_id}"]


def terminate_while_running(cluster, tmp_path, spec: str, run: str, jobs: dict) -> int:
    """Run `run(spec(name="killed", ...))` (two pods that sleep a minute) in a child process, as the KFP
    train pod does, send it SIGTERM once the job and its pods run, and return the process's exit code.
    `jobs` holds the fake's jobs of the engine."""
    fake, api_client = cluster
    script = tmp_path / "driver.py"
    script.write_text(
        f"""
from kubernetes import client as k8s
from components.train.multinode import {spec}, {run}
configuration = k8s.Configuration(host={api_client.configuration.host!r})
configuration.api_key = {{"authorization": {fake.token!r}}}
configuration.api_key_prefix = {{"authorization": "Bearer"}}
spec = {spec}(name="killed", namespace="team", image="i", command=["python", "-c", "import time; time.sleep(60)"])
{run}(spec, api_client=k8s.ApiClient(configuration), poll_s=0.1)
"""
    )
    driver = subprocess.Popen([sys.executable, str(script)], cwd=REPO)
    deadline = time.monotonic() + 60
    while (len(fake.pods) < 2 or ("team", "killed") not in jobs) and time.monotonic() < deadline:
        if driver.poll() is not None:
            break
        time.sleep(0.1)
    assert ("team", "killed") in jobs and len(fake.pods) == 2
    driver.send_signal(signal.SIGTERM)
    return driver.wait(timeout=30)
