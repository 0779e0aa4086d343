"""The teacher-data stage: plan the prompts, ask the teacher for those not yet answered, write the dataset.

    run(config)                          = run_shard(config, 0, 1) then finalize(config)
    run_shard(config, i, n)              asks for the prompts of shard i of n (one pod each in ParallelFor)
    finalize(config)                     merges every shard's answers, filters, judges' verdicts, splits

Every shard reads the whole dataset and applies the same dedup and filters, then keeps the prompts whose
position p satisfies p % n == i, so shards never overlap whatever pod runs them. The plan holds keys
only: a shard reads its prompts again from the dataset as its workers free up (plan.jobs). Answers land
in the store under runs/<run_id>/teacher/ as they arrive; a restarted shard (or a re-run with the same
run_id) skips every stored key, and the cache under cache/teacher/ answers repeated prompts of other runs
for free.
The provider's rpm/tpm limits are divided between the n shards, and so are the run's max_cost and
max_requests (limits.shard_allowance): each shard holds its share exactly, so together they hold the run's.

A shard (and `run`) ends with StageStopped, after saving everything, when fewer than min_answered_ratio of
its prompts have an answer, naming how many prompts failed for each cause; KFP's retry then resumes it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from components.common.errors import ConfigError, StageStopped
from components.common.lease import Lease
from components.common.openai_api import ApiTeacher
from components.common.providers import resolve_provider
from components.common.store import open_store
from components.teacher.batch import BatchRunner
from components.teacher.config import Config, ProviderConfig
from components.teacher.finalize import write_dataset
from components.teacher.journal import Cache, Journal, SpendLedger, shard_name, spent_by_shard
from components.teacher.judge import Judge
from components.teacher.limits import RateLimiter, shard_allowance
from components.teacher.money import Budget, Spend
from components.teacher.plan import Plan, jobs, plan
from components.teacher.progress import Progress
from components.teacher.worker_pool import PROBLEMS, Generator, Job, Tally

log = logging.getLogger(__name__)


@dataclass
class Result:
    output_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    stopped: str = ""


def make_teacher(config: Config):
    provider = resolve_provider(config.provider, config.provider_config)
    if provider.answers_from_dataset:
        from components.teacher.gold import GoldAnswers

        return GoldAnswers(provider)
    if provider.is_local:
        from components.teacher.local import LocalTeacher

        return LocalTeacher(provider)
    return ApiTeacher(provider, concurrency=config.concurrency)


def check_budget(config: Config, providers: dict[str, ProviderConfig | None]) -> None:
    """max_cost can hold only when every paid model has prices and a bound on its answers' length."""
    if config.max_cost is None:
        return
    for where, provider in providers.items():
        if provider is None:
            continue
        if not (provider.price_input_per_m or provider.price_output_per_m):
            raise ConfigError(
                f"max_cost: {where} {provider.name!r} has no prices, so nothing would count against "
                f"max_cost; set {where}.price_input_per_m and {where}.price_output_per_m, or remove max_cost"
            )
        if provider.max_tokens is None:
            raise ConfigError(
                f"max_cost: {where}.max_tokens is unset, so a request's cost has no bound; set it, or "
                "remove max_cost"
            )


@dataclass
class ShardOutcome:
    """What one shard invocation did: its metrics, and what the answered-ratio check needs (its prompts,
    how many have a usable answer, and how many prompts lack one for each cause)."""

    result: Result
    work: Plan
    prompts: int
    usable: int
    lost_causes: collections.Counter[str]


def run_shard(config: Config, shard_index: int = 0, num_shards: int = 1) -> Result:
    """Ask the teacher for shard `shard_index` of `num_shards`; answers go to the store as they arrive.
    Fails (StageStopped) when fewer than min_answered_ratio of the shard's prompts have an answer."""
    outcome = ask_shard(config, shard_index, num_shards)
    require_answered(config, outcome)
    return outcome.result


def ask_shard(config: Config, shard_index: int, num_shards: int) -> ShardOutcome:
    """run_shard without the answered-ratio check, which `run` makes after finalize."""
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


def _ask_shard(config: Config, shard_index: int, num_shards: int) -> ShardOutcome:
    teacher = make_teacher(config)
    provider = teacher.provider
    judge_provider = None
    if config.judge.enabled:
        judge_provider = resolve_provider(config.judge.provider or config.provider, config.provider_config)
    check_budget(config, {"provider": provider, "judge.provider": judge_provider})
    work = plan(config, teacher.settings)
    mine = work.keys[shard_index::num_shards]
    store = open_store(config.store_uri)
    journal = Journal(
        store.child(f"runs/{config.run_id}/teacher"),
        shard_name(shard_index, num_shards),
        config.checkpoint_records,
        config.checkpoint_seconds,
    )
    stored = journal.read_outcomes()
    pending = [key for key in mine if key not in stored]
    done = [stored[key] for key in mine if key in stored]
    del stored
    spend_store = store.child(f"runs/{config.run_id}/teacher/spend")
    budget = shard_budget(config, spent_by_shard(spend_store), shard_index, num_shards)
    spend = SpendLedger(spend_store, shard_index, num_shards)
    log.info(
        "shard %d/%d: %d prompts, %d already stored, %d to ask %s (%s)",
        shard_index,
        num_shards,
        len(mine),
        len(done),
        len(pending),
        provider.model,
        provider.base_url or "local",
    )
    tally = Tally()
    asyncio.run(
        _generate(
            config,
            teacher,
            judge_provider,
            jobs(config, teacher.settings, pending),
            len(pending),
            journal,
            store,
            spend,
            budget,
            tally,
            num_shards,
            pending_keys=set(pending) if config.mode == "batch" else set(),
        )
    )
    metrics = {
        "shard_prompts": len(mine),
        "resumed": len(done),
        "requests": budget.spent.requests,
        "answered": tally.answered,
        "cached": tally.cached,
        "dropped": tally.dropped,
        "failed": tally.failed,
        "unfinished": tally.unfinished,
        "retries": tally.retries,
        "batches": tally.batches,
        "skipped_lines": work.read.skipped_lines,
        "duplicates": work.filtered.duplicates,
        "near_duplicates": work.filtered.near_duplicates,
        "filtered_prompts": work.filtered.too_short + work.filtered.too_long,
        "prompt_tokens": budget.spent.prompt_tokens,
        "completion_tokens": budget.spent.completion_tokens,
        "cost": budget.spent.cost,
        "stopped_by_budget": float(bool(budget.stopped)),
    }
    if budget.stopped:
        log.warning("stopped early: %s; everything answered so far is kept", budget.stopped)
    lost = collections.Counter(tally.lost_causes)
    for reason in done:
        if reason:
            lost[f"dropped: {PROBLEMS[reason]}"] += 1
    return ShardOutcome(
        Result(config.output_dir, {k: float(v) for k, v in metrics.items()}, budget.stopped),
        work,
        len(mine),
        done.count("") + tally.usable,
        lost,
    )


def shard_budget(
    config: Config, spent: dict[tuple[int, int], Spend], shard_index: int, num_shards: int
) -> Budget:
    """This invocation's allowance: the shard's share of the run's limits, less what the run spent before
    (limits.shard_allowance)."""
    own = spent.get((shard_index, num_shards), Spend())
    others = sum((s for (_, count), s in spent.items() if count != num_shards), Spend())
    budget = Budget()
    if config.max_cost is not None:
        budget.max_cost = shard_allowance(
            float(config.max_cost), shard_index, num_shards, own.cost, others.cost
        )
    if config.max_requests is not None:
        budget.max_requests = shard_allowance(
            int(config.max_requests), shard_index, num_shards, own.requests, others.requests
        )
    return budget


def require_answered(config: Config, outcome: ShardOutcome) -> None:
    """Fail the stage, with the count of each cause, when too few prompts have an answer: a teacher that
    died, a proxy's HTML page, answers all cut by max_tokens or a dataset of bad lines must not pass as a
    finished run. A stop by the budget is the run's own limit, not a failure."""
    work = outcome.work
    if not work.keys:
        read, filtered = work.read, work.filtered
        raise StageStopped(
            f"the dataset gave no prompt to ask: {read.files} files read, {read.skipped_lines} lines "
            f"skipped as malformed, {filtered.duplicates + filtered.near_duplicates} duplicates and "
            f"{filtered.too_short + filtered.too_long} prompts outside min/max_prompt_chars left out; "
            "check dataset, dataset_format and the prompt filters"
        )
    if not outcome.prompts or outcome.result.stopped:
        return
    ratio = outcome.usable / outcome.prompts
    if ratio >= config.min_answered_ratio:
        return
    causes = ", ".join(f"{cause} {count}" for cause, count in outcome.lost_causes.most_common()) or "none"
    raise StageStopped(
        f"only {outcome.usable} of {outcome.prompts} prompts have an answer ({ratio:.1%}, below "
        f"min_answered_ratio={config.min_answered_ratio}); not answered: {causes}. What was answered is "
        "saved, and a retry resumes"
    )


def require_records(metrics: dict[str, float]) -> None:
    """Fail the stage when prompts were answered but the answer filters or the judge kept none: an
    empty dataset must not pass as a finished run, whatever left it empty."""
    if metrics["records"] or not metrics["prompts_answered"]:
        return
    causes = ("dropped", "answer_too_short", "answer_too_long", "judge_rejected", "hinted")
    counts = ", ".join(f"{cause} {metrics[cause]:.0f}" for cause in causes if metrics[cause])
    raise StageStopped(
        f"no record left: {metrics['prompts_answered']:.0f} prompts were answered and every answer was "
        f"filtered out ({counts}); check min_answer_chars, max_answer_chars and the judge"
    )


async def _generate(
    config: Config,
    teacher,
    judge_provider: ProviderConfig | None,
    pending: Iterator[Job],
    count: int,
    journal: Journal,
    store,
    spend: SpendLedger,
    budget: Budget,
    tally: Tally,
    num_shards: int,
    pending_keys: set[str] | None = None,
) -> Tally:
    """Ask for the `count` prompts of `pending` (mode: batch also needs their keys, `pending_keys`)."""
    provider = teacher.provider
    cache = Cache(store.child("cache/teacher")) if config.use_cache else None
    judge = None
    if judge_provider is not None:
        judge = Judge(ApiTeacher(judge_provider, concurrency=config.concurrency), config.judge.template)
    limiter = RateLimiter(
        provider.rpm / num_shards if provider.rpm else None,
        provider.tpm / num_shards if provider.tpm else None,
    )
    progress = Progress(count, budget, tally, config.log_every_s, config.progress_bar)
    ticker = asyncio.create_task(progress.log_periodically())
    generator = Generator(
        config, teacher, journal, cache, budget, spend, limiter, judge, tally, progress.update
    )
    try:
        if provider.is_local or provider.answers_from_dataset:
            return await teacher.generate_all(generator, list(pending))
        if config.mode == "batch":
            # The batches first; what they leave goes through the pool below (batch.on_failure: sync).
            batch_store = store.child(f"runs/{config.run_id}/teacher/batches/{shard_name(*spend.shard)}")
            batches = BatchRunner(config.batch, teacher, generator, batch_store)
            leftovers = await batches.run_stoppable(pending, pending_keys or set())
            tally.batches = batches.submitted
            pending, count = iter(leftovers), len(leftovers)
        return await generator.run(pending, count)
    finally:
        ticker.cancel()
        progress.close()
        await asyncio.to_thread(spend.close, budget)
        for client in (teacher, judge.teacher if judge else None):
            if isinstance(client, ApiTeacher):
                await client.aclose()


def finalize(config: Config) -> Result:
    """After every shard: merge their answers into the dataset in output_dir (finalize.py)."""
    return Result(config.output_dir, write_dataset(config))


def run(config: Config) -> Result:
    """One shard, then finalize: the whole stage in one process (the default, `shards: 1`). Like
    run_shard, fails after finalize when too few prompts have an answer."""
    shard = ask_shard(config, 0, 1)
    final = finalize(config)
    require_answered(config, shard)
    require_records(final.metrics)
    return Result(final.output_dir, {**shard.result.metrics, **final.metrics}, shard.result.stopped)
