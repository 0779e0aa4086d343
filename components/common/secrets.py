"""The one place secrets are read: environment variables, which on the cluster come from Kubernetes Secrets.

Values are returned to the caller and never logged or written into configs.
"""

import os

from components.common.errors import InputError


def require_env(name: str, purpose: str) -> str:
    """Return the value of environment variable `name`, or explain how to provide it."""
    value = os.environ.get(name, "")
    if not value:
        raise InputError(
            f"environment variable {name} is not set; it must hold the {purpose}. "
            f"Export it locally (export {name}=...) or, on the cluster, create the Kubernetes Secret "
            f"that the pipeline maps to {name} (see README, 'Secrets')."
        )
    return value


def optional_env(name: str) -> str | None:
    """Return the value of `name` if it is set and non-empty."""
    return os.environ.get(name) or None
