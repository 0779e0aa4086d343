"""`mode: batch`: the prompts go to the provider's Batch API (OpenAI's, DashScope's compatible mode).

    files.create(JSONL of requests, purpose="batch")
    batches.create(input_file_id, "/v1/chat/completions", completion_window, metadata={"kfp_distill": name})
    batches.retrieve(id), again after poll_s, poll_s * 1.5, ... up to poll_max_s, until the batch ends
    files.content(output_file_id) and files.content(error_file_id), read a line at a time

Each batch leaves two objects in the store, beside the journal:

    runs/<run_id>/teacher/batches/<shard>/<name>.json        its record: state, file id, batch id
    runs/<run_id>/teacher/batches/<shard>/<name>.jobs.jsonl  its prompts (key and prompt fields)

Never submitted twice: the record is stored (state "submitting") before the batch is created, and the
batch carries the record's name as metadata; a pod killed between the create and storing the batch id
finds its batch by that name (batches.list) on restart instead of creating another. The batch id is
stored before any wait. A restarted pod takes up every record not yet collected, and asks for no prompt
of theirs again.

Nothing lost: answers go through the synchronous path's steps (Generator.answered: answer policies,
cache, judge, journal), and a record is marked collected only once its answers are in the journal; a
kill before that reads the provider's output file again. Items a batch did not answer (failed,
expired, cancelled, or retried by on_empty/on_length) follow batch.on_failure.

Money: each request is reserved against the budget at its worst-case batch price before its file is
uploaded, and settled to its real cost (the provider's usage at provider.batch_price_factor times the
prices) when its batch is collected. A batch collected by a later invocation than the one that
submitted it stays counted at its worst case, as any request in flight of a killed pod.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai

from components.common.errors import InputError
from components.common.openai_api import ApiTeacher, parse_completion
from components.common.store import ArtifactStore
from components.teacher.config import BatchConfig
from components.teacher.money import provider_prices, worst_cost
from components.teacher.readers import Prompt
from components.teacher.worker_pool import Generator, Job, prompt_fields

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
ENDED = ("completed", "failed", "expired", "cancelled")
METADATA_KEY = "kfp_distill"


@dataclass
class BatchRecord:
    """One batch as the store knows it. `invocation` is the process that reserved its requests."""

    name: str
    requests: int
    state: str = "submitting"  # then "submitted", then "collected"
    file_id: str | None = None
    batch_id: str | None = None
    invocation: str = ""
    created_at: float = 0.0
    worst_costs: dict[str, float] = field(default_factory=dict)


def request_line(key: str, body: dict[str, Any]) -> bytes:
    """One line of a batch input file: the chat completion request for prompt `key`."""
    line = {"custom_id": custom_id(key, body), "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")


def custom_id(key: str, body: dict[str, Any]) -> str:
    """The prompt's key and a digest of the request sent for it: an output line is taken as the answer
    to a job only when both match what this stage would send for that job's stored prompt."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return f"{key}-{hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:16]}"


def parse_line(text: str) -> dict[str, Any] | None:
    """An output or error file's line as a JSON object, or None for anything else (bad JSON, an array)."""
    try:
        line = json.loads(text)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def split_reply(line: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the chat.completion body, "") for an answered line of an output or error file, else (None,
    cause): the HTTP status the provider gave the request, or its error code."""
    response = line.get("response")
    response = response if isinstance(response, dict) else {}
    error = line.get("error")
    status = response.get("status_code")
    if status == 200 and not error and isinstance(response.get("body"), dict):
        return response["body"], ""
    if error:
        code = error.get("code") if isinstance(error, dict) else None
        return None, f"batch {code if isinstance(code, str) and code else 'error'}"
    return None, f"batch {status if isinstance(status, int) else 'malformed'}"


@dataclass
class Unanswered:
    """Why a job of a batch got no answer, and whether it may have been billed all the same (a line
    that came back paid but unreadable): those are settled at their worst case."""

    cause: str
    maybe_paid: bool = False


@dataclass
class Replies:
    """What one batch's output and error files said: the keys answered, why the others were not, and
    how many lines were refused (not JSON objects, or a custom_id not matching its request)."""

    answered: set[str] = field(default_factory=set)
    unanswered: dict[str, Unanswered] = field(default_factory=dict)
    refused: int = 0


class BatchRunner:
    """One shard's prompts through the Batch API; what a batch leaves unanswered goes by on_failure."""

    def __init__(
        self, settings: BatchConfig, teacher: ApiTeacher, generator: Generator, store: ArtifactStore
    ):
        self.settings = settings
        self.teacher = teacher
        self.generator = generator
        self.store = store  # runs/<run_id>/teacher/batches/<shard>
        self.invocation = uuid.uuid4().hex
        factor = teacher.provider.batch_price_factor
        price_in, price_out = provider_prices(teacher.provider)
        self.prices = (price_in * factor, price_out * factor)
        self.submitted = 0  # batches this invocation created

    @property
    def client(self) -> openai.AsyncOpenAI:
        return self.teacher.client

    async def run(self, jobs: Iterator[Job], pending: set[str]) -> list[Job]:
        """Answer `jobs` (the shard's prompts of the keys `pending`) by batches: first those of batches an
        earlier invocation submitted, then new ones. Returns the jobs left for synchronous calls."""
        generator = self.generator
        records = await asyncio.to_thread(self.load_records)
        awaited = [r for r in records if r.state != "collected"]
        if awaited:
            log.info("taking up %d batches submitted before: no new batch for their prompts", len(awaited))
        taken = await asyncio.to_thread(self.keys_of, awaited)
        fresh = (job for job in jobs if job.key not in taken)
        leftovers: list[Job] = []
        resubmits = 0
        source: Iterator[Job] = fresh
        held: list[Job] = []  # a job the budget could not take yet: first in the next round
        while True:
            submitted = await self.submit(_chain(held, source), held)
            await asyncio.gather(*(self.collect(r, pending, leftovers) for r in [*awaited, *submitted]))
            awaited = []
            if generator.halted or generator.budget.stopped:
                break
            if held:
                continue  # the budget blocked on batches in flight, which are settled now
            if self.settings.on_failure == "batch" and leftovers and resubmits < self.settings.max_resubmits:
                resubmits += 1
                log.info(
                    "submitting the %d items no batch answered again (round %d)", len(leftovers), resubmits
                )
                source, leftovers = iter(leftovers), []
                continue
            break
        for _ in held:
            generator.tally.lost("unfinished", generator.budget.stopped or generator.halted)
        await asyncio.to_thread(generator.journal.flush)
        if self.settings.on_failure == "sync":
            return leftovers
        for job in leftovers:
            generator.tally.lost("failed", job.failure)
        return []

    async def run_stoppable(self, jobs: Iterator[Job], pending: set[str]) -> list[Job]:
        """`run`, ended by SIGTERM or Ctrl-C at once, whatever it waits for: the batches go on at the
        provider and a restart takes them up."""
        generator = self.generator
        task = asyncio.ensure_future(self.run(jobs, pending))
        with generator.stopping_on_signals(task.cancel):
            try:
                leftovers = await task
            except asyncio.CancelledError:
                if not generator.interrupted:
                    raise
                leftovers = []
        await asyncio.to_thread(generator.journal.flush)
        generator.raise_if_interrupted()
        return leftovers

    # Submitting

    async def submit(self, jobs: Iterator[Job], held: list[Job]) -> list[BatchRecord]:
        """Batches for `jobs` within the file limits and the budget, each recorded before it is created.
        A job the budget cannot take while batches are in flight goes to `held`."""
        generator, limits = self.generator, self.settings
        submitted: list[BatchRecord] = []
        chunk: list[tuple[Job, bytes, float]] = []
        size = 0
        for job in jobs:
            if generator.halted:
                held.append(job)
                break
            cached = await generator.lookup_cache(job)
            if cached is not None:
                await generator.finish(job, cached, new_answer=False)
                continue
            line = request_line(job.key, self.teacher.request_body(job.prompt.messages))
            if len(line) > limits.max_bytes_per_file:
                raise InputError(
                    f"the request for {job.prompt.source} is {len(line)} bytes, more than "
                    f"batch.max_bytes_per_file={limits.max_bytes_per_file}; raise it or shorten the prompt"
                )
            if chunk and (
                len(chunk) >= limits.max_requests_per_file or size + len(line) > limits.max_bytes_per_file
            ):
                submitted.append(await self.submit_chunk(chunk))
                chunk, size = [], 0
            provider = self.teacher.provider
            worst = worst_cost(job.prompt.messages, provider.max_tokens, provider.n, self.prices)
            if not generator.budget.reserve_now(worst):
                if not generator.budget.stopped:
                    held.append(job)  # the batches in flight hold the rest of the budget until collected
                else:
                    generator.tally.lost("unfinished", generator.budget.stopped)
                break
            chunk.append((job, line, worst))
            size += len(line)
        if chunk:
            submitted.append(await self.submit_chunk(chunk))
        return submitted

    async def submit_chunk(self, chunk: list[tuple[Job, bytes, float]]) -> BatchRecord:
        await self.generator.ensure_ready()
        record = BatchRecord(
            name=f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}",
            requests=len(chunk),
            invocation=self.invocation,
            created_at=time.time(),
            worst_costs={job.key: worst for job, _, worst in chunk},
        )
        prompts = "".join(
            json.dumps({"key": job.key, "prompt": vars(prompt_fields(job))}, ensure_ascii=False) + "\n"
            for job, _, _ in chunk
        )
        await asyncio.to_thread(self.store.write_text, f"{record.name}.jobs.jsonl", prompts)
        await asyncio.to_thread(self.save, record)
        # The requests count as sent from here: a kill from now on leaves them in flight at worst case.
        await self.generator.spend.record(self.generator.budget)
        await self.create(record, b"".join(line for _, line, _ in chunk), look_first=False)
        self.submitted += 1
        log.info("submitted batch %s (%s): %d requests", record.batch_id, record.name, record.requests)
        return record

    async def create(self, record: BatchRecord, data: bytes | None, look_first: bool) -> None:
        """Upload the record's input file (when not uploaded yet) and create its batch, unless
        (`look_first`, for a record an earlier pod left in "submitting") the provider already holds a
        batch of that name; the batch id is stored before returning."""
        try:
            if record.file_id is None:
                if data is None:
                    data = await asyncio.to_thread(self.input_file, record)
                upload = (f"{record.name}.jsonl", data)
                record.file_id = (await self.client.files.create(file=upload, purpose="batch")).id
                await asyncio.to_thread(self.save, record)
            batch = await self.find(record) if look_first else None
            if batch is None:
                batch = await self.client.batches.create(
                    input_file_id=record.file_id,
                    endpoint=ENDPOINT,
                    completion_window=self.settings.completion_window,
                    metadata={METADATA_KEY: record.name},
                )
        except openai.APIStatusError as error:
            raise InputError(
                f"mode: batch: the Batch API at {self.teacher.provider.base_url} refused batch "
                f"{record.name}: {error.status_code} {error.message}; check that the provider serves "
                "/v1/files and /v1/batches for this model, or use mode: sync"
            ) from None
        record.batch_id, record.state = batch.id, "submitted"
        await asyncio.to_thread(self.save, record)

    async def find(self, record: BatchRecord):
        """The provider's batch created for `record`, if any. The list comes newest first, so it is read
        only back to a little before the record was stored."""
        async for batch in self.client.batches.list(limit=100):
            if (batch.metadata or {}).get(METADATA_KEY) == record.name:
                return batch
            if batch.created_at < record.created_at - 600:
                return None
        return None

    def input_file(self, record: BatchRecord) -> bytes:
        """A record's input file made again from its stored prompts (a pod killed before the upload)."""
        lines = []
        for entry in self.read_jobs(record):
            lines.append(request_line(entry["key"], self.teacher.request_body(entry["prompt"]["messages"])))
        return b"".join(lines)

    # Waiting and collecting

    async def collect(self, record: BatchRecord, pending: set[str], leftovers: list[Job]) -> None:
        """Wait for the record's batch, then put its answers through the answer path and the items it
        did not answer in `leftovers`; the record is marked collected once the journal holds them."""
        generator = self.generator
        if record.state == "submitting":
            await generator.ensure_ready()
            await self.create(record, None, look_first=True)
        batch = await self.wait(record.batch_id)
        jobs = {
            entry["key"]: Job(entry["key"], Prompt(**entry["prompt"]))
            for entry in await asyncio.to_thread(self.read_jobs, record)
            if entry["key"] in pending
        }
        own = record.invocation == self.invocation
        replies = Replies()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                await self.read_replies(file_id, jobs, record, own, replies)
        # Refused lines may have answered (and billed) any job that no line names.
        default = Unanswered(f"batch {batch.status}", maybe_paid=replies.refused > 0)
        for key, job in jobs.items():
            if key in replies.answered:
                continue
            why = replies.unanswered.get(key, default)
            job.failure = why.cause
            if own:  # a batch bills only what it answered
                worst = record.worst_costs.get(key, 0.0)
                budget = generator.budget
                job.spent.cost += budget.forfeit(worst) if why.maybe_paid else budget.refund(worst)
        left = [job for job in jobs.values() if job.failure]
        leftovers.extend(left)
        await asyncio.to_thread(generator.journal.flush)
        record.state = "collected"
        await asyncio.to_thread(self.save, record)
        log.info(
            "batch %s %s: %d answered, %d left for on_failure=%s",
            record.batch_id,
            batch.status,
            len(jobs) - len(left),
            len(left),
            self.settings.on_failure,
        )

    async def wait(self, batch_id: str):
        """The batch once it has ended, polling with a growing interval; a failed poll is tried again."""
        interval = self.settings.poll_s
        while True:
            try:
                batch = await self.client.batches.retrieve(batch_id)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
                log.warning("polling batch %s failed (%s); polling again", batch_id, type(error).__name__)
            else:
                if batch.status in ENDED:
                    return batch
            await asyncio.sleep(interval)
            interval = min(self.settings.poll_max_s, interval * 1.5)

    async def read_replies(
        self,
        file_id: str,
        jobs: dict[str, Job],
        record: BatchRecord,
        own: bool,
        replies: Replies,
    ) -> None:
        """Each line of an output or error file: an answer goes through the answer path
        (Generator.answered) and its key to `replies.answered`; a line without one notes why,
        unless an answer for that key comes too (a successful line wins over an error line, in either
        order). A line that is not a JSON object, or whose custom_id does not match the request sent
        for its key, is counted and answers nothing."""
        generator = self.generator
        expected = {
            custom_id(key, self.teacher.request_body(job.prompt.messages)): job for key, job in jobs.items()
        }
        async with self.client.files.with_streaming_response.content(file_id) as response:
            async for text in response.iter_lines():
                if not text.strip():
                    continue
                line = parse_line(text)
                if line is None:
                    replies.refused += 1
                    log.warning(
                        "batch %s: a line of file %s is not a JSON object; skipped", record.batch_id, file_id
                    )
                    continue
                job = self.match(line, expected, jobs, record, replies)
                if job is None or job.key in replies.answered:
                    continue  # not a prompt still pending here, or a second answer for one
                body, cause = split_reply(line)
                answer = None
                if body is not None:
                    try:
                        answer = parse_completion(body, self.teacher.provider.top_logprobs)
                    except (KeyError, TypeError, AttributeError, ValueError):
                        replies.unanswered[job.key] = Unanswered("batch malformed", maybe_paid=True)
                        continue
                if answer is None:
                    replies.unanswered.setdefault(job.key, Unanswered(cause))
                    continue
                replies.answered.add(job.key)
                job.failure = ""
                if own:
                    job.spent.cost += generator.budget.settle(
                        record.worst_costs.get(job.key, 0.0),
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        self.prices,
                        answer.usage_reported,
                    )
                job.spent.requests += 1
                if await generator.answered(job, answer) is not None:
                    job.failure = "answer retried by on_empty/on_length"

    def match(
        self,
        line: dict[str, Any],
        expected: dict[str, Job],
        jobs: dict[str, Job],
        record: BatchRecord,
        replies: Replies,
    ) -> Job | None:
        """The job a line answers: its custom_id must be the one sent for that job's request. A line
        naming a pending key with another request's digest (a swapped or forged custom_id) is refused,
        and that job left to on_failure."""
        named = line.get("custom_id")
        if not isinstance(named, str):
            return None
        job = expected.get(named)
        key = named.partition("-")[0]
        if job is None and key in jobs:
            replies.refused += 1
            log.warning(
                "batch %s: custom_id %s does not match the request sent for %s; its reply is refused",
                record.batch_id,
                named[:80],
                key,
            )
            replies.unanswered[key] = Unanswered("batch custom_id mismatch", maybe_paid=True)
        return job

    # The store

    def save(self, record: BatchRecord) -> None:
        self.store.write_text(f"{record.name}.json", json.dumps(vars(record)))

    def load_records(self) -> list[BatchRecord]:
        return [
            BatchRecord(**json.loads(self.store.read_text(key)))
            for key in sorted(self.store.list())
            if key.endswith(".json")
        ]

    def read_jobs(self, record: BatchRecord) -> list[dict[str, Any]]:
        text = self.store.read_text(f"{record.name}.jobs.jsonl")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def keys_of(self, records: list[BatchRecord]) -> set[str]:
        return {entry["key"] for record in records for entry in self.read_jobs(record)}


def _chain(first: list[Job], rest: Iterator[Job]) -> Iterator[Job]:
    """The jobs of `first` (emptied as they are taken), then those of `rest`. Not `yield from`: closing
    this generator when a round stops early would close `rest`, and the next round would find it empty."""
    while first:
        yield first.pop(0)
    for job in rest:  # noqa: UP028 (see above)
        yield job
