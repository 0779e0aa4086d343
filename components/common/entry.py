"""The single call a KFP component body makes: build the stage's Config from the task's inputs, run it.

Errors a user can fix (ConfigError, InputError) and a stage stopped before its end (StageStopped)
end the task with one line, `error: <what and how to fix it>`, instead of a traceback, so the KFP UI shows
the cause at the bottom of the log.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from typing import Any

from components.common.config import deep_merge, from_dict
from components.common.errors import ConfigError, InputError, StageStopped
from components.common.logs import setup_logging
from components.common.redact import redact_urls

log = logging.getLogger(__name__)


def run_stage(
    stage: str,
    fields: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    function: str = "run",
    args: tuple[Any, ...] = (),
) -> Any:
    """Call `components.<stage>.<function>(Config(fields, then overrides), *args)`; returns its result.

    `function` may name a submodule's function, e.g. "multinode.run_as_pytorchjob".
    """
    setup_logging()
    package = importlib.import_module(f"components.{stage}")
    submodule, _, name = function.rpartition(".")
    module = importlib.import_module(f"{package.__name__}.{submodule}") if submodule else package
    try:
        config = from_dict(package.Config, deep_merge(dict(fields), dict(overrides or {})))
        return getattr(module, name)(config, *args)
    except (ConfigError, InputError, StageStopped) as error:
        log.error("%s", error)
        print(f"error: {redact_urls(str(error))}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
