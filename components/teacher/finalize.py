"""The last step: every shard's answers become train.jsonl, test.jsonl, rejected.jsonl and summary.json.

Answers are read from runs/<run_id>/teacher/ in the store (all shards) for the prompts of the current
plan, in the dataset's order, so the output is the same however the shards ran. Answer length filters
and the judge's verdicts decide what is kept; all answers to one prompt land in the same split. Totals
come from the spend ledger: every request of every invocation of the run (retries, prompts never
answered and pods killed mid-run included); cached answers cost nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from components.common.config import to_dict
from components.common.records import Record, stable_hash, write_records
from components.common.redact import redact_config, redact_urls
from components.common.store import open_store
from components.teacher.config import Config
from components.teacher.export import write_sharegpt
from components.teacher.journal import Journal, Spend, spent_by_shard
from components.teacher.plan import plan
from components.teacher.providers import resolve_provider
from components.teacher.quality import split_keys

log = logging.getLogger(__name__)


def write_dataset(config: Config) -> dict[str, float]:
    """Merge every shard's entries into train.jsonl / test.jsonl / rejected.jsonl / summary.json; returns
    the dataset's metrics."""
    store = open_store(config.store_uri)
    provider = resolve_provider(config.provider, config.provider_config)
    stored = Journal(store.child(f"runs/{config.run_id}/teacher"), "").read_all()
    spent = sum(spent_by_shard(store.child(f"runs/{config.run_id}/teacher/spend")).values(), Spend())
    # Only the current plan's answers: a run_id reused with another dataset, filter or teacher setting
    # leaves answers under other keys, which stay in the store but not in this dataset. In plan order.
    keys = plan(config, provider.settings()).keys
    entries = {key: stored[key] for key in keys if key in stored}
    kept: list[Record] = []
    rejected: list[Record] = []
    logprobs: list[dict[str, Any]] = []
    counts = {"dropped": 0, "answer_too_short": 0, "answer_too_long": 0, "judge_rejected": 0}
    for entry in entries.values():
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
    if "sharegpt" in config.export:
        write_sharegpt(output, {split: [r for r in kept if r.split == split] for split in ("train", "test")})
    if logprobs:
        (output / "logprobs.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in logprobs), encoding="utf-8"
        )
    metrics = {
        "records": train + test,
        "train": train,
        "test": test,
        "rejected": len(rejected),
        "prompts_answered": len(entries),
        "prompts_unanswered": len(keys) - len(entries),
        "stale_answers": len(stored) - len(entries),
        **counts,
        "total_requests": spent.requests,
        "total_prompt_tokens": spent.prompt_tokens,
        "total_completion_tokens": spent.completion_tokens,
        "total_cost": spent.cost,
    }
    summary = {
        "metrics": metrics,
        "teacher": {
            "provider": provider.name,
            "model": provider.model,
            "base_url": redact_urls(provider.base_url) if provider.base_url else None,
            "params": provider.generation_params(),
        },
        "config": redact_config(to_dict(config)),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    log.info("wrote %d train and %d test records (%d rejected) to %s", train, test, len(rejected), output)
    return {k: float(v) for k, v in metrics.items()}


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
            # What the reader recorded of the prompt's origin: a raw-text chunk's id and prompt kind.
            **prompt.get("extra", {}),
            "key": entry["key"],
            "source": prompt.get("source", ""),
            "finish_reason": answer.get("finish_reason"),
            "cached": bool(entry.get("cached")),
        },
    )
