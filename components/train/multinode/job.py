"""The Kubeflow Training Operator's PyTorchJob through the Kubernetes API: build it, create it, follow
its pods' logs, wait for it to end and delete it (also when this pod is terminated).

    spec = PyTorchJobSpec(name="distill-train-abc", namespace="team", image=..., command=[...], nodes=2)
    run_pytorchjob(spec)          # in-cluster credentials; RBAC in manifests/base/rbac.yaml
"""

from __future__ import annotations

import copy
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

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER = "pytorch"  # the operator finds its container by this name
# The pods hold the store's keys and read files that others can write, so they run restricted (the
# Kubernetes "restricted" Pod Security Standard) on a read-only root filesystem. runAsNonRoot is set on
# the container, not the pod: the operator adds to Worker pods an init container that waits for the
# Master's DNS name in a root busybox image, which a pod-wide runAsNonRoot would keep from starting.
CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY = {"seccompProfile": {"type": "RuntimeDefault"}}
# The writable places left: /tmp (the inputs, torch.compile's and Triton's caches) and the images'
# home folder (docker/*.Dockerfile: HOME and HF_HOME, DeepSpeed's and CUDA's caches).
SCRATCH_VOLUMES = {"tmp": "/tmp", "home": "/home/distill"}


@dataclass
class PyTorchJobSpec:
    """One PyTorchJob: `nodes` pods (1 Master + nodes-1 Workers) with `gpus_per_node` GPUs each."""

    name: str
    namespace: str
    image: str
    command: list[str]
    nodes: int = 2
    gpus_per_node: int = 1
    env: dict[str, str] = field(default_factory=dict)
    # Kubernetes Secret name -> {key in the Secret: environment variable}, as in the pipeline.
    env_from_secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    env_from_config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"  # /dev/shm for NCCL and dataloader workers (the default 64Mi stalls NCCL)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_account: str | None = None
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


def pod_template(spec: PyTorchJobSpec) -> dict[str, Any]:
    env = env_by_reference(spec.env, spec.env_from_secrets, spec.env_from_config_maps)
    resources = {"cpu": spec.cpu, "memory": spec.memory}
    limits = {
        "memory": spec.memory,
        **({"nvidia.com/gpu": str(spec.gpus_per_node)} if spec.gpus_per_node else {}),
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": CONTAINER,
                "image": spec.image,
                "command": spec.command,
                "env": env,
                "resources": {"requests": resources, "limits": limits},
                "securityContext": copy.deepcopy(CONTAINER_SECURITY),
                "volumeMounts": [
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    *({"name": name, "mountPath": path} for name, path in SCRATCH_VOLUMES.items()),
                ],
            }
        ],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
            *({"name": name, "emptyDir": {}} for name in SCRATCH_VOLUMES),
        ],
        "securityContext": copy.deepcopy(POD_SECURITY),
        # The pods never call the Kubernetes API (only the KFP train pod does): no token to steal.
        "automountServiceAccountToken": False,
    }
    if spec.node_selector:
        pod["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod["tolerations"] = spec.tolerations
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return {"metadata": {"labels": spec.labels}, "spec": pod}


def build_pytorchjob(spec: PyTorchJobSpec) -> dict[str, Any]:
    """The PyTorchJob object. No retries inside the job (backoffLimit 0): the KFP task's retry resumes
    from the newest checkpoint instead, with a fresh job."""
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": pod_template(spec)}}
    if spec.nodes > 1:
        replicas["Worker"] = {
            "replicas": spec.nodes - 1,
            "restartPolicy": "Never",
            "template": pod_template(spec),
        }
    run_policy: dict[str, Any] = {"cleanPodPolicy": "None", "backoffLimit": 0}
    if spec.active_deadline_s:
        run_policy["activeDeadlineSeconds"] = spec.active_deadline_s
    labels = scheduling_labels(spec.labels, spec.queue_name, spec.priority_class)
    metadata: dict[str, Any] = {"name": spec.name, "namespace": spec.namespace, "labels": labels}
    if spec.owner_pod:
        metadata["ownerReferences"] = owner_references(spec.owner_pod)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(max(spec.gpus_per_node, 1)),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


def job_state(job: dict[str, Any]) -> tuple[str | None, str]:
    """(Succeeded | Failed | None while running, message of the deciding condition)."""
    for condition in job.get("status", {}).get("conditions", []):
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("message", "")
    return None, ""


def run_pytorchjob(
    spec: PyTorchJobSpec,
    api_client=None,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    keep: bool = False,
    echo: Callable[[str], None] = print,
) -> str:
    """Create the job, stream its pods' logs, wait for it to end, delete it; return 'Succeeded'.

    A job left by an earlier attempt of the same KFP task (same name) is deleted first. Raises
    RuntimeError when the job fails and TimeoutError after `timeout_s`; the job is deleted either way
    unless `keep`."""
    from kubernetes import client

    api_client = api_client or default_api_client()
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    address = (GROUP, VERSION, spec.namespace, PLURAL)
    previous_handler = exit_on_sigterm(
        "PyTorchJob"
    )  # before the job exists: no window where SIGTERM orphans it
    delete_leftover(custom, address, spec.name, poll_s, "PyTorchJob")
    streamer = LogStreamer(core, spec.namespace, echo, CONTAINER)
    started = time.monotonic()
    try:
        custom.create_namespaced_custom_object(*address, build_pytorchjob(spec))
        echo(f"PyTorchJob {spec.namespace}/{spec.name}: {spec.nodes} node(s) x {spec.gpus_per_node} GPU(s)")
        while True:
            job = custom.get_namespaced_custom_object(*address, spec.name)
            pods = core.list_namespaced_pod(
                spec.namespace, label_selector=f"training.kubeflow.org/job-name={spec.name}"
            )
            for pod in pods.items:
                if pod.status.phase in ("Running", "Succeeded", "Failed"):
                    streamer.follow(pod.metadata.name)
            state, message = job_state(job)
            if state is not None:
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"PyTorchJob {spec.name} still running after {timeout_s:.0f}s")
            time.sleep(poll_s)
        streamer.join(timeout_s=30)
    finally:
        if not keep:
            delete_object(custom, address, spec.name)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    echo(f"PyTorchJob {spec.name}: {state} {message}".rstrip())
    if state != "Succeeded":
        raise RuntimeError(
            f"PyTorchJob {spec.namespace}/{spec.name} failed: {message or 'see the pod logs above'}"
        )
    return state
