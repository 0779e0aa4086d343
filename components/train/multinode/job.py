"""The Kubeflow Training Operator's PyTorchJob through the Kubernetes API: build it, create it, follow
its pods' logs, wait for it to end and delete it (also when this pod is terminated).

    spec = PyTorchJobSpec(name="distill-train-abc", namespace="team", image=..., command=[...], nodes=2)
    run_pytorchjob(spec)          # in-cluster credentials; RBAC in manifests/base/rbac.yaml
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from components.train.multinode.kube import JobSpec, env_by_reference, job_metadata, pod_placement
from components.train.multinode.lifecycle import JobKind, run_job

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER = "pytorch"  # the operator finds its container by this name
JOB_NAME_LABEL = "training.kubeflow.org/job-name"  # on each pod of the job
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
class PyTorchJobSpec(JobSpec):
    """One PyTorchJob: `nodes` pods (1 Master + nodes-1 Workers) with `gpus_per_node` GPUs each."""

    shm_size: str = "16Gi"  # /dev/shm for NCCL and dataloader workers (the default 64Mi stalls NCCL)
    service_account: str | None = None


def pod_template(spec: PyTorchJobSpec) -> dict[str, Any]:
    env = env_by_reference(spec.env, spec.env_from_secrets, spec.env_from_config_maps, spec.optional_secrets)
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
    pod.update(pod_placement(spec))
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
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
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": job_metadata(spec),
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


def create_pytorchjob(custom, address: tuple, spec: PyTorchJobSpec) -> None:
    custom.create_namespaced_custom_object(*address, build_pytorchjob(spec))


PYTORCHJOB = JobKind(
    name="PyTorchJob",
    resource=(GROUP, VERSION, PLURAL),
    container=CONTAINER,
    create=create_pytorchjob,
    state=job_state,
    pod_selector=lambda name: f"{JOB_NAME_LABEL}={name}",
    streams=lambda pod: pod.status.phase in ("Running", "Succeeded", "Failed"),  # every pod's log
)


def run_pytorchjob(spec: PyTorchJobSpec, **settings) -> str:
    """Run the PyTorchJob to its end and delete it; `settings` are run_job's (api_client, poll_s,
    timeout_s, keep, echo). Returns 'Succeeded'."""
    return run_job(PYTORCHJOB, spec, **settings)
