"""What to ask: every prompt of the dataset that survives dedup and the prompt filters, keyed by record id.

The same config gives the same plan, in the same order, wherever it runs: every shard plans alike and
takes its share by position, and finalize uses the plan to keep exactly the current prompts' answers.

The plan holds only the prompts' keys, so a dataset of any size is planned in memory that grows with its
number of prompts, not with their text (near-dup detection, when on, also keeps the kept prompts' shingle
sets). The prompts themselves are read again, a line at a time, when they are asked (`jobs`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from components.common.errors import InputError
from components.teacher.config import Config
from components.teacher.quality import FilterCounts, select_prompts
from components.teacher.readers import ReadStats, read_prompts
from components.teacher.worker_pool import Job


class RecordIds:
    """record_id(messages, settings) for one teacher's settings, serialised once rather than per prompt:
    the canonical JSON of {"messages": m, "teacher": s} is that of m and of s between fixed keys (sorted,
    "messages" before "teacher"), so the digest is the same; a resume hashes every prompt of the
    dataset before its first request."""

    def __init__(self, settings: dict[str, Any]):
        self.suffix = ',"teacher":' + _canonical(settings) + "}"

    def __call__(self, messages: list[dict[str, str]]) -> str:
        text = '{"messages":' + _canonical(messages) + self.suffix
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Plan:
    keys: list[str]
    read: ReadStats
    filtered: FilterCounts


def plan(config: Config, settings: dict[str, Any]) -> Plan:
    """The keys of every prompt of the dataset that survives dedup and filters, in the dataset's order."""
    read = ReadStats()
    filtered = FilterCounts()
    prompts = select_prompts(
        read_prompts(config, read),
        config.dedup,
        config.near_dup_threshold,
        config.min_prompt_chars,
        config.max_prompt_chars,
        filtered,
    )
    keys: dict[str, None] = {}
    record_id = RecordIds(settings)
    # Every prompt goes through the filters even past max_samples, so their counts cover the whole dataset.
    for position, prompt in enumerate(prompts):
        if config.max_samples is None or position < config.max_samples:
            keys.setdefault(record_id(prompt.messages), None)
    return Plan(list(keys), read, filtered)


def jobs(config: Config, settings: dict[str, Any], wanted: Collection[str]) -> Iterator[Job]:
    """The prompts of the `wanted` keys, read again from the dataset a line at a time, in the plan's order.

    A key's first prompt in the dataset is the one the plan kept: the filters decide on the messages alone,
    and the messages make the key."""
    remaining = set(wanted)
    if not remaining:
        return
    record_id = RecordIds(settings)
    for prompt in read_prompts(config, ReadStats(quiet=True)):
        key = record_id(prompt.messages)
        if key in remaining:
            remaining.discard(key)
            yield Job(key, prompt)
            if not remaining:
                return
    if remaining:
        raise InputError(
            f"dataset {config.dataset}: {len(remaining)} planned prompts were gone when read again; the "
            "dataset changed during the run, so keep it unchanged while a run uses it and restart"
        )
