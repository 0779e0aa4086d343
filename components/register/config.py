"""Configuration of the register stage: the hand-off of a gated model to Model Registry and KServe."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

from components.common.config import exposed, pipeline_only
from components.common.errors import ConfigError

# Hosts the pod reaches without leaving the cluster: Services by their full name, and loopback.
CLUSTER_SUFFIX = ".svc.cluster.local"
# Kubernetes object names (DNS-1123 labels), which an InferenceService's name must be.
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def in_cluster(host: str) -> bool:
    """Loopback, or a Service's full cluster-local name (<service>.<namespace>.svc.cluster.local)."""
    host = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(CLUSTER_SUFFIX)


@dataclass
class ServingConfig:
    """The KServe InferenceService of the model: the Hugging Face serving runtime with its vLLM backend.

    name: the InferenceService's name (null: the model name, made a DNS label).
    namespace: where it is created (null: the pod's own namespace).
    gpus: nvidia.com/gpu of the predictor (0: CPU serving, for which the runtime falls back to its
        Hugging Face backend).
    cpu, memory: requests and limits of the predictor.
    max_model_len: vLLM's context length (null: the model's); lower it to fit the KV cache on small GPUs.
    runtime: a ServingRuntime name (null: KServe picks the one that supports the huggingface format).
    service_account: the predictor's service account, whose Secret holds the store's S3 credentials.
    args: extra arguments of the Hugging Face server, e.g. ["--dtype=bfloat16"].
    """

    name: str | None = None
    namespace: str | None = field(
        default=None,
        metadata=exposed(
            "register_namespace", "namespace of the InferenceService (empty: the pipeline's).", none_as=""
        ),
    )
    gpus: int = field(default=1, metadata=exposed("register_gpus", "GPUs of the InferenceService predictor."))
    cpu: str = "4"
    memory: str = "32Gi"
    max_model_len: int | None = None
    runtime: str | None = None
    service_account: str | None = field(
        default=None,
        metadata=pipeline_only(
            "the predictor's service account, whose Secret holds the store's credentials: an "
            "administrator's choice (the namespace's default account when unset)"
        ),
    )
    args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("name", "namespace"):
            value = getattr(self, name)
            if value is not None and (len(value) > 63 or not DNS_LABEL.match(value)):
                raise ConfigError(
                    f"{name}: {value!r} is not a Kubernetes name; use lowercase letters, digits and '-', "
                    f"starting with a letter, at most 63 characters"
                )
        if self.gpus < 0:
            raise ConfigError(f"gpus: {self.gpus} must be 0 or more")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"max_model_len: {self.max_model_len} must be at least 1 (or null)")


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
