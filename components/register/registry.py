"""Kubeflow Model Registry: the gated model as a new version of a registered model, through the
`model-registry` client (which calls the registry's REST API: find or create the registered model, create
the version with the eval metrics as its properties, attach the model artifact with its store URI)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass_environment

from components.common.errors import InputError
from components.register.config import in_cluster

log = logging.getLogger(__name__)

TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
# Model Registry properties hold strings, numbers and booleans.
PROPERTY_TYPES = (str, int, float, bool)


@dataclass
class Registration:
    registry_url: str
    model_name: str
    version: str
    registered_model_id: str
    model_uri: str


def version_properties(metrics: dict[str, Any], gates: dict[str, str], run_id: str) -> dict[str, Any]:
    """What the version records besides its artifact: the eval metrics, the gates' verdicts and the run."""
    properties: dict[str, Any] = {
        name: value for name, value in metrics.items() if isinstance(value, PROPERTY_TYPES)
    }
    properties.update(gates)
    if run_id:
        properties["pipeline_run_id"] = run_id
    return properties


def check_service_account_token_stays_in_cluster(registry_url: str) -> None:
    """Without MODEL_REGISTRY_TOKEN the client sends the pod's service-account token, which acts for the
    pipeline in the cluster: refuse a registry outside the cluster, and a proxy (HTTP(S)_PROXY, which the
    client honours) that would carry the request, before anything is sent."""
    parsed = urlparse(registry_url)
    host = parsed.hostname or ""
    if not in_cluster(host):
        raise InputError(
            f"registry_url: {host} is outside the cluster and {TOKEN_ENV} is not set, so the pod's "
            f"service-account token would go there; set {TOKEN_ENV} (Secret distill-registry) for an "
            "outside registry, or give its <service>.<namespace>.svc.cluster.local address"
        )
    proxies = getproxies()
    proxy = proxies.get(parsed.scheme)
    if proxy and not proxy_bypass_environment(host, proxies):
        raise InputError(
            f"registry_url: requests to {host} would go through the proxy {parsed.scheme.upper()}_PROXY, "
            f"carrying the pod's service-account token; add {host} to NO_PROXY, or set {TOKEN_ENV}"
        )


def register(
    registry_url: str,
    *,
    model_name: str,
    version: str,
    model_uri: str,
    model_format: str,
    model_format_version: str,
    storage_key: str | None,
    author: str,
    description: str,
    properties: dict[str, Any],
) -> Registration:
    """Register `model_uri` as `version` of `model_name`; a version that exists already is refused."""
    from model_registry import ModelRegistry
    from model_registry.exceptions import StoreError

    parsed = urlparse(registry_url)
    secure = parsed.scheme == "https"
    token = os.environ.get(TOKEN_ENV) or None
    if token is None:
        check_service_account_token_stays_in_cluster(registry_url)
    try:
        registry = ModelRegistry(
            f"{parsed.scheme}://{parsed.hostname}",
            parsed.port or (443 if secure else 80),
            author=author,
            is_secure=secure,
            user_token=token,
        )
        model = registry.register_model(
            model_name,
            model_uri,
            model_format_name=model_format,
            model_format_version=model_format_version,
            version=version,
            storage_key=storage_key,
            version_description=description,
            metadata=properties,
        )
    except StoreError as error:
        raise InputError(
            f"registry_url: {registry_url} refused {model_name} version {version}: {error}"
        ) from None
    log.info("register: %s version %s registered in %s (id %s)", model_name, version, registry_url, model.id)
    return Registration(registry_url, model_name, version, str(model.id), model_uri)
