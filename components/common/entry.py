"""The single call a KFP component body makes: build the stage's Config from the task's inputs, run it.

    result = run_stage(run, Config, fields, overrides, parameters="train")

Errors a user can fix (ConfigError, InputError) and a stage stopped before its end (StageStopped)
end the task with one line, `error: <what and how to fix it>`, instead of a traceback, so the KFP UI shows
the cause at the bottom of the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from components.common.config import deep_merge, from_dict, refuse_exposed_overrides
from components.common.errors import ConfigError, InputError, StageStopped
from components.common.logs import print_error, setup_logging

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
    with one_line_errors():
        if parameters:
            refuse_exposed_overrides(config_class, parameters, overrides or {})
        config = from_dict(config_class, deep_merge(dict(fields), dict(overrides or {})))
        return function(config)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """End the process with `error: <what and how to fix it>` on an error the user can fix."""
    setup_logging()
    try:
        yield
    except (ConfigError, InputError, StageStopped) as error:
        log.error("%s", error)
        print_error(str(error))
        raise SystemExit(1) from None
