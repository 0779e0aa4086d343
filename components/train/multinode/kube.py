"""The Kubernetes plumbing both job engines share (job.py: PyTorchJob, trainjob.py: TrainJob): the API
client, the job's spec, name, metadata and owner, environment by reference, log streaming, deletion on
SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.errors import ConfigError

log = logging.getLogger(__name__)

# The token of the train task's own service account (manifests/base/rbac.yaml), mounted from its
# Secret in the train task only: the other tasks run as the pipeline's service account, which may not
# create training jobs.
TRAIN_TOKEN_DIR = Path("/var/run/secrets/kfp-distill/train-launcher")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


@dataclass
class JobSpec:
    """What a training job of either engine is made of: `nodes` pods with `gpus_per_node` GPUs each, the
    command they run and its environment, where they may run and how they are queued."""

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
    # Those of env_from_secrets that may be absent, or lack a key (the trackers' keys: most runs use none).
    optional_secrets: list[str] = field(default_factory=list)
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


def default_api_client(token_dir: Path = TRAIN_TOKEN_DIR):
    """In a pod: the train task's own token when it is mounted, else the pod's service account;
    outside a cluster: the kubeconfig."""
    from kubernetes import client, config

    if (token_dir / "token").is_file():
        from kubernetes.config.incluster_config import InClusterConfigLoader

        configuration = client.Configuration()
        InClusterConfigLoader(str(token_dir / "token"), str(token_dir / "ca.crt")).load_and_set(configuration)
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def current_namespace() -> str:
    """The namespace this pod runs in (KFP runs the train task in the profile's namespace)."""
    path = SERVICE_ACCOUNT_DIR / "namespace"
    if not path.exists():
        raise ConfigError(
            "namespace: not running in a Kubernetes pod; pass the namespace of the training job"
        )
    return path.read_text().strip()


def job_name_for(run_id: str) -> str:
    """A DNS-1035 name, unique per KFP run, so a retried task finds (and replaces) its own job."""
    cleaned = "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")
    return f"distill-train-{cleaned}"[:52].rstrip("-")  # the operators append -worker-<index>, -node-0-0


def this_pod(core, namespace: str, pod_name: str | None):
    """The pod this code runs in (its name is the HOSTNAME), or None outside a pod."""
    from kubernetes.client.exceptions import ApiException

    if not pod_name:
        return None
    try:
        return core.read_namespaced_pod(pod_name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def env_by_reference(
    env: dict[str, str],
    secrets: dict[str, dict[str, str]],
    config_maps: dict[str, dict[str, str]],
    optional_secrets: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Container env: plain values, then Secret and ConfigMap keys by reference (the values never pass
    through this pod or the job object). ConfigMap keys, and the keys of `optional_secrets`, are optional:
    absent ones fall back to defaults."""
    listed = [{"name": name, "value": value} for name, value in env.items()]
    for kind, sources in (("secretKeyRef", secrets), ("configMapKeyRef", config_maps)):
        for source, keys in sources.items():
            for key, variable in keys.items():
                reference = {
                    "name": source,
                    "key": key,
                    **({"optional": True} if kind == "configMapKeyRef" or source in optional_secrets else {}),
                }
                listed.append({"name": variable, "valueFrom": {kind: reference}})
    return listed


def scheduling_labels(labels: dict[str, str], queue_name: str, priority_class: str) -> dict[str, str]:
    """The job's labels with Kueue's: the LocalQueue that admits it and its WorkloadPriorityClass."""
    return {
        **labels,
        **({QUEUE_LABEL: queue_name} if queue_name else {}),
        **({PRIORITY_LABEL: priority_class} if priority_class else {}),
    }


def job_metadata(spec: JobSpec) -> dict[str, Any]:
    """The job object's metadata: its name, Kueue's labels and the KFP train pod as its owner (Kubernetes
    garbage-collects the job if that pod is deleted)."""
    metadata: dict[str, Any] = {
        "name": spec.name,
        "namespace": spec.namespace,
        "labels": scheduling_labels(spec.labels, spec.queue_name, spec.priority_class),
    }
    if spec.owner_pod:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", **spec.owner_pod}]
    return metadata


def pod_placement(spec: JobSpec) -> dict[str, Any]:
    """Where the job's pods may run and how they pull the image: the pod spec fields this run sets."""
    pod: dict[str, Any] = {}
    if spec.node_selector:
        pod["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod["tolerations"] = spec.tolerations
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return pod


class LogStreamer:
    """Follows each pod's log in a thread, printing lines prefixed with the pod name."""

    def __init__(self, core, namespace: str, echo: Callable[[str], None], container: str):
        self.core, self.namespace, self.echo, self.container = core, namespace, echo, container
        self.threads: dict[str, threading.Thread] = {}

    def follow(self, pod_name: str) -> None:
        if pod_name not in self.threads:
            thread = threading.Thread(target=self._stream, args=(pod_name,), daemon=True)
            self.threads[pod_name] = thread
            thread.start()

    def _stream(self, pod_name: str) -> None:
        try:
            response = self.core.read_namespaced_pod_log(
                pod_name, self.namespace, container=self.container, follow=True, _preload_content=False
            )
            buffered = b""
            for chunk in response.stream(4096):
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    self.echo(f"[{pod_name}] {line.decode(errors='replace')}")
            if buffered:
                self.echo(f"[{pod_name}] {buffered.decode(errors='replace')}")
        except Exception as error:  # a log stream that breaks must not fail the training it reports on
            self.echo(f"[{pod_name}] log stream ended: {error}")

    def join(self, timeout_s: float) -> None:
        for thread in self.threads.values():
            thread.join(timeout=timeout_s)


def exit_on_sigterm(kind: str):
    """Turn SIGTERM (the KFP task's timeout, a terminated run, a node drain) into SystemExit, so the
    `finally` that deletes the job runs within the pod's grace period instead of leaving GPUs held.
    Returns the handler it replaced (None off the main thread, where signals cannot be handled)."""

    def stop(signum, frame):
        raise SystemExit(f"terminated by signal {signum}; deleting the {kind}")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def delete_object(custom, address: tuple, name: str) -> None:
    """Delete a custom object and (in the background) what it owns; gone already is fine."""
    from kubernetes.client import V1DeleteOptions
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(
            *address, name, body=V1DeleteOptions(propagation_policy="Background")
        )
    except ApiException as error:
        if error.status != 404:
            raise


def delete_leftover(custom, address: tuple, name: str, poll_s: float, kind: str) -> None:
    """Delete the job an earlier attempt of this task left under the same name, and wait until it is gone."""
    from kubernetes.client.exceptions import ApiException

    for attempt in range(60):
        try:
            custom.get_namespaced_custom_object(*address, name)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        if attempt == 0:
            log.info("deleting %s %s left by an earlier attempt", kind, name)
            delete_object(custom, address, name)
        time.sleep(poll_s)
    raise RuntimeError(f"{kind} {name} from an earlier attempt is still being deleted")
