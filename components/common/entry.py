"""The single call a KFP component body makes: build the stage's Config from the task's inputs, run it.

    result = run_stage(run, Config, fields, overrides, parameters="train")

Errors a user can fix (ConfigError, InputError) and a stage stopped before its end (StageStopped)
end the task with one line, `error: <what and how to fix it>`, instead of a traceback, so the KFP UI shows
the cause at the bottom of the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from components.common.config import deep_merge, from_dict, refuse_exposed_overrides
from components.common.errors import ConfigError, InputError, StageStopped
from components.common.logs import setup_logging
from components.common.redact import redact_urls

log = logging.getLogger(__name__)
C = TypeVar("C")
R = TypeVar("R")


def run_stage(
    function: Callable[[C], R],
    config_class: type[C],
    fields: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    parameters: str = "",
) -> R:
    """`function(config_class(fields, then overrides))`. With `parameters` (the pipeline's prefix for this
    stage, e.g. "train"), an override of a field that is also a pipeline parameter is refused."""
    setup_logging()
    try:
        if parameters:
            refuse_exposed_overrides(config_class, parameters, overrides or {})
        config = from_dict(config_class, deep_merge(dict(fields), dict(overrides or {})))
        return function(config)
    except (ConfigError, InputError, StageStopped) as error:
        log.error("%s", error)
        print(f"error: {redact_urls(str(error))}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
