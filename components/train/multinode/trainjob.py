"""Kubeflow Trainer v2's TrainJob through the Kubernetes API: build it, create it, stream node 0's log,
report its progress, wait for it to end and delete it (also when this pod is terminated).

    spec = TrainJobSpec(name="distill-train-abc", namespace="team", image=..., command=[...], nodes=2)
    run_trainjob(spec)            # in-cluster credentials; RBAC in manifests/base/rbac.yaml

The TrainJob names a training runtime (manifests/trainer/: the ClusterTrainingRuntime `distill-torch`,
or one the platform provides) that holds the pod template: volumes, security context, restart policy.
The TrainJob adds what belongs to this run: node count, resources per node, the command and its env,
and (as a runtime patch) where the pods may run. Trainer runs it as a JobSet whose node pods get the torch
rendezvous in PET_* variables (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.common.errors import ConfigError
from components.train.multinode.kube import (
    LogStreamer,
    default_api_client,
    delete_leftover,
    delete_object,
    env_by_reference,
    exit_on_sigterm,
    owner_references,
    scheduling_labels,
)

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
DEFAULT_RUNTIME = "distill-torch"
NODE = "node"  # the runtime's replicated job and container that Trainer fills from spec.trainer
PATCH_MANAGER = "kfp-distill.io/train"
# The JobSet's pod labels: which TrainJob, which replicated job, which node (Indexed Job completion index).
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
NODE_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"
FAILED_POD_LINES = 20


@dataclass
class TrainJobSpec:
    """One TrainJob: `nodes` node pods with `gpus_per_node` GPUs (and as many torchrun processes) each."""

    name: str
    namespace: str
    image: str
    command: list[str]
    nodes: int = 2
    gpus_per_node: int = 1
    runtime: str = DEFAULT_RUNTIME
    env: dict[str, str] = field(default_factory=dict)
    # Kubernetes Secret name -> {key in the Secret: environment variable}, as in the pipeline.
    env_from_secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    env_from_config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    cpu: str = "8"
    memory: str = "64Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    # Kueue: the LocalQueue that admits the job and its WorkloadPriorityClass ("" for none).
    queue_name: str = ""
    priority_class: str = ""
    # Secrets for pulling the image from a private registry (those of the KFP train pod).
    image_pull_secrets: list[str] = field(default_factory=list)
    active_deadline_s: int | None = None
    # The KFP train pod: owning the job lets Kubernetes garbage-collect it if that pod is deleted.
    owner_pod: dict[str, str] | None = None  # {"name": ..., "uid": ...}

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"nodes: must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"gpus_per_node: must be 0 (CPU) or more, got {self.gpus_per_node}")
        if not self.runtime:
            raise ConfigError(f"runtime: name a ClusterTrainingRuntime, e.g. {DEFAULT_RUNTIME}")


def pod_patch(spec: TrainJobSpec) -> dict[str, Any]:
    """What this run adds to the runtime's node pods: placement, pull secrets and labels."""
    pod: dict[str, Any] = {}
    if spec.node_selector:
        pod["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod["tolerations"] = spec.tolerations
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return {"metadata": {"labels": spec.labels}, "spec": pod}


def build_trainjob(spec: TrainJobSpec) -> dict[str, Any]:
    """The TrainJob object. It restarts as the runtime's failurePolicy allows (each restart resumes from
    the store's newest checkpoint); past that the KFP task's retry starts a fresh one, which resumes too."""
    gpus = {"nvidia.com/gpu": str(spec.gpus_per_node)} if spec.gpus_per_node else {}
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": spec.command,
        "env": env_by_reference(spec.env, spec.env_from_secrets, spec.env_from_config_maps),
        "numNodes": spec.nodes,
        "numProcPerNode": max(spec.gpus_per_node, 1),
        "resourcesPerNode": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory, **gpus},
            "limits": {"memory": spec.memory, **gpus},
        },
    }
    job_patch = {"name": NODE, "template": {"spec": {"template": pod_patch(spec)}}}
    metadata: dict[str, Any] = {
        "name": spec.name,
        "namespace": spec.namespace,
        "labels": scheduling_labels(spec.labels, spec.queue_name, spec.priority_class),
    }
    if spec.owner_pod:
        metadata["ownerReferences"] = owner_references(spec.owner_pod)
    job_spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": spec.runtime},
        "trainer": trainer,
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job_patch]}}},
            }
        ],
    }
    if spec.active_deadline_s:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_s
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob", "metadata": metadata, "spec": job_spec}


def trainjob_state(job: dict[str, Any]) -> tuple[str | None, str]:
    """(Succeeded | Failed | None while running, message of the deciding condition)."""
    for condition in job.get("status", {}).get("conditions", []):
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "Succeeded", condition.get("message", "")
        if condition.get("type") == "Failed":
            return "Failed", condition.get("message", "")
    return None, ""


def progress_line(job: dict[str, Any], restarts: int) -> str:
    """One line on where the TrainJob stands: its child jobs, Trainer's progress estimate, restarts."""
    status = job.get("status", {})
    parts = []
    for child in status.get("jobsStatus", []):
        counts = ", ".join(
            f"{key} {child[key]}" for key in ("active", "ready", "succeeded", "failed") if child.get(key)
        )
        parts.append(f"{child.get('name', NODE)}: {counts or 'pending'}")
    trainer = status.get("trainerStatus", {})
    if "progressPercentage" in trainer:
        parts.append(f"{trainer['progressPercentage']}% done")
    if trainer.get("estimatedRemainingSeconds") is not None:
        parts.append(f"about {trainer['estimatedRemainingSeconds'] // 60} min left")
    if restarts:
        parts.append(f"restarted {restarts} time(s), resuming from the newest checkpoint")
    return "; ".join(parts) or "waiting for its pods"


def node_pods(core, spec: TrainJobSpec) -> list:
    selector = f"{JOBSET_LABEL}={spec.name},{REPLICATED_JOB_LABEL}={NODE}"
    return core.list_namespaced_pod(spec.namespace, label_selector=selector).items


def last_lines(core, namespace: str, pod_name: str, lines: int = FAILED_POD_LINES) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod_log(pod_name, namespace, container=NODE, tail_lines=lines)
    except ApiException as error:
        return f"(its log cannot be read: {error.reason})"


def create_trainjob(custom, address: tuple, spec: TrainJobSpec) -> None:
    """Create the TrainJob; the API server's refusal (e.g. an unknown runtime) becomes a one-line error."""
    from kubernetes.client.exceptions import ApiException

    try:
        custom.create_namespaced_custom_object(*address, build_trainjob(spec))
    except ApiException as error:
        if error.status not in (400, 403, 404, 422):
            raise
        raise ConfigError(
            f"runtime: the API server refused TrainJob {spec.namespace}/{spec.name} with runtime "
            f"{spec.runtime!r} ({error.status} {error.reason}: {_message(error)}); install it with "
            "`kubectl apply -k manifests/trainer` or name one from `kubectl get clustertrainingruntimes`"
        ) from None


def _message(error) -> str:
    import json

    try:
        return json.loads(error.body).get("message", "")
    except (TypeError, ValueError):
        return str(error.body or "")


def run_trainjob(
    spec: TrainJobSpec,
    api_client=None,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    keep: bool = False,
    echo: Callable[[str], None] = print,
) -> str:
    """Create the TrainJob, stream node 0's log, report progress, wait for it to end, delete it;
    return 'Succeeded'.

    A TrainJob left by an earlier attempt of the same KFP task (same name) is deleted first. Raises
    RuntimeError with the failing pod's last lines when the job fails, and TimeoutError after
    `timeout_s`; the job is deleted either way unless `keep`."""
    from kubernetes import client

    api_client = api_client or default_api_client()
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    address = (GROUP, VERSION, spec.namespace, PLURAL)
    previous_handler = exit_on_sigterm("TrainJob")  # before the job exists: no window that orphans it
    delete_leftover(custom, address, spec.name, poll_s, "TrainJob")
    streamer = LogStreamer(core, spec.namespace, echo, NODE)
    started, reported, failure = time.monotonic(), "", ""
    try:
        create_trainjob(custom, address, spec)
        echo(
            f"TrainJob {spec.namespace}/{spec.name} (runtime {spec.runtime}): "
            f"{spec.nodes} node(s) x {spec.gpus_per_node} GPU(s)"
        )
        while True:
            job = custom.get_namespaced_custom_object(*address, spec.name)
            pods = node_pods(core, spec)
            restarts = max((int(p.metadata.labels.get(RESTART_LABEL, 0)) for p in pods), default=0)
            for pod in pods:  # node 0 of every restart attempt: its pods have new names
                if pod.metadata.labels.get(NODE_INDEX_LABEL) == "0" and pod.status.phase != "Pending":
                    streamer.follow(pod.metadata.name)
            line = progress_line(job, restarts)
            if line != reported:
                echo(f"TrainJob {spec.name}: {line}")
                reported = line
            state, message = trainjob_state(job)
            if state is not None:
                if state == "Failed":
                    failed = [p.metadata.name for p in pods if p.status.phase == "Failed"]
                    failure = "".join(
                        f"\nlast lines of {name}:\n{last_lines(core, spec.namespace, name)}"
                        for name in failed
                    )
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"TrainJob {spec.name} still running after {timeout_s:.0f}s")
            time.sleep(poll_s)
        streamer.join(timeout_s=30)
    finally:
        if not keep:
            delete_object(custom, address, spec.name)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    echo(f"TrainJob {spec.name}: {state} {message}".rstrip())
    if state != "Succeeded":
        raise RuntimeError(
            f"TrainJob {spec.namespace}/{spec.name} failed: {message or 'see the logs above'}{failure}"
        )
    return state
