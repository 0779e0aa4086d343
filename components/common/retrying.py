"""Retrying a request by its cause, one way for the teacher's requests, its judge and the eval judge.

A `Retry` (429, 5xx, timeout, dropped connection) is tried again after the provider's backoff or the
server's Retry-After (backoff.py), at most `max_retries` times after the first attempt; a `Failure`
(400, 401, 404 ...) is never retried; an `Answer` ends the loop. The teacher's worker pool does not wait
in place (it puts the prompt back on its queue), so it asks `retry_wait` how long; the judges wait in
`ask_with_retries`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from components.common.backoff import backoff
from components.common.openai_api import Answer, Failure, Retry


class RetrySettings(Protocol):
    max_retries: int
    backoff_s: float
    backoff_max_s: float


def retry_wait(settings: RetrySettings, failures: int, outcome: Retry) -> float | None:
    """Seconds to wait before trying again after the `failures`-th transient failure (1-based), or None
    once the retries are spent."""
    if failures > settings.max_retries:
        return None
    return backoff(failures, settings.backoff_s, settings.backoff_max_s, outcome.after_s)


async def ask_with_retries(
    send: Callable[[], Awaitable[Answer | Retry | Failure | None]], settings: RetrySettings
) -> Answer | Retry | Failure | None:
    """`send()` until it answers, fails for good, or the retries are spent (its last `Retry` is returned);
    None as soon as `send` returns None (it may not send: the run's budget is spent)."""
    failures = 0
    while True:
        outcome = await send()
        if not isinstance(outcome, Retry):
            return outcome
        failures += 1
        wait = retry_wait(settings, failures, outcome)
        if wait is None:
            return outcome
        await asyncio.sleep(wait)
