"""Multi-node training as a Kubeflow Trainer v2 TrainJob, through the official kubernetes client against a
fake Kubernetes API whose fake Trainer runs each node pod as a local process: the TrainJob and the
project's ClusterTrainingRuntime against the real Trainer v2.3.0 CRD schemas (shared/vendor), the
engine auto-detection, a real two-node torchrun rendezvous that moves inputs and outputs through S3
(moto) with node 0's log streamed, a lost node that restarts the job and resumes from the checkpoint,
a failure that names the failing pod's last lines and a KFP retry that resumes, deletion on SIGTERM,
the KD teacher from the store, and a Role that grants exactly the API calls made."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.common.errors import ConfigError
from components.common.model_download import fetch_model
from components.common.store import open_store
from components.train.multinode import (
    TrainJobSpec,
    build_trainjob,
    choose_engine,
    job_name_for,
    run_trainjob,
)
from tests.packaging.conftest import (
    TRAIN_IMAGE,
    TRAIN_POD,
    TRAIN_ROLE,
    assert_trained_on_two_nodes,
    is_credential,
    our_runtime,
    pipeline_job_env,
    python_spec,
    role_rules,
    terminate_while_running,
    train,
)
from tests.packaging.pod_security import restricted_violations

TRAINER = "kubeflow-trainer-v2.3.0"


def crd_validator(vendor_dir: Path, name: str) -> jsonschema.Draft7Validator:
    """The CRD's openAPIV3Schema as a JSON Schema validator (CEL rules are the API server's own)."""
    crd = yaml.safe_load((vendor_dir / TRAINER / f"trainer.kubeflow.org_{name}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def errors(validator: jsonschema.Draft7Validator, document: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def node_pod_template(runtime: dict) -> dict:
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return node["template"]["spec"]["template"]


def two_by_eight_gpus() -> TrainJobSpec:
    """The TrainJob the train task creates for a 2 x 8-GPU run, as in the pipeline's compiled wiring."""
    return TrainJobSpec(
        name=job_name_for("3F2A1BC0-aaaa-bbbb-cccc-1234567890ab"),  # a KFP run id
        namespace="team-a",
        image=TRAIN_IMAGE,
        command=["python", "-m", "components.train.multinode"],
        nodes=2,
        gpus_per_node=8,
        cpu="32",
        memory="256Gi",
        env={"DISTILL_TRAIN_JOB": '{"fields": "...", "nodes": 2, "gpus_per_node": 8}'},
        env_from_secrets=pipeline_job_env()["secrets"],
        env_from_config_maps=pipeline_job_env()["config_maps"],
        optional_secrets=pipeline_job_env()["optional_secrets"],
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        labels={"app.kubernetes.io/part-of": "kfp-distill", "app.kubernetes.io/component": "train"},
        queue_name="team-a-gpus",
        priority_class="batch-high",
        image_pull_secrets=["regcred"],
        owner_pod={"name": TRAIN_POD, "uid": "uid-123"},
    )


def test_the_trainjob_of_a_two_by_eight_gpu_run_is_valid_against_the_trainer_crd(vendor_dir):
    validator = crd_validator(vendor_dir, "trainjobs")
    job = build_trainjob(two_by_eight_gpus())
    assert errors(validator, job) == []
    # The CRD's CEL rules on the name (the API server's, not in the JSON schema): an RFC 1035 label.
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"},
        "limits": {"memory": "256Gi", "nvidia.com/gpu": "8"},
    }
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "distill-torch",
    }
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "batch-high"
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": TRAIN_POD, "uid": "uid-123"}
    ]
    by_reference = {e["name"]: e["valueFrom"] for e in trainer["env"] if "valueFrom" in e}
    assert by_reference["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "distill-s3", "key": "secret-access-key"}
    }
    assert by_reference["AWS_ENDPOINT_URL"]["configMapKeyRef"]["optional"] is True
    assert not any(is_credential(e["name"]) for e in trainer["env"] if "value" in e)  # keys by reference only
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    # The validator bites: a node count that is not an integer, or a missing runtime, is refused.
    broken = json.loads(json.dumps(job))
    broken["spec"]["trainer"]["numNodes"] = "two"
    del broken["spec"]["runtimeRef"]
    assert len(errors(validator, broken)) == 2


def test_our_runtime_and_the_upstream_ones_are_valid_against_the_runtime_crd(vendor_dir):
    validator = crd_validator(vendor_dir, "clustertrainingruntimes")
    runtime = our_runtime()
    assert errors(validator, runtime) == []
    for upstream in ("runtime-torch-distributed.yaml", "runtime-deepspeed-distributed.yaml"):
        assert errors(validator, yaml.safe_load((vendor_dir / TRAINER / upstream).read_text())) == []
    assert runtime["metadata"]["name"] == "distill-torch" and "namespace" not in runtime["metadata"]
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    template = node_pod_template(runtime)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]}
    kubernetes_validate.validate(pod, "1.30", strict=True)
    assert restricted_violations(template["spec"]) == []
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = template["spec"]["containers"]
    assert container["name"] == "node"  # the container Trainer fills from the TrainJob's trainer
    assert container["image"].startswith("ghcr.io/kfp-distill/kfp-distill-train:")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/dev/shm", "/tmp", "/home/distill"} <= mounts
    (shm,) = [v for v in template["spec"]["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"


def test_auto_picks_trainjob_then_pytorchjob_else_says_what_to_install(cluster):
    fake, api_client = cluster
    assert choose_engine("auto", api_client) == "trainjob"
    fake.engines = {"pytorchjob"}  # a Kubeflow 1.10 cluster
    assert choose_engine("auto", api_client) == "pytorchjob"
    assert choose_engine("pytorchjob", api_client) == "pytorchjob"
    with pytest.raises(
        ConfigError,
        match=r"train_engine: trainjob asked, but trainer.kubeflow.org/v1alpha1 trainjobs is not served; install Kubeflow Trainer v2",
    ):
        choose_engine("trainjob", api_client)
    fake.engines = set()
    with pytest.raises(ConfigError) as refused:
        choose_engine("auto", api_client)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(
        "train_engine: this cluster serves neither TrainJob nor PyTorchJob"
    )
    assert "manifests/trainer" in message and "Training Operator" in message
    fake.engines = {"trainjob"}
    assert choose_engine("auto", api_client) == "trainjob"
    assert fake.api_calls == set()  # discovery needs no Role


def python_trainjob(name: str, code: str, runtime: str = "distill-torch") -> TrainJobSpec:
    return python_spec(TrainJobSpec, name, code, runtime=runtime)


def test_node_zero_log_and_progress_are_streamed_and_the_job_is_deleted(cluster):
    fake, api_client = cluster
    code = "import os; print('hello from node', os.environ['PET_NODE_RANK'], 'of', os.environ['PET_NNODES'])"
    lines: list[str] = []
    handler = signal.getsignal(signal.SIGTERM)
    state = run_trainjob(python_trainjob("hello", code), api_client=api_client, poll_s=0.1, echo=lines.append)
    assert state == "Succeeded"
    assert signal.getsignal(signal.SIGTERM) is handler
    assert "[hello-node-0-0-a0] hello from node 0 of 2" in lines
    assert not any("hello from node 1" in line for line in lines)  # node 0's log only
    assert "TrainJob hello: Succeeded jobset completed" in lines
    assert any(line.startswith("TrainJob hello: node: ") for line in lines)  # progress of the child job
    assert fake.deleted == ["hello"] and fake.trainjobs == {} and fake.pods == {}


def test_an_unknown_runtime_is_refused_in_one_line(cluster):
    fake, api_client = cluster
    with pytest.raises(ConfigError) as refused:
        run_trainjob(
            python_trainjob("lost", "pass", runtime="torch-distributed"), api_client=api_client, poll_s=0.1
        )
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        "runtime: the API server refused TrainJob team/lost with runtime 'torch-distributed'"
    )
    assert 'ClusterTrainingRuntime.trainer.kubeflow.org "torch-distributed" not found' in message
    assert "kubectl apply -k manifests/trainer" in message
    assert fake.pods == {}


def test_a_failed_trainjob_names_the_failing_pods_last_lines_and_is_deleted(cluster):
    fake, api_client = cluster
    fake.runtimes["no-restarts"] = our_runtime(max_restarts=0)
    code = (
        "import os, sys; rank = os.environ['PET_NODE_RANK']; print('node', rank, 'line 1'); "
        "print('node', rank, 'out of memory'); sys.exit(3 if rank == '1' else 0)"
    )
    with pytest.raises(RuntimeError) as failed:
        run_trainjob(
            python_trainjob("broken", code, runtime="no-restarts"), api_client=api_client, poll_s=0.1
        )
    message = str(failed.value)
    assert message.startswith("TrainJob team/broken failed: jobset failed: pod broken-node-0-1-a0 failed")
    assert "last lines of broken-node-0-1-a0:\nnode 1 line 1\nnode 1 out of memory" in message
    assert fake.deleted == ["broken"] and fake.pods == {}


def test_a_terminated_train_pod_deletes_its_trainjob(cluster, tmp_path):
    fake, _ = cluster
    assert terminate_while_running(cluster, tmp_path, "TrainJobSpec", "run_trainjob", fake.trainjobs) != 0
    assert fake.deleted == ["killed"] and fake.trainjobs == {} and fake.pods == {}


def test_two_nodes_train_as_a_trainjob_through_torchrun_with_inputs_and_outputs_in_s3(
    store_cluster, tmp_path
):
    fake, api_client, s3 = store_cluster
    summary, lines = train(api_client, tmp_path, "run-0001", queue_name="team-queue", priority_class="low")
    assert_trained_on_two_nodes(fake, summary, tmp_path, "run-0001")
    assert "[distill-train-run-0001-node-0-0-a0] rank 0 of 2: data has 1 file(s)" in lines
    assert lines[0] == "TrainJob team/distill-train-run-0001 (runtime distill-torch): 2 node(s) x 0 GPU(s)"
    (job,) = fake.created
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["image"] == TRAIN_IMAGE
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-123"
    (patch,) = job["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]  # the train pod's, for the same image
    # The train task's Role grants exactly the calls it made: nothing missing, nothing spare.
    assert fake.api_calls == {rule for rule in role_rules(TRAIN_ROLE) if rule[0] != "kubeflow.org"}


@pytest.mark.slow
def test_a_lost_node_restarts_the_trainjob_which_resumes_from_the_newest_checkpoint(store_cluster, tmp_path):
    fake, api_client, _ = store_cluster
    fake.base_env["FAKE_TRAINER_KILL_NODE"] = "1"
    fields = {"save_steps": 1, "store_uri": "s3://distill", "run_id": "run-lost"}
    summary, lines = train(api_client, tmp_path, "run-lost", fields)
    assert summary["resumed_from"] == 1 and summary["world_size"] == 2
    assert fake.restarts == {"distill-train-run-lost": 1}
    assert any("restarted 1 time(s), resuming from the newest checkpoint" in line for line in lines)
    assert "[distill-train-run-lost-node-0-0-a0] saved checkpoint step 1 (resumed from 0)" in lines
    assert "[distill-train-run-lost-node-0-0-a1] saved checkpoint step 2 (resumed from 1)" in lines
    assert fake.deleted == ["distill-train-run-lost"]


@pytest.mark.slow
def test_a_failed_trainjob_fails_the_task_and_the_kfp_retry_resumes(store_cluster, tmp_path):
    fake, api_client, _ = store_cluster
    fake.runtimes["no-restarts"] = our_runtime(max_restarts=0)
    fake.base_env["FAKE_TRAINER_KILL_NODE"] = "1"
    fields = {"save_steps": 1, "store_uri": "s3://distill", "run_id": "run-retry"}
    with pytest.raises(
        RuntimeError,
        # Once node 1 is killed, node 0 fails too and either may be named first; the killed node's last
        # lines must be there.
        match=r"(?s)failed: jobset failed: pod \S+ failed.*last lines of \S+-node-0-1-a0:.*SIGKILL",
    ):
        train(api_client, tmp_path, "run-retry", fields, runtime="no-restarts")
    summary, _ = train(api_client, tmp_path, "run-retry", fields, runtime="no-restarts")  # KFP's retry
    assert summary["resumed_from"] == 1
    assert fake.deleted == ["distill-train-run-retry", "distill-train-run-retry"]


@pytest.mark.slow
def test_the_node_pods_get_the_kd_teacher_from_the_store_not_the_train_pods_folder(
    store_cluster, tmp_path, tiny_model_dir
):
    """With kd kind logits and train_nodes > 1, the pods fetch the teacher from the store's cache: the
    folder the train pod fetched it into exists in that pod only."""
    fake, api_client, s3 = store_cluster
    open_store("s3://distill/teachers/big").upload_dir(tiny_model_dir, "")
    kfp_copy = tmp_path / "kd-teacher"  # what the component downloads in the train pod
    fetch_model("s3://distill/teachers/big", str(kfp_copy), "s3://distill")
    for item in s3.list_objects_v2(Bucket="distill", Prefix="teachers/big/")["Contents"]:
        s3.delete_object(Bucket="distill", Key=item["Key"])  # the pods can only use the store's cache now
    fields = {"kd": {"kind": "logits", "teacher_dir": str(kfp_copy)}}
    summary, _ = train(
        api_client, tmp_path, "run-kd", fields, downloads={"kd.teacher_dir": "s3://distill/teachers/big"}
    )
    assert summary["teacher"] == json.loads((tiny_model_dir / "config.json").read_text())["model_type"]
    payload = json.loads(
        next(
            e["value"] for e in fake.created[0]["spec"]["trainer"]["env"] if e["name"] == "DISTILL_TRAIN_JOB"
        )
    )
    assert payload["downloads"] == {
        "kd.teacher_dir": {"source": "s3://distill/teachers/big", "store_uri": "s3://distill"}
    }


def test_the_job_pods_get_the_trackers_keys_as_the_single_node_train_pod_does(
    store_cluster, tmp_path, vendor_dir
):
    """The Secret distill-trackers (report_to's Swanlab / W&B keys) reaches node 0, which reports, through
    the compiled pipeline's job_env; a key the Secret lacks (here W&B's) does not stop the pods."""
    fake, api_client, _ = store_cluster
    fake.secrets["distill-trackers"] = {"swanlab-api-key": "swanlab-test"}
    summary, _ = train(api_client, tmp_path, "run-trackers")
    assert "SWANLAB_API_KEY" in summary["credentials"] and "WANDB_API_KEY" not in summary["credentials"]
    job = fake.created[0]
    assert errors(crd_validator(vendor_dir, "trainjobs"), job) == []
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in job["spec"]["trainer"]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secrets["SWANLAB_API_KEY"] == {
        "name": "distill-trackers",
        "key": "swanlab-api-key",
        "optional": True,
    }
    assert secrets["WANDB_API_KEY"]["optional"] is True and "optional" not in secrets["AWS_ACCESS_KEY_ID"]


def test_a_kd_teacher_folder_without_its_source_is_refused_before_any_job(store_cluster, tmp_path):
    from components.common.config import from_dict
    from components.train.config import Config
    from components.train.multinode import run_as_job

    _, api_client, _ = store_cluster
    config = from_dict(
        Config,
        {
            "student_dir": "m",
            "data_dir": "d",
            "output_dir": "o",
            "tensorboard_dir": "t",
            "store_uri": "s3://distill",
            "kd": {"kind": "logits", "teacher_dir": "/tmp/kd-teacher-x"},
        },
    )
    for source in ("", "/models/teacher"):  # none, or a folder: the pods cannot reach either
        with pytest.raises(
            ConfigError, match="kd.teacher_dir: a folder of the train pod does not exist in the job's pods"
        ):
            run_as_job(config, "s3://distill/s", "s3://distill/d", 2, 1, job_env={}, kd_teacher_source=source)


def test_a_pytorchjob_gets_the_same_queue_priority_and_pull_secrets():
    from components.train.multinode import PyTorchJobSpec, build_pytorchjob

    job = build_pytorchjob(
        PyTorchJobSpec(
            name="j",
            namespace="team",
            image="i",
            command=["python"],
            queue_name="team-queue",
            priority_class="low",
            image_pull_secrets=["regcred"],
        )
    )
    assert job["metadata"]["labels"] == {
        "kueue.x-k8s.io/queue-name": "team-queue",
        "kueue.x-k8s.io/priority-class": "low",
    }
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_image_pull_secrets_named_at_compile_time_reach_every_task(tmp_path, monkeypatch):
    from kfp import compiler

    from pipelines.distill_pipeline import build_pipeline, image_pull_secrets

    monkeypatch.setenv("IMAGE_PULL_SECRETS", "regcred, mirror-cred,")
    assert image_pull_secrets() == ["regcred", "mirror-cred"]
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(), package_path=str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])  # every task has a pod config
    for name, settings in executors.items():
        names = [secret["secretName"] for secret in settings.get("imagePullSecret", [])]
        assert names == ["regcred", "mirror-cred"], name


def test_progress_and_final_state_read_from_the_trainjob_status():
    from components.train.multinode.trainjob import progress_line, trainjob_state

    running = {
        "status": {
            "jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0}],
            "trainerStatus": {
                "progressPercentage": 40,
                "estimatedRemainingSeconds": 1800,
                "lastUpdatedTime": "t",
            },
        }
    }
    assert progress_line(running, restarts=1) == (
        "node: active 2, ready 2; 40% done; about 30 min left; restarted 1 time(s), resuming from the newest checkpoint"
    )
    assert progress_line({}, restarts=0) == "waiting for its pods"
    assert trainjob_state(running) == (None, "")
    done = {"status": {"conditions": [{"type": "Complete", "status": "True", "message": "jobset completed"}]}}
    assert trainjob_state(done) == ("Succeeded", "jobset completed")
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "jobset failed"}]}}
    assert trainjob_state(failed) == ("Failed", "jobset failed")


def test_the_train_task_calls_the_api_with_its_own_accounts_token_when_mounted(tmp_path, monkeypatch):
    from components.train.multinode.kube import default_api_client

    (tmp_path / "token").write_text("train-launcher-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    configuration = default_api_client(token_dir=tmp_path).configuration
    assert configuration.host == "https://10.0.0.1:443"
    assert configuration.api_key["authorization"] == "bearer train-launcher-token"
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")


def test_a_checkpoint_resumes_whatever_queue_or_engine_the_retry_runs_on(tmp_path):
    """The fingerprint a resume checks covers what decides the weights, not where the job was queued."""
    from components.common.config import from_dict
    from components.train.checkpoint import fingerprint_differences, run_fingerprint
    from components.train.config import Config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    folders = {name: str(tmp_path / name) for name in ("model", "data", "out", "tb")}
    (tmp_path / "model").mkdir()
    base = {
        "student_dir": folders["model"],
        "data_dir": folders["data"],
        "output_dir": folders["out"],
        "tensorboard_dir": folders["tb"],
    }
    first = from_dict(Config, {**base, "cluster": {"engine": "trainjob", "queue_name": "a"}})
    retry = from_dict(
        Config, {**base, "cluster": {"engine": "pytorchjob", "queue_name": "b", "priority_class": "low"}}
    )
    assert fingerprint_differences(run_fingerprint(first), run_fingerprint(retry)) == []
    other = from_dict(Config, {**base, "learning_rate": 1e-4})
    assert fingerprint_differences(run_fingerprint(first), run_fingerprint(other)) != []
