"""Asking the teacher for many prompts at once: a refilling worker pool with non-blocking retries.

`concurrency` workers each take the next prompt as soon as they finish one (no batch-and-wait). A prompt
that must be retried (429, 5xx, timeout, dropped connection, or an empty/truncated answer under the
"retry" policy) is put back on the queue after its backoff or Retry-After, ahead of fresh prompts, and
its worker moves on to another prompt meanwhile, so waiting never idles a slot. Every request is reserved
against the budget and journaled in the spend ledger before it leaves (money.py, journal.py); each paid
answer goes to the cache the moment it arrives and to the journal at the next checkpoint. Budget limits
stop new requests; requests in flight finish and are kept. SIGTERM (a pod being stopped), Ctrl-C and a
fatal teacher error (key revoked, model gone) do the same, save every answer at once, and end the run
with an error so that the task is retried and resumes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

from components.common.errors import InputError, StageStopped
from components.common.openai_api import Answer, Choice, Failure, Retry
from components.common.retrying import ask_with_retries, retry_wait
from components.teacher.config import Config
from components.teacher.journal import Cache, Entry, Journal, PromptFields, SpendLedger
from components.teacher.judge import Judge, hinted_messages
from components.teacher.limits import RateLimiter
from components.teacher.money import Budget, Spend, provider_prices, worst_cost
from components.teacher.readers import Prompt

log = logging.getLogger(__name__)

FEED_AHEAD = 256  # prompts read from the dataset ahead of the workers (twice the concurrency if more)


@dataclass
class Job:
    key: str
    prompt: Prompt
    transient_failures: int = 0
    policy_retries: int = 0
    spent: Spend = field(default_factory=Spend)  # this prompt's requests, their tokens and cost
    failure: str = ""  # why a batch left it unanswered (batch.py)


@dataclass
class Tally:
    """What this invocation did: the shard's metrics, and why prompts were retried or left unanswered.

    `usable` counts prompts that got a usable answer (asked or from the cache); `retry_causes` and
    `lost_causes` count by cause (the teacher's error, "cut by max_tokens", the budget ...); `batches`
    the Batch API batches created (mode: batch).
    """

    answered: int = 0
    cached: int = 0
    dropped: int = 0
    failed: int = 0
    unfinished: int = 0
    retries: int = 0
    usable: int = 0
    batches: int = 0
    retry_causes: collections.Counter[str] = field(default_factory=collections.Counter)
    lost_causes: collections.Counter[str] = field(default_factory=collections.Counter)

    def retried(self, cause: str) -> None:
        self.retries += 1
        self.retry_causes[cause] += 1

    def lost(self, kind: str, cause: str) -> None:
        """One prompt ends without a usable answer: `kind` is failed, dropped or unfinished."""
        setattr(self, kind, getattr(self, kind) + 1)
        self.lost_causes[f"{kind}: {cause}"] += 1


# The names the answer policies' problems go by in the counts.
PROBLEMS = {"length": "cut by max_tokens", "empty": "empty answer"}


def prompt_fields(job: Job) -> PromptFields:
    prompt = job.prompt
    return PromptFields(prompt.messages, prompt.reference, prompt.source, prompt.extra)


def make_entry(job: Job, answer_choices: list[Choice], status: str, reason: str, teacher: dict) -> Entry:
    return Entry(
        key=job.key,
        status=status,
        reason=reason,
        prompt=prompt_fields(job),
        answers=answer_choices,
        usage={"prompt_tokens": job.spent.prompt_tokens, "completion_tokens": job.spent.completion_tokens},
        cost=job.spent.cost,
        requests=job.spent.requests,
        teacher=teacher,
    )


def answer_problem(choices: list[Choice]) -> str:
    """'empty' or 'length' when an answer is unusable as it stands, else ''."""
    for choice in choices:
        if choice.finish_reason == "length":
            return "length"
        if not choice.content.strip():
            return "empty"
    return ""


def why_unusable(outcome: Answer | Retry | Failure | None) -> str:
    """Why a request's last outcome gives no usable answer."""
    if isinstance(outcome, Answer):
        return PROBLEMS[answer_problem(outcome.choices)]
    if isinstance(outcome, Failure):
        return outcome.reason
    return "retries exhausted" if outcome is not None else "budget reached"


class Generator:
    """One shard's run over its pending jobs; `progress` is called with each finished job's entry."""

    def __init__(
        self,
        config: Config,
        teacher,
        journal: Journal,
        cache: Cache | None,
        budget: Budget,
        spend: SpendLedger,
        limiter: RateLimiter,
        judge: Judge | None,
        tally: Tally | None = None,
        progress=None,
    ):
        self.config = config
        self.teacher = teacher
        self.journal = journal
        self.cache = cache
        self.budget = budget
        self.spend = spend
        self.limiter = limiter
        self.judge = judge
        self.tally = tally or Tally()
        self.progress = progress or (lambda entry: None)
        # Why the run stops before its end (a signal, a fatal error): no job is taken up any more.
        self.halted = ""
        self.interrupted = ""  # the signal's name, when one stopped the run
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def ensure_ready(self) -> None:
        """Preflight the teacher (and judge) once, before the first request that is not answered from the
        cache: a fully cached re-run needs neither the endpoint nor the key."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                await self.teacher.preflight()
                if self.judge is not None:
                    await self.judge.teacher.preflight()
                self._ready = True

    def policy(self, problem: str) -> str:
        return {"empty": self.config.on_empty, "length": self.config.on_length}.get(problem, "keep")

    async def lookup_cache(self, job: Job) -> Entry | None:
        if self.cache is None:
            return None
        entry = await asyncio.to_thread(self.cache.get, job.key, job.prompt.messages)
        if entry is None or (self.policy(answer_problem(entry.answers)) == "retry"):
            return None
        problem = answer_problem(entry.answers)
        entry.status = "dropped" if self.policy(problem) == "drop" else "ok"
        entry.reason, entry.prompt, entry.cached, entry.requests, entry.cost = (
            problem,
            prompt_fields(job),
            True,
            0,
            0.0,
        )
        return entry

    async def paid_ask(
        self, client, messages: list[dict[str, str]], prices: tuple[float, float]
    ) -> tuple[Answer | Retry | Failure, float] | None:
        """`client.ask(messages)` within the budget, and what it cost: the request is reserved at its worst
        case and journaled before it leaves, and settled to its real cost when it returns. None when the
        budget allows no more requests."""
        provider = client.provider
        worst = worst_cost(messages, provider.max_tokens, provider.n, prices)
        if not await self.budget.reserve(worst):
            return None
        outcome: Answer | Retry | Failure | None = None
        try:
            await self.spend.record(self.budget)
            outcome = await client.ask(messages)
        finally:
            cost = settle(self.budget, worst, outcome, prices)
        return outcome, cost

    async def finish(self, job: Job, entry: Entry, new_answer: bool) -> None:
        # The paid answer goes to the cache first, so a pod killed while the judge thinks loses nothing.
        if new_answer and self.cache is not None:
            await asyncio.to_thread(self.cache.put, entry)
        if self.judge is not None and entry.status == "ok" and job.prompt.reference:
            verdict = await self.judged(job, entry.answers[0].content)
            entry.cost += verdict.pop("cost", 0.0)
            entry.judge = verdict
            if verdict["verdict"] == "reject" and self.config.judge.hint_rejected:
                entry = await self.hinted(job, entry)
            if entry.judge["verdict"] == "error":
                # Not journaled: the next run judges it again, taking the answer from the cache.
                self.tally.lost("failed", "judge error")
                log.warning("judge failed on %s: %s", job.prompt.source, entry.judge["reply"])
                return
        if self.journal.add(entry):
            await asyncio.to_thread(self.journal.write_part, self.journal.take_buffer())
        if entry.cached:
            self.tally.cached += 1
        elif entry.status == "ok":
            self.tally.answered += 1
        if entry.status == "ok":
            self.tally.usable += 1
        elif entry.cached:
            self.tally.lost_causes[f"dropped: {PROBLEMS[entry.reason]}"] += 1
        else:
            self.tally.lost("dropped", PROBLEMS[entry.reason])
        self.progress(entry)

    async def judged(self, job: Job, answer: str) -> dict:
        judge = self.judge
        assert judge is not None
        return await judge.verdict(
            job.prompt.messages[-1]["content"],
            job.prompt.reference,
            answer,
            lambda messages: self.paid_ask(judge.teacher, messages, judge.prices),
        )

    async def hinted(self, job: Job, rejected: Entry) -> Entry:
        """The rejected answer's prompt asked once more with the gold answer as a hint, and judged again:
        an accepted answer replaces the rejected one (under the original prompt, so the student learns
        the reasoning without the hint); otherwise the rejected entry stays, noting how the hint went.
        entry.judge["hint"] says which ("accepted", "rejected", or why there was no new answer)."""
        provider = self.teacher.provider
        messages = hinted_messages(job.prompt.messages, job.prompt.reference, self.config.judge.hint_template)

        async def send() -> Answer | Retry | Failure | None:
            paid = await self.paid_ask(self.teacher, messages, provider_prices(provider))
            if paid is None:
                return None
            job.spent.requests += 1
            rejected.requests += 1
            rejected.cost += paid[1]
            return paid[0]

        outcome = await ask_with_retries(send, provider)
        verdict = rejected.judge or {}
        if not isinstance(outcome, Answer) or answer_problem(outcome.choices):
            rejected.judge = {**verdict, "hint": f"no answer: {why_unusable(outcome)}"}
            return rejected
        again = await self.judged(job, outcome.choices[0].content)
        rejected.cost += again.pop("cost", 0.0)
        if again["verdict"] != "accept":
            rejected.judge = {
                **verdict,
                "hint": "rejected" if again["verdict"] == "reject" else "judge error",
            }
            return rejected
        job.spent.add_usage(outcome.prompt_tokens, outcome.completion_tokens)
        entry = make_entry(job, outcome.choices, "ok", "", self.teacher.settings)
        entry.cost, entry.requests = rejected.cost, rejected.requests
        entry.judge = {**again, "hint": "accepted", "unhinted_answer": rejected.answers[0].content}
        return entry

    async def attempt(self, job: Job) -> float | None:
        """One step for `job`: None when it is finished, else seconds to wait before the next step."""
        if job.spent.requests == 0 and job.transient_failures == 0:
            cached = await self.lookup_cache(job)
            if cached is not None:
                await self.finish(job, cached, new_answer=False)
                return None
        if self.budget.stopped:
            self.tally.lost("unfinished", self.budget.stopped)
            return None
        await self.ensure_ready()
        await self.limiter.acquire(_estimate_tokens(job.prompt.messages))
        provider = self.teacher.provider
        paid = await self.paid_ask(self.teacher, job.prompt.messages, provider_prices(provider))
        if paid is None:
            self.tally.lost("unfinished", self.budget.stopped)
            return None
        outcome, cost = paid
        job.spent.requests += 1
        job.spent.cost += cost
        if isinstance(outcome, Answer):
            return await self.answered(job, outcome)
        if isinstance(outcome, Failure):
            if outcome.fatal:
                raise InputError(f"teacher at {provider.base_url}: {outcome.reason}")
            self.tally.lost("failed", outcome.cause)
            log.warning("giving up on %s: %s", job.prompt.source, outcome.reason)
            return None
        assert isinstance(outcome, Retry)
        job.transient_failures += 1
        wait = retry_wait(provider, job.transient_failures, outcome)
        if wait is None:
            self.tally.lost("failed", outcome.cause)
            log.warning(
                "giving up on %s after %d requests: %s", job.prompt.source, job.spent.requests, outcome.reason
            )
            return None
        self.tally.retried(outcome.cause)
        return wait

    async def answered(self, job: Job, answer: Answer) -> float | None:
        """Apply the answer policies to a paid answer (its cost already counted by the caller)."""
        job.spent.add_usage(answer.prompt_tokens, answer.completion_tokens)
        self.limiter.charge(answer.completion_tokens)
        problem = answer_problem(answer.choices)
        action = self.policy(problem)
        if action == "retry" and job.policy_retries < self.teacher.provider.max_retries:
            job.policy_retries += 1
            self.tally.retried(PROBLEMS[problem])
            return 0.0
        status = "dropped" if problem and action != "keep" else "ok"
        entry = make_entry(job, answer.choices, status, problem, self.teacher.settings)
        await self.finish(job, entry, new_answer=True)
        return None

    def halt(self, reason: str) -> None:
        """Take up no job and send no request from now on; answers in flight still land and are saved
        at once (every answer is a checkpoint)."""
        if not self.halted:
            self.halted = reason
            self.budget.stop(reason)
            self.journal.checkpoint_records = 1

    @contextlib.contextmanager
    def stopping_on_signals(self, then=None):
        """Within this block SIGTERM (Kubernetes stopping the pod; SIGKILL follows after the grace period)
        and SIGINT (Ctrl-C) halt the run; `then` runs after that."""
        loop = asyncio.get_running_loop()

        def on_signal(number: signal.Signals) -> None:
            if not self.interrupted:
                self.interrupted = number.name
                log.warning("%s: no new requests; saving every answer, then stopping", number.name)
                self.halt(f"{number.name} received")
                if then is not None:
                    then()

        handled = []
        for number in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(number, on_signal, number)
                handled.append(number)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (or not a Unix loop): the default handling applies
        try:
            yield
        finally:
            for number in handled:
                loop.remove_signal_handler(number)

    def raise_if_interrupted(self) -> None:
        if self.interrupted:
            raise StageStopped(
                f"stopped by {self.interrupted}; every answer so far is saved and a restart resumes"
            )

    async def run(self, jobs: Iterable[Job], count: int) -> Tally:
        """Ask for the `count` prompts of `jobs`, taken from it a batch at a time as workers free up, so
        that about FEED_AHEAD prompts wait in memory whatever the dataset's size."""
        # A prompt coming back from a retry goes before fresh ones (priority 0 before 1, then in order):
        # otherwise every retry would wait behind the whole dataset and the run would end in a burst of them.
        queue: asyncio.PriorityQueue[tuple[int, int, Job]] = asyncio.PriorityQueue()
        order = itertools.count()
        fresh = iter(jobs)
        ahead = max(FEED_AHEAD, 2 * self.config.concurrency)
        room = asyncio.Event()  # set when a worker takes a prompt off the queue

        def retry(job: Job) -> None:
            queue.put_nowait((0, next(order), job))

        remaining = count
        all_done = asyncio.Event()
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []
        busy = 0  # workers inside attempt(): asking, or saving an answer

        async def drain() -> None:
            await asyncio.to_thread(self.journal.flush)
            # Answers still in flight land and are saved one by one, within the pod's grace period:
            # those still out after stop_wait_s are cut off (counted at their worst case, asked again
            # on restart), so the pod saves everything before its SIGKILL.
            give_up = loop.time() + self.config.stop_wait_s
            while busy and loop.time() < give_up:
                await asyncio.sleep(0.05)
            if busy:
                log.warning(
                    "%d requests still in flight after stop_wait_s=%g: stopping without them",
                    busy,
                    self.config.stop_wait_s,
                )
            all_done.set()

        def halt(reason: str) -> None:
            if not self.halted:
                self.halt(reason)
                loop.create_task(drain())

        async def feed() -> None:
            try:
                while not self.halted:
                    while queue.qsize() >= ahead:
                        room.clear()
                        await room.wait()
                    # Reading the dataset blocks, so it runs in a thread while answers keep arriving.
                    batch = await asyncio.to_thread(list, itertools.islice(fresh, ahead))
                    if not batch:
                        return
                    for job in batch:
                        queue.put_nowait((1, next(order), job))
            except Exception as error:  # a dataset that changed under the run ends it like a fatal error
                errors.append(error)
                halt(f"stopping: {error}")

        async def worker() -> None:
            nonlocal remaining, busy
            while not self.halted:
                _, _, job = await queue.get()
                room.set()
                if self.halted:
                    return
                busy += 1
                try:
                    delay = await self.attempt(job)
                except Exception as error:  # ends the run once the requests in flight are saved
                    errors.append(error)
                    halt(f"stopping: {error}")
                    return
                finally:
                    busy -= 1
                if delay is None:
                    remaining -= 1
                    if remaining == 0:
                        all_done.set()
                elif delay <= 0:
                    retry(job)
                else:
                    loop.call_later(delay, retry, job)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.config.concurrency, count) or 1)]
        feeder = asyncio.create_task(feed())
        if not count:
            all_done.set()
        with self.stopping_on_signals(lambda: loop.create_task(drain())):
            await all_done.wait()
        for task in [*workers, feeder]:
            task.cancel()
        await asyncio.gather(*workers, feeder, return_exceptions=True)
        await asyncio.to_thread(self.journal.flush)
        if errors:
            raise errors[0]
        self.raise_if_interrupted()
        await asyncio.to_thread(self.journal.compact)
        return self.tally


def settle(
    budget: Budget, worst: float, outcome: Answer | Retry | Failure | None, prices: tuple[float, float]
) -> float:
    """Settle a reserved request by how it ended: an answer at its usage, an error refunded, a request
    cut off in flight (`outcome` None) at its worst case, since it may have been billed in full."""
    if isinstance(outcome, Answer):
        return budget.settle(
            worst, outcome.prompt_tokens, outcome.completion_tokens, prices, outcome.usage_reported
        )
    return budget.refund(worst) if outcome is not None else budget.forfeit(worst)


def _estimate_tokens(messages: list[dict[str, str]]) -> int:
    # About 4 characters per token for English and 1.5 for Chinese; 3 is a middle that errs high for English.
    return sum(len(m["content"]) for m in messages) // 3 + 4 * len(messages)
