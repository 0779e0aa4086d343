"""Limits on what the stage may spend: a provider's requests/tokens per minute, and the run's budget."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


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


@dataclass
class Budget:
    """Running totals against `max_cost` and `max_requests`; prices are per million tokens."""

    price_input_per_m: float = 0.0
    price_output_per_m: float = 0.0
    max_cost: float | None = None
    max_requests: int | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    stopped: str = ""

    def allows_request(self) -> bool:
        """False once a limit is reached; then `stopped` says which. In-flight requests still finish."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            self.stopped = self.stopped or f"max_requests={self.max_requests} reached"
        if self.max_cost is not None and self.cost >= self.max_cost:
            self.stopped = self.stopped or f"max_cost={self.max_cost} reached (spent {self.cost:.4f})"
        return not self.stopped

    def count_request(self) -> None:
        self.requests += 1

    def add_usage(
        self, prompt_tokens: int, completion_tokens: int, prices: tuple[float, float] | None = None
    ) -> float:
        """Count tokens at the teacher's prices, or at `prices` (input, output) for another model (the
        judge); returns what they cost."""
        cost = token_cost(
            prompt_tokens, completion_tokens, prices or (self.price_input_per_m, self.price_output_per_m)
        )
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost += cost
        return cost


def token_cost(prompt_tokens: int, completion_tokens: int, prices: tuple[float, float]) -> float:
    """Prices are per million tokens: cost = tokens / 1e6 * price, for input and output separately."""
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6
