"""Which training-job engine runs multi-node training: Kubeflow Trainer v2 (TrainJob) or the Kubeflow
Training Operator v1 (PyTorchJob, Kubeflow 1.10), as asked or as the API server serves them."""

from __future__ import annotations

from typing import Literal

from components.common.errors import ConfigError
from components.train.multinode import job, trainjob

Engine = Literal["trainjob", "pytorchjob"]
# Engine -> (API group, version, resource) whose CRD must be served; auto tries them in this order.
RESOURCES: dict[str, tuple[str, str, str]] = {
    "trainjob": (trainjob.GROUP, trainjob.VERSION, trainjob.PLURAL),
    "pytorchjob": (job.GROUP, job.VERSION, job.PLURAL),
}
INSTALL = (
    "install Kubeflow Trainer v2 (https://www.kubeflow.org/docs/components/trainer/operator-guides/installation/) "
    "and `kubectl apply -k manifests/trainer`, or on Kubeflow 1.10 the Training Operator; see docs/cluster.md"
)


def served(api_client, engine: str) -> bool:
    """Whether the API server serves the engine's resource (API discovery, open to every account)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    group, version, plural = RESOURCES[engine]
    try:
        resources = client.CustomObjectsApi(api_client).get_api_resources(group, version)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return any(resource.name == plural for resource in resources.resources)


def choose_engine(requested: str, api_client) -> Engine:
    """`requested` (auto, trainjob or pytorchjob) checked against what the cluster serves."""
    if requested == "auto":
        for engine in RESOURCES:
            if served(api_client, engine):
                return engine  # type: ignore[return-value]
        raise ConfigError(f"train_engine: this cluster serves neither TrainJob nor PyTorchJob; {INSTALL}")
    if requested not in RESOURCES:
        raise ConfigError(f"train_engine: {requested!r} is not auto, trainjob or pytorchjob")
    if not served(api_client, requested):
        group, version, plural = RESOURCES[requested]
        raise ConfigError(
            f"train_engine: {requested} asked, but {group}/{version} {plural} is not served; {INSTALL}"
        )
    return requested  # type: ignore[return-value]
