"""Money, counted one way: `Spend` is what was spent (requests, tokens, cost), `Budget` the account that
reserves a request before it leaves, settles it to its real cost when it returns, refunds one that cost
nothing, and keeps the totals.

The budget holds exactly, however many requests are in flight: a request is reserved before it leaves
(counted against max_requests, and its worst-case cost, from its prompt's size, max_tokens and the prices,
held against max_cost) and settled to its real cost when it returns. A request that fits only once those
in flight have settled waits for them; when none is left in flight and it still does not fit, the run stops.
The same `Spend` is what one prompt cost (generator jobs), what one invocation spent (the spend ledger) and
what the run spent (summed over the ledger).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, fields

from components.common.openai_api import valid_count

log = logging.getLogger(__name__)


@dataclass
class Spend:
    """Requests sent, tokens and cost: of one prompt, one invocation, or summed."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def add_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens


@dataclass
class Budget:
    """What this invocation may spend (`max_cost`, `max_requests`: its allowance, None for no limit) and
    what it has spent (`spent`: requests sent, tokens and cost of those settled), with the worst-case cost
    of those in flight (`held`)."""

    max_cost: float | None = None
    max_requests: int | None = None
    spent: Spend = field(default_factory=Spend)
    held: float = 0.0
    in_flight: int = 0
    stopped: str = ""
    overshot: bool = False
    _settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def reserve_now(self, worst_cost: float) -> bool:
        """Reserve one request costing at most `worst_cost` if it fits now. When it cannot fit whatever
        the requests in flight turn out to cost, `stopped` says why; in-flight requests still finish."""
        if self.stopped:
            return False
        spent = self.spent
        if self.max_requests is not None and spent.requests >= self.max_requests:
            self.stopped = (
                f"max_requests reached: {spent.requests} requests sent, all that the run's limit left to "
                "this invocation"
            )
            return False
        if self.max_cost is not None and spent.cost + self.held + worst_cost > self.max_cost:
            if not self.in_flight:
                self.stopped = (
                    f"max_cost reached: spent {spent.cost:.4f} of the {self.max_cost:.4f} that the run's "
                    f"limit left to this invocation, and the next request could cost up to {worst_cost:.4f}"
                )
            return False
        spent.requests += 1
        self.held += worst_cost
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
        """A reserved request came back with an answer: its real cost replaces its worst case. Returns
        that cost. An answer whose usage the provider did not report, or reported as no count can be
        (`reported` False, or counts that are not whole numbers >= 0), costs its worst case: a missing,
        negative or NaN usage must not refund the budget."""
        if not (reported and valid_count(prompt_tokens) and valid_count(completion_tokens)):
            return self._release(worst_cost, 0, 0, worst_cost)
        cost = token_cost(prompt_tokens, completion_tokens, prices)
        if cost > worst_cost * (1 + 1e-9) and not self.overshot:
            self.overshot = True
            log.warning(
                "a request cost %.6f, more than its worst case %.6f: the provider bills beyond max_tokens "
                "(a reasoning model's chain of thought?), so max_cost may be exceeded",
                cost,
                worst_cost,
            )
        return self._release(worst_cost, prompt_tokens, completion_tokens, cost)

    def refund(self, worst_cost: float) -> float:
        """A reserved request came back without an answer (an error, a timeout): it cost nothing."""
        return self._release(worst_cost, 0, 0, 0.0)

    def forfeit(self, worst_cost: float) -> float:
        """A reserved request ended without a usable reply but may have been billed (cut off in flight,
        a malformed batch line): it costs its worst case."""
        return self._release(worst_cost, 0, 0, worst_cost)

    def _release(self, worst_cost: float, prompt_tokens: int, completion_tokens: int, cost: float) -> float:
        self.in_flight -= 1
        # Reset when nothing is in flight, so rounding never leaves a phantom reservation behind.
        self.held = max(0.0, self.held - worst_cost) if self.in_flight else 0.0
        self.spent.add_usage(prompt_tokens, completion_tokens)
        self.spent.cost += cost
        self._wake()
        return cost

    def stop(self, reason: str) -> None:
        """No new requests from now on; those in flight finish."""
        self.stopped = self.stopped or reason
        self._wake()

    def _wake(self) -> None:
        self._settled.set()
        self._settled = asyncio.Event()


def provider_prices(provider) -> tuple[float, float]:
    """A provider's (input, output) prices per million tokens; an unpriced side costs nothing."""
    return provider.price_input_per_m or 0.0, provider.price_output_per_m or 0.0


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
