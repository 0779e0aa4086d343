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
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes import client as k8s

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
from tests.packaging.conftest import (
    REPO,
    TRAIN_IMAGE,
    TRAIN_POD,
    TRAIN_ROLE,
    assert_trained_on_two_nodes,
    python_spec,
    role_rules,
    terminate_while_running,
    train,
)
from tests.packaging.pod_security import restricted_violations

SECRETS = {"distill-teacher": {"api-key": "TEACHER_API_KEY"}}


def python_job(name: str, code: str, nodes: int = 2) -> PyTorchJobSpec:
    return python_spec(PyTorchJobSpec, name, code, nodes=nodes, env_from_secrets=SECRETS)


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


def test_a_failing_pod_fails_the_run_with_its_last_lines_and_the_job_is_still_deleted(cluster):
    fake, api_client = cluster
    code = (
        "import os, sys; print('rank', os.environ['RANK']); sys.exit(3 if os.environ['RANK'] == '1' else 0)"
    )
    lines: list[str] = []
    with pytest.raises(RuntimeError) as failed:
        run_pytorchjob(python_job("broken", code), api_client=api_client, poll_s=0.1, echo=lines.append)
    message = str(failed.value)
    assert message.startswith("PyTorchJob team/broken failed: pod broken-worker-0 failed")
    assert message.endswith("\nlast lines of broken-worker-0:\nrank 1\n")  # the failing pod's only
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


def test_two_nodes_train_through_torchrun_with_inputs_and_outputs_in_s3(store_cluster, tmp_path):
    fake, api_client, s3 = store_cluster
    summary, _ = train(api_client, tmp_path, "run-0001", engine="pytorchjob")
    assert_trained_on_two_nodes(fake, summary, tmp_path, "run-0001")
    (job,) = fake.created
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": TRAIN_POD, "uid": "uid-123"}
    ]
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == TRAIN_IMAGE
        assert restricted_violations(replica["template"]["spec"]) == []
    # The train task's Role grants exactly the calls it made: nothing missing, nothing spare.
    assert fake.api_calls == {rule for rule in role_rules(TRAIN_ROLE) if rule[0] != "trainer.kubeflow.org"}
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
    fake, _ = cluster
    assert terminate_while_running(cluster, tmp_path, "PyTorchJobSpec", "run_pytorchjob", fake.jobs) != 0
    assert fake.deleted == ["killed"] and fake.pods == {}
