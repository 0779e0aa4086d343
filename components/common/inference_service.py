"""The KServe InferenceService of the gated model, and applying it through the Kubernetes API.

The Hugging Face serving runtime (kserve-huggingfaceserver, model format `huggingface`) serves the model
from its storage URI with vLLM on a GPU (`--backend=vllm`); KServe's storage initializer downloads it
with the predictor service account's credentials.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.config import exposed, pipeline_only
from components.common.errors import ConfigError, InputError

log = logging.getLogger(__name__)

# Kubernetes object names (DNS-1123 labels), which an InferenceService's name must be.
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


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


GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# The labels that mark an InferenceService as this project's, for one model: only such a one is replaced.
PART_OF = ("app.kubernetes.io/part-of", "kfp-distill")
MODEL_LABEL = "kfp-distill/model-name"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def service_name(model_name: str) -> str:
    """A model name as a DNS label: lowercase, runs of other characters as '-', at most 63 characters."""
    name = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")[:63].rstrip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}"[:63].rstrip("-")
    return name


def build_inference_service(
    serving: ServingConfig, *, model_name: str, storage_uri: str, namespace: str, labels: dict[str, str]
) -> dict[str, Any]:
    """The InferenceService object (serving.kserve.io/v1beta1)."""
    name = serving.name or service_name(model_name)
    args = [f"--model_name={name}"]
    if serving.gpus:
        args.append("--backend=vllm")
    if serving.max_model_len:
        args.append(f"--max-model-len={serving.max_model_len}")
    args += serving.args
    resources = {"cpu": serving.cpu, "memory": serving.memory}
    if serving.gpus:
        resources["nvidia.com/gpu"] = str(serving.gpus)
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": storage_uri,
        "args": args,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }
    if serving.runtime:
        model["runtime"] = serving.runtime
    predictor: dict[str, Any] = {"model": model}
    if serving.service_account:
        predictor["serviceAccountName"] = serving.service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"predictor": predictor},
    }


def pod_namespace() -> str:
    """The namespace this pod runs in (the pipeline's), or "default" outside a cluster."""
    return NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else "default"


def custom_objects_api():
    """A CustomObjectsApi with the pod's service account in a cluster, else the kubeconfig (KUBECONFIG)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        # KUBECONFIG as it is now: the client reads its default location once, when it is imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CustomObjectsApi(client.ApiClient())


def apply_inference_service(service: dict[str, Any]) -> str:
    """Create the InferenceService, or replace the one of that name; returns 'created' or 'replaced'."""
    from kubernetes.client.exceptions import ApiException

    api = custom_objects_api()
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, service)
        log.info("register: InferenceService %s/%s created", namespace, name)
        return "created"
    except ApiException as error:
        if error.status != 409:
            raise InputError(
                f"deploy: creating InferenceService {namespace}/{name} failed: {error.status} {error.reason}"
            ) from None
    current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    check_ours(current, service)
    replacement = {
        **service,
        "metadata": {**service["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    try:
        api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, replacement)
    except ApiException as error:
        raise InputError(
            f"deploy: replacing InferenceService {namespace}/{name} failed: {error.status} {error.reason}"
        ) from None
    log.info("register: InferenceService %s/%s replaced", namespace, name)
    return "replaced"


def check_ours(current: dict[str, Any], service: dict[str, Any]) -> None:
    """Refuse to replace an InferenceService this project did not create for the same model (another
    team's of the same name, or another model's)."""
    found = (current.get("metadata") or {}).get("labels") or {}
    wanted = service["metadata"]["labels"]
    if found.get(PART_OF[0]) != PART_OF[1] or found.get(MODEL_LABEL) != wanted[MODEL_LABEL]:
        namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
        raise InputError(
            f"deploy: InferenceService {namespace}/{name} exists and is not kfp-distill's for model "
            f"{wanted[MODEL_LABEL]} (labels {PART_OF[0]}, {MODEL_LABEL}: {found.get(PART_OF[0])}, "
            f"{found.get(MODEL_LABEL)}); it is left as it is: set serving.name to another name"
        )
