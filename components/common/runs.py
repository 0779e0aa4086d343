"""Run identity: the run_id that names a run's prefix in the store, and who the running process is.

`run_id` becomes a path segment (runs/<run_id>/...), so it is limited to [A-Za-z0-9._-] and may not be
'.' or '..': a run can never name another run's prefix or a folder above it.
"""

from __future__ import annotations

import os
import re
import socket

from components.common.errors import ConfigError

RUN_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def check_run_id(run_id: str, field: str = "run_id") -> str:
    """`run_id` when it is a safe path segment; ConfigError naming `field` otherwise."""
    if not RUN_ID.match(run_id or "") or run_id in (".", ".."):
        raise ConfigError(
            f"{field}: {run_id!r} must be a non-empty name of letters, digits, '.', '_' and '-' "
            "(not '.' or '..'), e.g. the pipeline run's id"
        )
    return run_id


def process_owner() -> dict[str, str | int]:
    """Who is running: host and process, and the KFP pod when in one (the KFP launcher sets KFP_POD_NAME)."""
    owner: dict[str, str | int] = {"host": socket.gethostname(), "pid": os.getpid()}
    if os.environ.get("KFP_POD_NAME"):
        owner["kfp_pod"] = os.environ["KFP_POD_NAME"]
    return owner
