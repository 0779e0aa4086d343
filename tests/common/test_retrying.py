"""The one retry loop: a transient failure is tried again up to max_retries times after the first attempt,
a permanent failure never, and the server's Retry-After sets the wait."""

from __future__ import annotations

import asyncio
import time

from components.common.openai_api import Answer, Choice, Failure, Retry
from components.common.provider_config import ProviderConfig
from components.common.retrying import ask_with_retries, retry_wait


def scripted(outcomes):
    """A sender replying with `outcomes` in turn; `sent` counts its calls."""
    replies = iter(outcomes)

    async def send():
        send.sent += 1
        return next(replies)

    send.sent = 0
    return send


def settings(max_retries: int) -> ProviderConfig:
    return ProviderConfig(model="m", max_retries=max_retries, backoff_s=0.001, backoff_max_s=0.002)


def test_transient_failures_are_retried_until_an_answer():
    send = scripted([Retry("503"), Retry("429"), Answer([Choice("yes")])])
    outcome = asyncio.run(ask_with_retries(send, settings(2)))
    assert isinstance(outcome, Answer) and send.sent == 3


def test_retries_end_after_max_retries_with_the_last_transient_failure():
    send = scripted([Retry("503"), Retry("503"), Retry("timeout"), Answer([Choice("late")])])
    outcome = asyncio.run(ask_with_retries(send, settings(2)))
    assert outcome == Retry("timeout") and send.sent == 3


def test_a_permanent_failure_or_a_refused_send_is_not_retried():
    send = scripted([Failure("400 bad request", 400), Answer([Choice("never")])])
    assert asyncio.run(ask_with_retries(send, settings(5))) == Failure("400 bad request", 400)
    assert send.sent == 1
    refused = scripted([None, Answer([Choice("never")])])
    assert asyncio.run(ask_with_retries(refused, settings(5))) is None and refused.sent == 1


def test_the_servers_retry_after_sets_the_wait():
    assert 0.3 <= retry_wait(settings(3), 1, Retry("429", after_s=0.3)) <= 0.33
    assert retry_wait(settings(3), 4, Retry("429", after_s=0.3)) is None
    started = time.monotonic()
    send = scripted([Retry("429", after_s=0.2), Answer([Choice("yes")])])
    assert isinstance(asyncio.run(ask_with_retries(send, settings(1))), Answer)
    assert time.monotonic() - started >= 0.2
