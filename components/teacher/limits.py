"""Limits on how fast and how much the stage may ask: a provider's requests/tokens per minute, and each
shard's part of the run's budget (the budget itself: money.py).

Shards each get their share of the run's limits (`shard_allowance`), so together they hold them too.
"""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Requests per minute and tokens per minute, as token buckets refilled continuously.

    A request takes one request token and its estimated prompt tokens before it is sent; the completion
    tokens are charged when the answer arrives (`charge`), which may take the bucket below zero so that the
    next requests wait until the minute's allowance has caught up.
    """

    def __init__(self, rpm: float | None, tpm: float | None, clock=time.monotonic, sleep=asyncio.sleep):
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self.sleep = sleep
        now = clock()
        # Start with one second's allowance rather than a full minute, so a burst cannot exceed the limit.
        self._requests = (rpm / 60.0, now) if rpm else None
        self._tokens = (tpm / 60.0, now) if tpm else None
        self._lock = asyncio.Lock()

    def _level(self, bucket: tuple[float, float], per_minute: float) -> float:
        level, since = bucket
        return min(per_minute, level + (self.clock() - since) * per_minute / 60.0)

    async def acquire(self, prompt_tokens: int) -> None:
        async with self._lock:  # one waiter at a time keeps requests in arrival order
            while True:
                wait = 0.0
                if self._requests is not None:
                    level = self._level(self._requests, self.rpm)
                    wait = max(wait, (1 - level) * 60.0 / self.rpm)
                if self._tokens is not None:
                    level = self._level(self._tokens, self.tpm)
                    need = min(prompt_tokens, self.tpm)
                    wait = max(wait, (need - level) * 60.0 / self.tpm)
                if wait <= 0:
                    break
                await self.sleep(wait)
            now = self.clock()
            if self._requests is not None:
                self._requests = (self._level(self._requests, self.rpm) - 1, now)
            if self._tokens is not None:
                self._tokens = (self._level(self._tokens, self.tpm) - prompt_tokens, now)

    def charge(self, tokens: int) -> None:
        if self._tokens is not None:
            self._tokens = (self._level(self._tokens, self.tpm) - tokens, self.clock())


def share(total: float, index: int, count: int) -> float:
    """Shard `index` of `count`'s part of `total`: a whole number of requests is split so that the parts
    add up to exactly `total`; a cost is split evenly."""
    if isinstance(total, int):
        return total // count + (1 if index < total % count else 0)
    return total / count


def shard_allowance(
    limit: float, index: int, count: int, spent_by_shard: float, spent_by_others: float
) -> float:
    """What shard `index` of `count` may still spend of the run's `limit`: its share of what is left after
    invocations with another shard count (`spent_by_others`, e.g. the single-shard run that finishes a
    sharded one), less what this shard has spent already. Summed over the shards, never more than `limit`."""
    return max(0, share(limit, index, count) - share(spent_by_others, index, count) - spent_by_shard)
