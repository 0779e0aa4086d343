"""What to ask: every prompt of the dataset that survives dedup and the prompt filters, keyed by record id.

The same config gives the same plan, in the same order, wherever it runs: every shard plans alike and
takes its share by position, and finalize uses the plan to keep exactly the current prompts' answers.

The plan holds only the prompts' keys, so a dataset of any size is planned in memory that grows with its
number of prompts, not with their text (near-dup detection, when on, also keeps the kept prompts' shingle
sets). The prompts themselves are read again, a line at a time, when they are asked (`jobs`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from components.common.errors import InputError
from components.common.records import record_id
from components.teacher.config import Config
from components.teacher.generate import Job
from components.teacher.quality import FilterCounts, select_prompts
from components.teacher.readers import ReadStats, read_prompts


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
    # Every prompt goes through the filters even past max_samples, so their counts cover the whole dataset.
    for position, prompt in enumerate(prompts):
        if config.max_samples is None or position < config.max_samples:
            keys.setdefault(record_id(prompt.messages, settings), None)
    return Plan(list(keys), read, filtered)


def jobs(config: Config, settings: dict[str, Any], wanted: Collection[str]) -> Iterator[Job]:
    """The prompts of the `wanted` keys, read again from the dataset a line at a time, in the plan's order.

    A key's first prompt in the dataset is the one the plan kept: the filters decide on the messages alone,
    and the messages make the key."""
    remaining = set(wanted)
    if not remaining:
        return
    for prompt in read_prompts(config, ReadStats(quiet=True)):
        key = record_id(prompt.messages, settings)
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
