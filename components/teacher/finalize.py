"""The last step: every shard's answers become train.jsonl, test.jsonl, rejected.jsonl, summary.json and,
when asked for, logprobs.parquet (components/common/logprobs_file.py).

Answers are read from runs/<run_id>/teacher/ in the store (all shards) for the prompts of the current
plan, in the dataset's order, so the output is the same however the shards ran. Answer length filters
and the judge's verdicts decide what is kept; all answers to one prompt land in the same split. Totals
come from the spend ledger: every request of every invocation of the run (retries, prompts never
answered and pods killed mid-run included); cached answers cost nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from components.common.config import to_dict
from components.common.logprobs_file import JSONL_NAME, PARQUET_NAME, LogprobsWriter
from components.common.openai_api import Choice
from components.common.providers import resolve_provider
from components.common.records import Record, stable_hash
from components.common.redact import redact_config, redact_urls
from components.common.store import open_store
from components.teacher.config import Config
from components.teacher.export import write_alpaca, write_dpo_pairs, write_sharegpt
from components.teacher.journal import Entry, Journal, line_outcome, spent_by_shard
from components.teacher.money import Spend
from components.teacher.plan import plan
from components.teacher.quality import split_keys

log = logging.getLogger(__name__)


def write_dataset(config: Config) -> dict[str, float]:
    """Merge every shard's entries into train.jsonl / test.jsonl / rejected.jsonl / summary.json; returns
    the dataset's metrics."""
    store = open_store(config.store_uri)
    provider = resolve_provider(config.provider, config.provider_config)
    journal = Journal(store.child(f"runs/{config.run_id}/teacher"), "")
    spent = sum(spent_by_shard(store.child(f"runs/{config.run_id}/teacher/spend")).values(), Spend())
    # Only the current plan's answers: a run_id reused with another dataset, filter or teacher setting
    # leaves answers under other keys, which stay in the store but not in this dataset. In plan order.
    keys = plan(config, provider.settings()).keys
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    counts = {"dropped": 0, "answer_too_short": 0, "answer_too_long": 0, "judge_rejected": 0, "hinted": 0}
    # An earlier run's logprobs into this folder would otherwise stand for records they do not belong to.
    for name in (PARQUET_NAME, JSONL_NAME):
        (output / name).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="teacher-finalize-") as scratch:
        ordered = PlanOrder(keys, Path(scratch))
        stale = ordered.sort(journal.lines())
        # All answers to one prompt go to the same split, so the test set never shares a prompt with train:
        # a first pass finds the prompts that keep an answer, the second writes the records.
        kept_keys = (
            entry.key
            for entry in ordered.entries()
            if entry.status == "ok" and "kept" in (answer_outcome(entry, a, config) for a in entry.answers)
        )
        test_keys = split_keys(kept_keys, config.test_ratio, config.seed)
        answered = train = test = rejected = logprobs_dropped = without_logprobs = hinted = hint_accepted = 0
        with (
            (output / "train.jsonl").open("w", encoding="utf-8") as train_file,
            (output / "test.jsonl").open("w", encoding="utf-8") as test_file,
            (output / "rejected.jsonl").open("w", encoding="utf-8") as rejected_file,
            (output / "hinted.jsonl").open("w", encoding="utf-8") as hinted_file,
            LogprobsWriter(output / PARQUET_NAME) as logprobs_file,
        ):
            for entry in ordered.entries():
                answered += 1
                if entry.status != "ok":
                    counts["dropped"] += 1
                    continue
                hint = (entry.judge or {}).get("hint")
                hinted += hint is not None
                hint_accepted += hint == "accepted"
                for index, answer in enumerate(entry.answers):
                    outcome = answer_outcome(entry, answer, config)
                    if outcome != "kept":
                        counts[outcome] += 1
                    if outcome not in ("kept", "judge_rejected", "hinted"):
                        continue
                    record = build_record(entry, index, answer, config.think_in_answer)
                    if outcome != "kept":
                        (rejected_file if outcome == "judge_rejected" else hinted_file).write(
                            record.to_json() + "\n"
                        )
                        rejected += outcome == "judge_rejected"
                        continue
                    if entry.key in test_keys:
                        record.split, test = "test", test + 1
                        test_file.write(record.to_json() + "\n")
                    else:
                        record.split, train = "train", train + 1
                        train_file.write(record.to_json() + "\n")
                    logprobs_dropped += answer.logprobs_dropped
                    if answer.logprobs:
                        logprobs_dropped += logprobs_file.add(record.id, answer.logprobs)
                    # A teacher asked for logprobs may answer without (a local model's text that its
                    # tokens do not spell, an empty answer): such a record trains on cross-entropy only.
                    without_logprobs += provider.logprobs and not answer.logprobs
        if (output / "hinted.jsonl").stat().st_size == 0:
            (output / "hinted.jsonl").unlink()
    if "sharegpt" in config.export:
        write_sharegpt(output, ("train", "test"))
    if "alpaca" in config.export:
        write_alpaca(output, ("train", "test"))
    if "dpo" in config.export:
        write_dpo_pairs(output)
    metrics = {
        "records": train + test,
        "train": train,
        "test": test,
        "rejected": rejected,
        # judge.hint_rejected: prompts asked again with the gold answer as a hint, and those then accepted
        "judge_hinted": hinted,
        "judge_hint_accepted": hint_accepted,
        "prompts_answered": answered,
        "prompts_unanswered": len(keys) - answered,
        "stale_answers": stale,
        "logprob_positions_dropped": logprobs_dropped,
        "records_without_logprobs": without_logprobs,
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
    log.info("wrote %d train and %d test records (%d rejected) to %s", train, test, rejected, output)
    return {k: float(v) for k, v in metrics.items()}


def answer_outcome(entry: Entry, answer: Choice, config: Config) -> str:
    """ "kept", or why an answer of an answered prompt is not: answer_too_short, answer_too_long or
    judge_rejected (it goes to rejected.jsonl), or hinted (accepted after the hint, kept apart in
    hinted.jsonl by judge.hinted_answers: dpo)."""
    length = len(answer.content)
    if length < config.min_answer_chars:
        return "answer_too_short"
    if config.max_answer_chars is not None and length > config.max_answer_chars:
        return "answer_too_long"
    if entry.judge is not None and entry.judge.get("verdict") != "accept":
        return "judge_rejected"
    if (entry.judge or {}).get("hint") == "accepted" and config.judge.hinted_answers == "dpo":
        return "hinted"
    return "kept"


class PlanOrder:
    """The journal's entries put in plan order on local disk, a bucket of positions at a time, so no
    step holds more than one bucket of answers: entries go to BUCKETS files by plan position, and each
    file is read back, folded by key (the later entry wins, as in the journal) and sorted on its own."""

    BUCKET_ENTRIES = 20_000

    def __init__(self, keys: list[str], folder: Path):
        self.position = {key: index for index, key in enumerate(keys)}
        self.buckets = max(1, -(-len(keys) // self.BUCKET_ENTRIES))
        self.size = max(1, -(-len(keys) // self.buckets))
        self.folder = folder

    def _bucket(self, number: int) -> Path:
        return self.folder / f"bucket-{number:05d}.jsonl"

    def sort(self, lines: Iterator[str]) -> int:
        """Spread the journal's `lines` over the bucket files, as they are; returns how many keys were
        not in the plan."""
        files = [self._bucket(i).open("w", encoding="utf-8") for i in range(self.buckets)]
        stale: set[str] = set()
        try:
            for line in lines:
                key = line_outcome(line)[0]
                position = self.position.get(key)
                if position is None:
                    stale.add(key)
                    continue
                files[position // self.size].write(f"{position}\t{line}\n")
        finally:
            for handle in files:
                handle.close()
        return len(stale)

    def entries(self) -> Iterator[Entry]:
        for number in range(self.buckets):
            folded: dict[int, str] = {}
            with self._bucket(number).open(encoding="utf-8") as handle:
                for line in handle:
                    position, _, text = line.partition("\t")
                    folded[int(position)] = text
            for position in sorted(folded):
                yield Entry.from_dict(json.loads(folded[position]))


def build_record(entry: Entry, index: int, answer: Choice, think_in_answer: bool) -> Record:
    prompt = entry.prompt
    content = answer.content
    if think_in_answer and answer.reasoning:
        content = f"<think>\n{answer.reasoning.strip()}\n</think>\n\n{content}"
    usage = entry.usage
    n = len(entry.answers)
    return Record(
        id=entry.key if index == 0 else stable_hash({"key": entry.key, "choice": index}),
        messages=[*prompt.messages, {"role": "assistant", "content": content}],
        reasoning=answer.reasoning,
        reference=prompt.reference,
        teacher=entry.teacher,
        # A request's completion tokens are shared by its n answers.
        usage={"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"] // n},
        judge=entry.judge,
        extra={
            # What the reader recorded of the prompt's origin: a raw-text chunk's id and prompt kind.
            **prompt.extra,
            "key": entry.key,
            "source": prompt.source,
            "finish_reason": answer.finish_reason,
            "cached": entry.cached,
        },
    )
