"""What to ask: every prompt of the dataset that survives dedup and the prompt filters, keyed by record id.

The same config gives the same plan, in the same order, wherever it runs: every shard plans alike and
takes its share by position, and finalize uses the plan to keep exactly the current prompts' answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.common.records import record_id
from components.teacher.config import Config
from components.teacher.generate import Job
from components.teacher.quality import FilterCounts, select_prompts
from components.teacher.readers import ReadStats, read_prompts


@dataclass
class Plan:
    jobs: list[Job]
    read: ReadStats
    filtered: FilterCounts


def plan(config: Config, settings: dict[str, Any]) -> Plan:
    """Every prompt of the dataset that survives dedup and filters, keyed by its record id."""
    read = ReadStats()
    prompts = read_prompts(config, read)
    filtered = FilterCounts()
    prompts = select_prompts(
        prompts,
        config.dedup,
        config.near_dup_threshold,
        config.min_prompt_chars,
        config.max_prompt_chars,
        filtered,
    )
    if config.max_samples is not None:
        prompts = prompts[: config.max_samples]
    jobs: dict[str, Job] = {}
    for prompt in prompts:
        key = record_id(prompt.messages, settings)
        jobs.setdefault(key, Job(key, prompt))
    return Plan(list(jobs.values()), read, filtered)
