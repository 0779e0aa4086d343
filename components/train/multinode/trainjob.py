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

from dataclasses import dataclass
from typing import Any

from components.common.errors import ConfigError
from components.train.multinode.kube import JobSpec, env_by_reference, job_metadata, pod_placement
from components.train.multinode.lifecycle import JobKind, run_job

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
DEFAULT_RUNTIME = "distill-torch"
NODE = "node"  # the runtime's replicated job and container that Trainer fills from spec.trainer
PATCH_MANAGER = "kfp-distill.io/train"
# The JobSet's pod labels: which TrainJob, which replicated job, which node (Indexed Job completion index).
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
NODE_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"


@dataclass
class TrainJobSpec(JobSpec):
    """One TrainJob: `nodes` node pods with `gpus_per_node` GPUs (and as many torchrun processes) each."""

    runtime: str = DEFAULT_RUNTIME

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.runtime:
            raise ConfigError(f"runtime: name a ClusterTrainingRuntime, e.g. {DEFAULT_RUNTIME}")


def pod_patch(spec: TrainJobSpec) -> dict[str, Any]:
    """What this run adds to the runtime's node pods: placement, pull secrets and labels."""
    return {"metadata": {"labels": spec.labels}, "spec": pod_placement(spec)}


def build_trainjob(spec: TrainJobSpec) -> dict[str, Any]:
    """The TrainJob object. It restarts as the runtime's failurePolicy allows (each restart resumes from
    the store's newest checkpoint); past that the KFP task's retry starts a fresh one, which resumes too."""
    gpus = {"nvidia.com/gpu": str(spec.gpus_per_node)} if spec.gpus_per_node else {}
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": spec.command,
        "env": env_by_reference(
            spec.env, spec.env_from_secrets, spec.env_from_config_maps, spec.optional_secrets
        ),
        "numNodes": spec.nodes,
        "numProcPerNode": max(spec.gpus_per_node, 1),
        "resourcesPerNode": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory, **gpus},
            "limits": {"memory": spec.memory, **gpus},
        },
    }
    job_patch = {"name": NODE, "template": {"spec": {"template": pod_patch(spec)}}}
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
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": job_metadata(spec),
        "spec": job_spec,
    }


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


def restarts(pods: list) -> int:
    """How often the JobSet restarted the job, as its newest pods say."""
    return max((int(pod.metadata.labels.get(RESTART_LABEL, 0)) for pod in pods), default=0)


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


TRAINJOB = JobKind(
    name="TrainJob",
    resource=(GROUP, VERSION, PLURAL),
    container=NODE,
    create=create_trainjob,
    state=trainjob_state,
    pod_selector=lambda name: f"{JOBSET_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE}",
    # node 0 of every restart attempt (its pods have new names) once it has started
    streams=lambda pod: pod.metadata.labels.get(NODE_INDEX_LABEL) == "0" and pod.status.phase != "Pending",
    runs_on=lambda spec: f" (runtime {spec.runtime})",
    progress=lambda job, pods: progress_line(job, restarts(pods)),
)


def run_trainjob(spec: TrainJobSpec, **settings) -> str:
    """Run the TrainJob to its end and delete it, reporting its progress; `settings` are run_job's
    (api_client, poll_s, timeout_s, keep, echo). Returns 'Succeeded'."""
    return run_job(TRAINJOB, spec, **settings)
