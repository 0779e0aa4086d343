"""Configuration of the register stage: the hand-off of a gated model to Model Registry and KServe."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlparse

from components.common.config import exposed, pipeline_only
from components.common.errors import ConfigError
from components.common.inference_service import ServingConfig

# Hosts the pod reaches without leaving the cluster: Services by their full name, and loopback.
CLUSTER_SUFFIX = ".svc.cluster.local"


def in_cluster(host: str) -> bool:
    """Loopback, or a Service's full cluster-local name (<service>.<namespace>.svc.cluster.local)."""
    host = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(CLUSTER_SUFFIX)


@dataclass
class Config:
    """What to hand over, and to whom.

    Inputs
      model_uri: the merged model's URI in the store (s3://…), which the registry records and KServe
          downloads; the model itself is not read here.
      eval_dir: the eval stage's results folder: eval.json holds the metrics and the gates' verdicts.
      run_id, run_name: the pipeline run's id (a registry property) and name (the model version).
    Output
      output_dir: receives inferenceservice.yaml (always) and registration.json (when registered).
    Model Registry (registry_url set)
      registry_url: https://host[:port] of the Kubeflow Model Registry REST API (plain http only to
          loopback or <service>.<namespace>.svc.cluster.local); empty: not registered.
      model_name: the registered model's name; each run adds a version to it.
      model_format, model_format_version: the artifact's format, as KServe's serving runtimes name it.
      storage_key: the name of the S3 data connection (Secret) the registry's deploy flow uses.
      author: recorded as the version's author.
      The token is MODEL_REGISTRY_TOKEN's value when set, else the pod's service-account token, which goes
      only to a registry in the cluster and never through a proxy (registry.py).
    KServe
      serving: the InferenceService written to output_dir (ServingConfig).
      deploy: also create it (or replace it) through the Kubernetes API, in-cluster or from kubeconfig.
    """

    model_uri: str = field(metadata=pipeline_only("the merge stage's model artifact"))
    eval_dir: str = field(metadata=pipeline_only("the eval stage's results artifact"))
    output_dir: str
    run_id: str = ""
    run_name: str = ""
    registry_url: str | None = field(
        default=None,
        metadata=exposed(
            "register_registry_url",
            "Kubeflow Model Registry URL (http(s)://host:port) the gated model is registered in; empty: not registered.",
            none_as="",
        ),
    )
    model_name: str = field(
        default="distilled-student",
        metadata=exposed("register_model_name", "registered model name; each run adds a version."),
    )
    model_format: str = "huggingface"
    model_format_version: str = "1"
    storage_key: str | None = None
    author: str = "kfp-distill"
    serving: ServingConfig = field(default_factory=ServingConfig)
    deploy: bool = field(
        default=False,
        metadata=exposed("register_deploy", "create the KServe InferenceService of the gated model."),
    )

    def __post_init__(self) -> None:
        for name in ("model_uri", "eval_dir", "output_dir", "model_name"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: empty; give a value")
        if self.registry_url is not None:
            parsed = urlparse(self.registry_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError(
                    f"registry_url: {self.registry_url!r} must look like https://model-registry.example:8443"
                )
            if parsed.username or parsed.password:
                raise ConfigError("registry_url: holds credentials; give the token in MODEL_REGISTRY_TOKEN")
            if parsed.scheme == "http" and not in_cluster(parsed.hostname):
                raise ConfigError(
                    f"registry_url: {self.registry_url} is plain http to {parsed.hostname}, outside the "
                    "cluster, so the registry token would cross the network in clear; use https, or a "
                    "cluster-local http address (<service>.<namespace>.svc.cluster.local)"
                )
