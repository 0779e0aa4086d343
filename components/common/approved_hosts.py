"""Where an API key may go: the hosts an administrator approved, never one a run parameter names.

A run chooses the teacher's and the judge's `base_url` (parameters and overrides are untrusted), and the
client sends the key in $api_key_env to it. The key leaves only for an approved origin (scheme, host,
port):

  - the `base_url` of each provider in the image's teacher_config.yaml (not a run's provider_config), and
  - each entry of APPROVED_HOSTS_ENV, comma-separated: an origin (`https://llm.corp.example`,
    `http://vllm.team.svc.cluster.local:8000`) or a bare host, meaning https on port 443. On the cluster
    it comes from the ConfigMap distill-approved-hosts (manifests/base/approved-hosts.yaml).

    key_may_go_to("https://api.deepseek.com/v1")         -> True  (a shipped provider)
    key_may_go_to("http://127.0.0.1:9999/v1")            -> False (unless an administrator listed it)

A provider that needs no key (`api_key_required: false`) may sit anywhere: it gets no key.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

APPROVED_HOSTS_ENV = "DISTILL_APPROVED_API_HOSTS"
DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL; a bare host counts as https://host."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower().rstrip("."), port


def approved_origins() -> set[Origin]:
    """The shipped providers' origins and those listed in APPROVED_HOSTS_ENV."""
    from components.common.providers import load_presets

    urls = [preset.get("base_url") or "" for preset in load_presets().values() if isinstance(preset, dict)]
    urls += os.environ.get(APPROVED_HOSTS_ENV, "").split(",")
    return {found for url in urls if url.strip() and (found := origin(url.strip())) is not None}


def key_may_go_to(base_url: str | None) -> bool:
    found = origin(base_url or "")
    return found is not None and found in approved_origins()
