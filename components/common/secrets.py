"""The one place secrets are read: environment variables, which on the cluster come from Kubernetes Secrets.

Values are returned to the caller and never logged or written into configs. What a config may name is
limited here too: `api_key_env` only variables meant for API keys (never the store's AWS_* credentials),
and local input paths never the kernel's or Kubernetes' secret-bearing folders.
"""

import os
import re
from pathlib import Path

from components.common.errors import ConfigError, InputError

# The API-key variables the pipeline fills from its Secrets (pipelines/distill_pipeline.py maps
# Secret distill-teacher to TEACHER_API_KEY and distill-judge to JUDGE_API_KEY).
TEACHER_KEY_ENV = "TEACHER_API_KEY"
JUDGE_KEY_ENV = "JUDGE_API_KEY"
API_KEY_ENVS = (TEACHER_KEY_ENV, JUDGE_KEY_ENV)
# Any other variable a config names as a key must end in _API_KEY (e.g. DEEPSEEK_API_KEY for a key you
# mount yourself). AWS_* is refused even then: the store's credentials must never leave as a bearer token.
API_KEY_ENV_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*_API_KEY")

# Folders whose files hold the pod's environment, devices or mounted credentials: /proc/self/environ,
# /var/run/secrets/kubernetes.io/serviceaccount/token, ... Never read as data.
SECRET_PATHS = ("/proc", "/sys", "/dev", "/var/run/secrets", "/run/secrets")


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


def check_api_key_env(name: str, field: str = "api_key_env") -> None:
    """Refuse an API-key variable name that is not one of API_KEY_ENVS nor matches API_KEY_ENV_PATTERN."""
    if name in API_KEY_ENVS or (API_KEY_ENV_PATTERN.fullmatch(name) and not name.startswith("AWS_")):
        return
    raise ConfigError(
        f"{field}: {name!r} is not a variable meant for an API key; use {' or '.join(API_KEY_ENVS)} "
        "(filled from the pipeline's Secrets) or a name ending in _API_KEY (not AWS_*)"
    )


def refuse_secret_path(path: str | Path, field: str) -> None:
    """Raise ConfigError when `path`, as given or with its symlinks resolved, lies under SECRET_PATHS."""
    given = Path(os.path.normpath(Path(path).expanduser().absolute()))
    for candidate in (given, given.resolve()):
        for root in map(Path, SECRET_PATHS):
            if candidate == root or root in candidate.parents:
                raise ConfigError(
                    f"{field}: {path} lies under {root}, which holds the pod's environment, devices or "
                    "credentials; give a file or folder elsewhere"
                )
