"""Never pay twice: every answer is saved under the run's prefix as it arrives, and in a cross-run cache.

Layout in the artifact store:

    runs/<run_id>/teacher/shard-00000-of-00004/part-000000-<random>.jsonl   one entry per line
    runs/<run_id>/teacher/spend/shard-00000-of-00004/<invocation>.json      what one invocation spent
    cache/teacher/<key[:2]>/<key>.json                                     one entry per key, with a
                                                                           digest bound to its request

An entry is one prompt's outcome: {"key", "status": "ok"|"dropped", "prompt": {...}, "answers": [...],
"usage": {...}, "requests": n, "cached": bool, "judge": {...}}. `key` is the record id of the prompt
(hash of the prompt messages and the teacher settings), so the same prompt asked of the same teacher with
the same parameters has the same key in every run: the journal makes a restarted task skip what it has,
and the cache turns a repeated run into zero API calls.

Parts are immutable objects (S3 has no append): buffered entries are written as a new part every
`checkpoint_records` entries or `checkpoint_seconds`, whichever comes first, and when the shard ends,
when its parts are merged into a few (`compact`). The
cache entry is written as soon as an answer arrives, so with the cache on (the default) a killed pod loses
no paid answer at all; without it, at most one checkpoint's worth.

What the run spends is journaled apart from the answers (`SpendLedger`), before each request leaves, so
the totals count every attempt of every invocation, the retries of a prompt never answered and the
requests of a pod killed mid-run included.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from components.common.openai_api import Choice
from components.common.store import ArtifactStore
from components.teacher.money import Budget, Spend

log = logging.getLogger(__name__)

_OUTCOME = re.compile(r'\{"key": "([0-9a-f]+)", "status": "(ok|dropped)", "reason": "([a-z]*)"')
COMPACT_ENTRIES = 20_000  # entries per merged part: a few tens of MB of text at most


@dataclass
class PromptFields:
    """What finalize needs of the prompt, stored with the answer so it never rereads the dataset."""

    messages: list[dict[str, str]]
    reference: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Entry:
    """One prompt's outcome, as journaled and cached: one JSON object beginning with key, status and
    reason (`line_outcome` reads them from a line's start)."""

    key: str
    status: str  # "ok" or "dropped"
    reason: str  # why it was dropped ("length", "empty"), "" when ok
    prompt: PromptFields
    answers: list[Choice]
    usage: dict[str, int] = field(default_factory=dict)
    cost: float = (
        0.0  # what this answer cost when it was paid for (with the judge's verdict, when there is one)
    )
    requests: int = 0
    cached: bool = False
    teacher: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "key": self.key,
            "status": self.status,
            "reason": self.reason,
            "prompt": vars(self.prompt),
            "answers": [vars(choice) for choice in self.answers],
            "usage": self.usage,
            "cost": self.cost,
            "requests": self.requests,
            "cached": self.cached,
            "teacher": self.teacher,
        }
        return data if self.judge is None else {**data, "judge": self.judge}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        """An entry as stored (entries of earlier versions lack some fields and answer fields)."""
        known = {f.name for f in fields(Choice)}
        return cls(
            key=data["key"],
            status=data["status"],
            reason=data.get("reason", ""),
            prompt=PromptFields(**data.get("prompt") or {"messages": []}),
            answers=[Choice(**{k: v for k, v in answer.items() if k in known}) for answer in data["answers"]],
            usage=data.get("usage") or {},
            cost=data.get("cost", 0.0),
            requests=data.get("requests", 0),
            cached=bool(data.get("cached")),
            teacher=data.get("teacher") or {},
            judge=data.get("judge"),
        )


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


class Journal:
    """The run-scoped record of finished prompts, written in parts, read back a part at a time."""

    def __init__(
        self, store: ArtifactStore, shard: str, checkpoint_records: int = 32, checkpoint_seconds: float = 10.0
    ):
        self.store = store
        self.shard = shard
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        self._buffer: list[Entry] = []
        self._last_flush = time.monotonic()
        self._parts = len(self.store.list(shard))

    def part_keys(self) -> list[str]:
        """The part objects of every shard of this run, in the order they were written per shard."""
        return [key for key in self.store.list() if key.endswith(".jsonl") and "/part-" in key]

    def lines(self) -> Iterator[str]:
        """Every entry stored by any shard of this run, as its JSON line, a part at a time (a key may
        come again: the later one wins)."""
        for key in self.part_keys():
            for line in self.store.read_text(key).splitlines():
                if line.strip():
                    yield line

    def read_outcomes(self) -> dict[str, str]:
        """The key of every stored entry and how it ended: "" for an answer, else the reason it was
        dropped. Only that, not the answers: a resume of a million prompts holds a million keys. Entries
        begin with key, status and reason (make_entry's order), read from the line's start without
        parsing the answers; any other line is parsed whole."""
        outcomes = {}
        for line in self.lines():
            key, status, reason = line_outcome(line)
            outcomes[key] = "" if status == "ok" else sys.intern(reason)
        return outcomes

    def add(self, entry: Entry) -> bool:
        """Buffer `entry`; True when a checkpoint is due: the caller then writes `take_buffer()` as a part."""
        self._buffer.append(entry)
        return (
            len(self._buffer) >= self.checkpoint_records
            or time.monotonic() - self._last_flush >= self.checkpoint_seconds
        )

    def take_buffer(self) -> list[Entry]:
        """The entries not yet written, removed from the buffer (written by `write_part`)."""
        batch, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        return batch

    def write_part(self, batch: list[Entry]) -> None:
        if not batch:
            return
        self._write_lines([json.dumps(e.to_dict(), ensure_ascii=False) for e in batch])

    def flush(self) -> None:
        self.write_part(self.take_buffer())

    def compact(self) -> None:
        """Merge this shard's parts into few, of at most COMPACT_ENTRIES entries each, so a later resume
        or finalize reads a few objects, not thousands, and none of them must fit a whole shard in
        memory. The merged parts are written before the old ones are deleted: a kill in between leaves
        duplicates, which every reader folds by key."""
        parts = [k for k in self.store.list(self.shard) if "/part-" in k]
        if len(parts) <= 1:
            return
        lines: list[str] = []
        for key in parts:
            lines.extend(line for line in self.store.read_text(key).splitlines() if line.strip())
            while len(lines) >= COMPACT_ENTRIES:
                self._write_lines(lines[:COMPACT_ENTRIES])
                del lines[:COMPACT_ENTRIES]
        self._write_lines(lines)
        for key in parts:
            self.store.delete(key)

    def _write_lines(self, lines: list[str]) -> None:
        if lines:
            # The random suffix keeps a part of a killed pod and one of its replacement from colliding.
            name = f"{self.shard}/part-{self._parts:06d}-{uuid.uuid4().hex[:8]}.jsonl"
            self._parts += 1
            self.store.write_text(name, "".join(line + "\n" for line in lines))


def line_outcome(line: str) -> tuple[str, str, str]:
    """(key, status, reason) of a journal line, read from its start when it is laid out as make_entry
    writes it, else parsed whole."""
    found = _OUTCOME.match(line)
    if found:
        key, status, reason = found.groups()
        return key, status, reason
    entry = json.loads(line)
    return entry["key"], entry["status"], entry.get("reason", "")


class Cache:
    """Answers shared by every run using the same store, addressed by key."""

    def __init__(self, store: ArtifactStore):
        self.store = store

    @staticmethod
    def _name(key: str) -> str:
        return f"{key[:2]}/{key}.json"

    def get(self, key: str, messages: list[dict[str, str]]) -> Entry | None:
        """The entry stored for `key`, asked with `messages`; None when there is none, or when it is not
        the one this stage stored for that request (edited, moved from another key, unreadable): that
        is logged, and the prompt asked again."""
        name = self._name(key)
        try:
            text = self.store.read_text(name)
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(text)
            intact = isinstance(entry, dict) and entry.get("digest") == entry_digest(entry, key, messages)
        except (ValueError, TypeError, AttributeError):
            intact = False
        if not intact:
            log.warning("cache entry %s does not match its request (edited or moved); asking again", name)
            return None
        try:
            return Entry.from_dict(entry)
        except (KeyError, TypeError):
            log.warning("cache entry %s is not an entry of this stage; asking again", name)
            return None

    def put(self, entry: Entry) -> None:
        kept = {k: v for k, v in entry.to_dict().items() if k not in ("cached", "requests", "judge")}
        kept["digest"] = entry_digest(kept, entry.key, entry.prompt.messages)
        self.store.write_text(self._name(entry.key), json.dumps(kept, ensure_ascii=False))


def entry_digest(entry: dict[str, Any], key: str, messages: list[dict[str, str]]) -> str:
    """A digest of what a cache entry serves (its answers, usage, status and teacher) bound to the
    request it answers (its key and prompt messages), so an entry is served only to that request."""
    served = {name: entry.get(name) for name in ("answers", "usage", "status", "reason", "teacher")}
    payload = json.dumps(
        {**served, "key": key, "messages": messages},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def spent_by_shard(store: ArtifactStore) -> dict[tuple[int, int], Spend]:
    """What every invocation of the run spent (the ledger objects under `store`), summed by shard
    (index, count)."""
    totals: dict[tuple[int, int], Spend] = {}
    for key in store.list():
        if key.endswith(".json"):
            data = json.loads(store.read_text(key))
            spend = Spend(
                data["requests"],
                data["prompt_tokens"],
                data["completion_tokens"],
                data["cost"] + data["in_flight_cost"],
            )
            shard = (data["shard_index"], data["num_shards"])
            totals[shard] = totals.get(shard, Spend()) + spend
    return totals


class SpendLedger:
    """Every request of the run, recorded in the store before it is sent.

    Each invocation (a pod, a retry of it, a re-run) owns one object, spend/<shard>/<invocation>.json,
    rewritten whole with its running totals; objects are never appended to, so a kill at any moment
    leaves the last complete write. `record` returns once a write taken after the call is stored; the
    requests reserved meanwhile by other workers share that write (a group commit), so the store sees
    one write per burst of requests, not one per request. Writes have a thread of their own: queued
    behind the cache's reads and writes in the default pool, they held every request back. A killed
    invocation's requests in flight are counted at their worst-case cost: what they really cost is
    unknown.
    """

    def __init__(self, store: ArtifactStore, shard_index: int, num_shards: int):
        self.store = store
        self.shard = (shard_index, num_shards)
        self.name = f"{shard_name(shard_index, num_shards)}/{uuid.uuid4().hex}.json"
        self._lock = asyncio.Lock()
        self._asked = 0
        self._written = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spend-ledger")

    async def record(self, budget: Budget) -> None:
        """Return once the budget's state as of this call (its reservations included) is stored."""
        self._asked += 1
        wanted = self._asked
        async with self._lock:
            if self._written >= wanted:
                return
            covered = self._asked
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._store_state, self._state(budget))
            self._written = covered

    def close(self, budget: Budget) -> None:
        """The last write, once every request has settled: real costs replace the worst cases."""
        self._writer.shutdown()
        self._store_state(self._state(budget))

    def _state(self, budget: Budget) -> dict[str, Any] | None:
        if budget.spent.requests == 0:
            return None  # nothing sent: a fully cached or stopped invocation leaves no object
        return {
            "shard_index": self.shard[0],
            "num_shards": self.shard[1],
            **asdict(budget.spent),
            "in_flight_cost": budget.held,
            "in_flight": budget.in_flight,
        }

    def _store_state(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.store.write_text(self.name, json.dumps(state))
