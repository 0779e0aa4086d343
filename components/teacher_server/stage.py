"""Create, wait for and delete the run's teacher InferenceService through the Kubernetes API.

    python -m components.teacher_server --config teacher_server.yaml   # run: start it, print its URLs

`api` is a kubernetes.client.CustomObjectsApi (custom_objects_api() makes one from the pod's service
account or the kubeconfig). KServe reports readiness in status.conditions (type Ready) and the in-cluster
address in status.address.url; the Hugging Face server answers OpenAI's API under /openai.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from components.common.errors import InputError
from components.common.inference_service import (
    GROUP,
    PLURAL,
    VERSION,
    build_inference_service,
    pod_namespace,
)
from components.common.model_sources import parse_source
from components.common.served_teacher import base_url, scoring_url, server_name
from components.teacher_server.config import Config

log = logging.getLogger(__name__)

RUN_LABEL = "kfp-distill/run-id"


@dataclass(frozen=True)
class Result:
    """The served teacher: its InferenceService and in-cluster address."""

    name: str
    namespace: str
    address: str  # http://<name>-predictor.<namespace>.svc.cluster.local

    @property
    def base_url(self) -> str:
        return base_url(self.address)

    @property
    def scoring_url(self) -> str:
        return scoring_url(self.address)


def storage_uri(source: str) -> str:
    """KServe's storageUri of a model source: hf://org/name[:revision], or the s3:// URI as it is."""
    parsed = parse_source(source)
    if parsed.scheme == "hf":
        return f"hf://{parsed.location}" + (f":{parsed.revision}" if parsed.revision else "")
    return f"s3://{parsed.location}"


def teacher_service(config: Config) -> dict[str, Any]:
    """The InferenceService object serving the teacher for config.run_id."""
    name = server_name(config.run_id)
    serving = config.serving
    return build_inference_service(
        dataclasses.replace(serving, name=name),
        model_name=name,
        storage_uri=storage_uri(config.source),
        namespace=serving.namespace or pod_namespace(),
        labels={RUN_LABEL: config.run_id[:63]},
    )


def run(config: Config) -> Result:
    """Start the run's teacher server with the pod's service account (or the kubeconfig)."""
    from components.common.inference_service import custom_objects_api

    return start(config, custom_objects_api())


def start(config: Config, api) -> Result:
    """Create the run's teacher server (one left by an earlier attempt of the run is reused) and wait
    until KServe reports it Ready; an InputError names the last reason when it is not in time."""
    from kubernetes.client.exceptions import ApiException

    service = teacher_service(config)
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, service)
        log.info("teacher server: InferenceService %s/%s created", namespace, name)
    except ApiException as error:
        if error.status != 409:
            raise InputError(
                f"teacher_server_source: creating InferenceService {namespace}/{name} failed: "
                f"{error.status} {error.reason}"
            ) from None
        log.info(
            "teacher server: InferenceService %s/%s exists (an earlier attempt): reused", namespace, name
        )
    deadline, reason = time.monotonic() + config.ready_timeout_s, "no status yet"
    while True:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        ready, reason, address = readiness(current)
        if ready:
            log.info("teacher server: %s ready at %s", name, address)
            return Result(name, namespace, address)
        if time.monotonic() + config.poll_s > deadline:
            raise InputError(
                f"teacher_server_source: InferenceService {namespace}/{name} not Ready within "
                f"{config.ready_timeout_s:g} s ({reason}); check its predictor pod's events and logs"
            )
        time.sleep(config.poll_s)


def readiness(service: dict[str, Any]) -> tuple[bool, str, str]:
    """(Ready, the Ready condition's reason or message, the in-cluster address) of an InferenceService."""
    status = service.get("status") or {}
    condition = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    address = (status.get("address") or {}).get("url") or status.get("url") or ""
    ready = condition.get("status") == "True" and bool(address)
    reason = condition.get("message") or condition.get("reason") or "no Ready condition yet"
    return ready, reason, address.rstrip("/")


def remove(config: Config, api) -> bool:
    """Delete the run's teacher server; False when there was none (never made, or gone already)."""
    from kubernetes.client.exceptions import ApiException

    service = teacher_service(config)
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise InputError(
            f"teacher server: deleting InferenceService {namespace}/{name} failed: {error.status} {error.reason}"
        ) from None
    log.info("teacher server: InferenceService %s/%s deleted", namespace, name)
    return True
