"""The teacher-data stage: plan the prompts, ask the teacher for those not yet answered, write the dataset.

    run(config)                          = run_shard(config, 0, 1) then finalize(config)
    run_shard(config, i, n)              asks for the prompts of shard i of n (one pod each in ParallelFor)
    finalize(config)                     merges every shard's answers, filters, judges' verdicts, splits

Every shard reads the whole dataset and applies the same dedup and filters, then keeps the prompts whose
position p satisfies p % n == i, so shards never overlap whatever pod runs them. Answers land in the store
under runs/<run_id>/teacher/ as they arrive; a restarted shard (or a re-run with the same run_id) skips
every stored key, and the cache under cache/teacher/ answers repeated prompts of other runs for free.
The provider's rpm/tpm limits are divided between the n shards.
"""

from __future__ import annotations

import asyncio
import logging
import math

from components.common.errors import ConfigError
from components.common.lease import Lease
from components.common.store import open_store
from components.teacher.api import ApiTeacher
from components.teacher.config import Config
from components.teacher.finalize import Result, finalize
from components.teacher.generate import Generator, Job, Tally
from components.teacher.journal import Cache, Journal, shard_name
from components.teacher.judge import Judge
from components.teacher.limits import Budget, RateLimiter
from components.teacher.plan import plan
from components.teacher.progress import Progress
from components.teacher.providers import resolve_provider

log = logging.getLogger(__name__)


def make_teacher(config: Config):
    provider = resolve_provider(config.provider, config.provider_config)
    if provider.is_local:
        from components.teacher.local import LocalTeacher

        return LocalTeacher(provider)
    return ApiTeacher(provider, concurrency=config.concurrency)


def run_shard(config: Config, shard_index: int = 0, num_shards: int = 1) -> Result:
    """Ask the teacher for shard `shard_index` of `num_shards`; answers go to the store as they arrive."""
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard_index: {shard_index} must be in [0, num_shards={num_shards})")
    # One live process per shard: a second run with the same run_id would pay for every prompt again.
    shard = shard_name(shard_index, num_shards)
    lease = Lease(
        open_store(config.store_uri).child(f"runs/{config.run_id}/teacher"),
        f"leases/{shard}.json",
        f"teacher shard {shard_index}/{num_shards} of run {config.run_id!r}",
    )
    with lease.held():
        return _ask_shard(config, shard_index, num_shards)


def _ask_shard(config: Config, shard_index: int, num_shards: int) -> Result:
    teacher = make_teacher(config)
    provider = teacher.provider
    work = plan(config, teacher.settings)
    mine = [job for position, job in enumerate(work.jobs) if position % num_shards == shard_index]
    store = open_store(config.store_uri)
    journal = Journal(
        store.child(f"runs/{config.run_id}/teacher"),
        shard_name(shard_index, num_shards),
        config.checkpoint_records,
        config.checkpoint_seconds,
    )
    stored = journal.read_all()
    pending = [job for job in mine if job.key not in stored]
    prices = (provider.price_input_per_m or 0.0, provider.price_output_per_m or 0.0)
    # Each shard gets its share of the limits. max_cost covers the whole run, so a resumed shard starts
    # from what it already spent; max_requests counts this invocation's requests.
    mine_keys = {job.key for job in mine}
    spent_cost = sum(e.get("cost", 0.0) for e in stored.values() if e["key"] in mine_keys)
    budget = Budget(
        *prices,
        max_cost=config.max_cost / num_shards if config.max_cost is not None else None,
        max_requests=math.ceil(config.max_requests / num_shards) if config.max_requests is not None else None,
        cost=spent_cost,
    )
    log.info(
        "shard %d/%d: %d prompts, %d already stored, %d to ask %s (%s)",
        shard_index,
        num_shards,
        len(mine),
        len(mine) - len(pending),
        len(pending),
        provider.model,
        provider.base_url or "local",
    )
    tally = asyncio.run(_generate(config, teacher, pending, journal, store, budget, num_shards))
    metrics = {
        "shard_prompts": len(mine),
        "resumed": len(mine) - len(pending),
        "requests": budget.requests,
        "answered": tally.answered,
        "cached": tally.cached,
        "dropped": tally.dropped,
        "failed": tally.failed,
        "unfinished": tally.unfinished,
        "retries": tally.retries,
        "skipped_lines": work.read.skipped_lines,
        "duplicates": work.filtered.duplicates,
        "near_duplicates": work.filtered.near_duplicates,
        "filtered_prompts": work.filtered.too_short + work.filtered.too_long,
        "prompt_tokens": budget.prompt_tokens,
        "completion_tokens": budget.completion_tokens,
        "cost": budget.cost - spent_cost,
        "stopped_by_budget": float(bool(budget.stopped)),
    }
    if budget.stopped:
        log.warning("stopped early: %s; everything answered so far is kept", budget.stopped)
    return Result(config.output_dir, {k: float(v) for k, v in metrics.items()}, budget.stopped)


async def _generate(
    config: Config, teacher, pending: list[Job], journal: Journal, store, budget: Budget, num_shards: int
) -> Tally:
    provider = teacher.provider
    cache = Cache(store.child("cache/teacher")) if config.use_cache else None
    judge = None
    if config.judge.enabled:
        judge_provider = resolve_provider(config.judge.provider or config.provider, config.provider_config)
        judge = Judge(ApiTeacher(judge_provider, concurrency=config.concurrency), config.judge.template)
    limiter = RateLimiter(
        provider.rpm / num_shards if provider.rpm else None,
        provider.tpm / num_shards if provider.tpm else None,
    )
    progress = Progress(len(pending), budget, config.log_every_s, config.progress_bar)
    ticker = asyncio.create_task(progress.log_periodically())
    generator = Generator(config, teacher, journal, cache, budget, limiter, judge, progress.update)
    try:
        if provider.is_local:
            return await teacher.generate_all(generator, pending)
        return await generator.run(pending)
    finally:
        ticker.cancel()
        progress.close()
        for client in (teacher, judge.teacher if judge else None):
            if isinstance(client, ApiTeacher):
                await client.aclose()


def run(config: Config) -> Result:
    """One shard, then finalize: the whole stage in one process (the default, `shards: 1`)."""
    shard = run_shard(config, 0, 1)
    final = finalize(config)
    return Result(final.output_dir, {**shard.metrics, **final.metrics}, shard.stopped)
