"""Limits on what the stage may spend: a provider's requests/tokens per minute, and the run's budget.

The budget holds exactly, however many requests are in flight: a request is reserved before it leaves
(counted against max_requests, and its worst-case cost, from its prompt's size, max_tokens and the prices,
held against max_cost) and settled to its real cost when it returns. A request that fits only once those
in flight have settled waits for them; when none is left in flight and it still does not fit, the run stops.

Shards each get their share of the run's limits (`shard_allowance`), so together they hold them too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from components.common.openai_api import valid_count

log = logging.getLogger(__name__)


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
    """What this invocation may spend (`max_cost`, `max_requests`: its allowance, None for no limit) and
    what it has spent: requests sent, tokens and cost of those settled, worst-case cost of those in flight.
    """

    max_cost: float | None = None
    max_requests: int | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    held_cost: float = 0.0
    in_flight: int = 0
    stopped: str = ""
    overshot: bool = False
    _settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def reserve_now(self, worst_cost: float) -> bool:
        """Reserve one request costing at most `worst_cost` if it fits now. When it cannot fit whatever
        the requests in flight turn out to cost, `stopped` says why; in-flight requests still finish."""
        if self.stopped:
            return False
        if self.max_requests is not None and self.requests >= self.max_requests:
            self.stopped = (
                f"max_requests reached: {self.requests} requests sent, all that the run's limit left to "
                "this invocation"
            )
            return False
        if self.max_cost is not None and self.cost + self.held_cost + worst_cost > self.max_cost:
            if not self.in_flight:
                self.stopped = (
                    f"max_cost reached: spent {self.cost:.4f} of the {self.max_cost:.4f} that the run's "
                    f"limit left to this invocation, and the next request could cost up to {worst_cost:.4f}"
                )
            return False
        self.requests += 1
        self.held_cost += worst_cost
        self.in_flight += 1
        return True

    async def reserve(self, worst_cost: float) -> bool:
        """Reserve one request, waiting for those in flight to settle when only they stand in the way."""
        while not self.reserve_now(worst_cost):
            if self.stopped:
                return False
            settled = self._settled
            await settled.wait()
        return True

    def settle(
        self,
        worst_cost: float,
        prompt_tokens: int,
        completion_tokens: int,
        prices: tuple[float, float],
        reported: bool = True,
    ) -> float:
        """A reserved request came back (with an answer or not): its real cost replaces its worst case.
        Returns that cost; an attempt without an answer (an error, a timeout) costs nothing. An answer
        whose usage the provider did not report, or reported as no count can be (`reported` False, or
        counts that are not whole numbers >= 0), costs its worst case: a missing, negative or NaN usage
        must not refund the budget."""
        if not (reported and valid_count(prompt_tokens) and valid_count(completion_tokens)):
            prompt_tokens, completion_tokens = 0, 0
            cost = worst_cost
        else:
            cost = token_cost(prompt_tokens, completion_tokens, prices)
        if cost > worst_cost * (1 + 1e-9) and not self.overshot:
            self.overshot = True
            log.warning(
                "a request cost %.6f, more than its worst case %.6f: the provider bills beyond max_tokens "
                "(a reasoning model's chain of thought?), so max_cost may be exceeded",
                cost,
                worst_cost,
            )
        self.in_flight -= 1
        # Reset when nothing is in flight, so rounding never leaves a phantom reservation behind.
        self.held_cost = max(0.0, self.held_cost - worst_cost) if self.in_flight else 0.0
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost += cost
        self._wake()
        return cost

    def stop(self, reason: str) -> None:
        """No new requests from now on; those in flight finish."""
        self.stopped = self.stopped or reason
        self._wake()

    def _wake(self) -> None:
        self._settled.set()
        self._settled = asyncio.Event()


def token_cost(prompt_tokens: int, completion_tokens: int, prices: tuple[float, float]) -> float:
    """Prices are per million tokens: cost = tokens / 1e6 * price, for input and output separately."""
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def worst_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """An upper bound of a prompt's tokens: byte-level tokenizers make at most one token per UTF-8 byte,
    plus a few for each message's role markers and for the reply's header in the chat template."""
    return sum(len(m["content"].encode("utf-8")) + 8 for m in messages) + 8


def worst_cost(
    messages: list[dict[str, str]], max_tokens: int | None, n: int, prices: tuple[float, float]
) -> float:
    """The most one request can cost, assuming the provider honours max_tokens for each of its n answers
    (None: no bound; stage.check_budget refuses max_cost without max_tokens)."""
    return token_cost(worst_prompt_tokens(messages), (max_tokens or 0) * n, prices)


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
