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
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.config import to_dict
from components.common.records import Record, record_id, stable_hash, write_records
from components.common.store import open_store
from components.teacher.api import ApiTeacher
from components.teacher.config import Config
from components.teacher.generate import Generator, Job, Tally
from components.teacher.journal import Cache, Journal, shard_name
from components.teacher.judge import Judge
from components.teacher.limits import Budget, RateLimiter
from components.teacher.progress import Progress
from components.teacher.providers import resolve_provider
from components.teacher.quality import FilterCounts, select_prompts, split_keys
from components.teacher.readers import ReadStats, read_prompts

log = logging.getLogger(__name__)


@dataclass
class Result:
    output_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    stopped: str = ""


@dataclass
class Plan:
    jobs: list[Job]
    read: ReadStats
    filtered: FilterCounts


def make_teacher(config: Config):
    provider = resolve_provider(config.provider, config.provider_config)
    if provider.is_local:
        from components.teacher.local import LocalTeacher

        return LocalTeacher(provider)
    return ApiTeacher(provider, concurrency=config.concurrency)


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


def run_shard(config: Config, shard_index: int = 0, num_shards: int = 1) -> Result:
    """Ask the teacher for shard `shard_index` of `num_shards`; answers go to the store as they arrive."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} must be in [0, num_shards={num_shards})")
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
    spent_cost = sum(
        _cost(e["usage"], prices) for e in stored.values() if e["key"] in mine_keys and not e.get("cached")
    )
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


def finalize(config: Config) -> Result:
    """Merge every shard's entries into train.jsonl / test.jsonl / rejected.jsonl / summary.json."""
    store = open_store(config.store_uri)
    entries = Journal(store.child(f"runs/{config.run_id}/teacher"), "").read_all()
    kept: list[Record] = []
    rejected: list[Record] = []
    logprobs: list[dict[str, Any]] = []
    counts = {"dropped": 0, "answer_too_short": 0, "answer_too_long": 0, "judge_rejected": 0}
    spent = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    for entry in sorted(entries.values(), key=lambda e: e["key"]):
        if not entry.get("cached"):
            for name in ("prompt_tokens", "completion_tokens"):
                spent[name] += entry["usage"][name]
            spent["requests"] += entry.get("requests", 0)
        if entry["status"] != "ok":
            counts["dropped"] += 1
            continue
        for index, answer in enumerate(entry["answers"]):
            record = build_record(entry, index, answer, config.think_in_answer)
            length = len(answer["content"])
            if length < config.min_answer_chars:
                counts["answer_too_short"] += 1
            elif config.max_answer_chars is not None and length > config.max_answer_chars:
                counts["answer_too_long"] += 1
            elif record.judge is not None and record.judge.get("verdict") != "accept":
                counts["judge_rejected"] += 1
                rejected.append(record)
            else:
                kept.append(record)
                if answer.get("logprobs"):
                    logprobs.append({"id": record.id, "logprobs": answer["logprobs"]})
    # All answers to one prompt go to the same split, so the test set never shares a prompt with train.
    test_keys = split_keys((r.extra["key"] for r in kept), config.test_ratio, config.seed)
    for record in kept:
        record.split = "test" if record.extra["key"] in test_keys else "train"
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    train = write_records(output / "train.jsonl", (r for r in kept if r.split == "train"))
    test = write_records(output / "test.jsonl", (r for r in kept if r.split == "test"))
    write_records(output / "rejected.jsonl", rejected)
    if logprobs:
        (output / "logprobs.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in logprobs), encoding="utf-8"
        )
    provider = resolve_provider(config.provider, config.provider_config)
    cost = _cost(spent, (provider.price_input_per_m or 0.0, provider.price_output_per_m or 0.0))
    metrics = {
        "records": train + test,
        "train": train,
        "test": test,
        "rejected": len(rejected),
        "prompts_answered": len(entries),
        **counts,
        "total_requests": spent["requests"],
        "total_prompt_tokens": spent["prompt_tokens"],
        "total_completion_tokens": spent["completion_tokens"],
        "total_cost": cost,
    }
    summary = {
        "metrics": metrics,
        "teacher": {
            "provider": provider.name,
            "model": provider.model,
            "base_url": provider.base_url,
            "params": provider.generation_params(),
        },
        "config": _redacted(to_dict(config)),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    log.info("wrote %d train and %d test records (%d rejected) to %s", train, test, len(rejected), output)
    return Result(str(output), {k: float(v) for k, v in metrics.items()})


def build_record(entry: dict[str, Any], index: int, answer: dict[str, Any], think_in_answer: bool) -> Record:
    prompt = entry["prompt"]
    content = answer["content"]
    if think_in_answer and answer.get("reasoning"):
        content = f"<think>\n{answer['reasoning'].strip()}\n</think>\n\n{content}"
    usage = entry["usage"]
    n = len(entry["answers"])
    return Record(
        id=entry["key"] if index == 0 else stable_hash({"key": entry["key"], "choice": index}),
        messages=[*prompt["messages"], {"role": "assistant", "content": content}],
        reasoning=answer.get("reasoning"),
        reference=prompt.get("reference"),
        teacher=entry["teacher"],
        # A request's completion tokens are shared by its n answers.
        usage={"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"] // n},
        judge=entry.get("judge"),
        extra={
            "key": entry["key"],
            "source": prompt.get("source", ""),
            "finish_reason": answer.get("finish_reason"),
            "cached": bool(entry.get("cached")),
        },
    )


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    """The config for summary.json, with the values of credential-like headers masked."""
    for section in (config["provider"], (config["judge"].get("provider") or {})):
        headers = section.get("extra_headers") or {}
        for name in headers:
            if any(word in name.lower() for word in ("auth", "key", "token", "secret")):
                headers[name] = "***"
    return config


def _cost(usage: dict[str, int], prices: tuple[float, float]) -> float:
    # cost = tokens / 1e6 * price per million tokens, for input and output separately
    return (usage["prompt_tokens"] * prices[0] + usage["completion_tokens"] * prices[1]) / 1e6


def run(config: Config) -> Result:
    """One shard, then finalize: the whole stage in one process (the default, `shards: 1`)."""
    shard = run_shard(config, 0, 1)
    final = finalize(config)
    return Result(final.output_dir, {**shard.metrics, **final.metrics}, shard.stopped)
