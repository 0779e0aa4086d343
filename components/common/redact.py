"""Credentials a config carries by hand, hidden from everything the stages write or log.

Keys come from the environment (secrets.py) and never enter a config, but a config can still hold one:
a header value (`extra_headers: {Authorization: ...}`), a body field (`extra_body`), `user:password@`
in a URL, or a URL's query value under a credential-like name (`?api-key=...`, `&X-Amz-Signature=...`). summary.json, eval.json, config reprs, records and log lines pass through here first.

    redact_urls("at https://me:pw@host/v1")        -> "at https://***@host/v1"
    redact_urls("https://host/v1?api-key=k&v=2")   -> "https://host/v1?api-key=***&v=2"
    redact_config({"base_url": ..., "extra_headers": {"X-Key": "k"}, "extra_body": {"think": True}})
        -> URLs redacted, extra_headers {"X-Key": "***"}, extra_body {"think": True}
    digest_values({"token": "k", "think": True})   -> {"token": "sha256:<16 hex>", "think": True}

Booleans and nulls stay readable (a flag is no secret); every other value of extra_headers and extra_body
is hidden, whatever its key is called.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

MASK = "***"
# Fields whose values are sent to a provider as given, so any of them may be a credential.
OPAQUE_FIELDS = ("extra_headers", "extra_body")
# scheme://userinfo@ : the userinfo ends at the first '/', '?', '#' or blank after the scheme, and at its
# last '@' (a password may hold one).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]+@")
# ?name=value or &name=value where the name says credential (api-key, access_token, X-Amz-Signature,
# sig, ...): the value runs to the next '&', '#', quote or blank.
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&][\w.~-]*(?:key|token|secret|passw(?:or)?d|pwd|sig|signature|credential|auth)[\w.~-]*=)"
    r"[^&#\s\"']+",
    re.IGNORECASE,
)


def redact_urls(text: str) -> str:
    """`text` with the user:password@ part of every URL in it replaced by ***@, and the value of every
    query parameter with a credential-like name by ***."""
    return _SECRET_QUERY.sub(rf"\g<name>{MASK}", _USERINFO.sub(rf"\g<scheme>{MASK}@", text))


def mask_values(value: Any) -> Any:
    """`value` with every leaf that is not a boolean or null replaced by MASK, keys kept."""
    return _map_leaves(value, lambda _: MASK)


def digest_values(value: Any) -> Any:
    """`value` with every leaf that is not a boolean or null replaced by a short SHA-256 of it: what
    identifies a setting (record ids, cache keys) without showing it."""
    return _map_leaves(
        value, lambda leaf: "sha256:" + hashlib.sha256(json.dumps(leaf).encode()).hexdigest()[:16]
    )


def redact_config(data: Any) -> Any:
    """A plain-data config (or any JSON-like value) safe to write or log: the values of OPAQUE_FIELDS
    masked at any depth, and user:password@ removed from every string."""
    if isinstance(data, dict):
        return {
            key: mask_values(value) if key in OPAQUE_FIELDS else redact_config(value)
            for key, value in data.items()
        }
    if isinstance(data, (list, tuple)):
        return [redact_config(item) for item in data]
    if isinstance(data, str):
        return redact_urls(data)
    return data


def _map_leaves(value: Any, hide) -> Any:
    if isinstance(value, dict):
        return {key: _map_leaves(item, hide) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_leaves(item, hide) for item in value]
    if value is None or isinstance(value, bool):
        return value
    return hide(value)
