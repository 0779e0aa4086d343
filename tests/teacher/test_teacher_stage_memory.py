"""A large JSONL dataset goes through the teacher stage in memory that does not grow with its text: the plan
keeps each prompt's key, and a shard reads its prompts again from the file when it asks them."""

from __future__ import annotations

import asyncio
import json
import random
import tracemalloc

from components.common.records import read_records
from components.common.store import open_store
from components.teacher.journal import Journal, SpendLedger
from components.teacher.money import Budget
from components.teacher.readers import Prompt
from components.teacher.stage import _generate, finalize, make_teacher, run_shard
from components.teacher.worker_pool import Job, Tally
from pipelines.demo_teacher import start_teacher_server
from tests.teacher.conftest import teacher_config

PROMPTS, SHARDS = 4000, 400


def write_large_dataset(path, count: int) -> None:
    """`count` distinct prompts of about 8 KB each (about 33 MB in all)."""
    rng = random.Random(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    with path.open("w") as handle:
        for i in range(count):
            context = " ".join(rng.choice(words) for _ in range(1300))
            handle.write(json.dumps({"prompt": f"Reverse the letters of: word{i}\n\n{context}"}) + "\n")


def test_a_shard_and_finalize_hold_far_less_than_the_dataset(tmp_path):
    write_large_dataset(tmp_path / "prompts.jsonl", PROMPTS)
    size = (tmp_path / "prompts.jsonl").stat().st_size
    with start_teacher_server() as server:
        config = teacher_config(tmp_path, server.base_url, test_ratio=0.0)
        tracemalloc.start()
        try:
            shard = run_shard(config, 3, SHARDS)
            result = finalize(config)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Shard 3 asks the prompts at positions 3, 403, 803, ... of the plan, each once.
    asked = [f"Reverse the letters of: word{i}" for i in range(3, PROMPTS, SHARDS)]
    assert shard.metrics["shard_prompts"] == shard.metrics["answered"] == len(asked)
    assert sorted(p.split("\n")[0] for p in server.requests_by_prompt) == sorted(asked)
    records = read_records(tmp_path / "out" / "train.jsonl")
    assert [r.messages[0]["content"].split("\n")[0] for r in records] == asked
    assert result.metrics["prompts_unanswered"] == PROMPTS - len(asked)
    # Holding the prompts takes more than the file; keys and digests a sliver of it.
    assert peak < size / 10, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB dataset"


def test_the_generator_takes_prompts_only_as_its_workers_free_up(tmp_path):
    # The prompts come from a generator that notes, at each one taken, how many are taken but not yet
    # answered: the queue holds a bounded read-ahead, never the whole shard.
    count, most_ahead = 1500, 0
    tally = Tally()

    def prompts():
        nonlocal most_ahead
        for i in range(count):
            most_ahead = max(most_ahead, i - tally.answered)
            yield Job(f"key-{i}", Prompt([{"role": "user", "content": f"Reverse the letters of: w{i}"}]))

    with start_teacher_server() as server:
        config = teacher_config(tmp_path, server.base_url, concurrency=16)
        teacher = make_teacher(config)
        store = open_store(config.store_uri)
        journal = Journal(store.child("runs/r/teacher"), "shard-0")
        spend = SpendLedger(store.child("runs/r/teacher/spend"), 0, 1)
        asyncio.run(
            _generate(config, teacher, None, prompts(), count, journal, store, spend, Budget(), tally, 1)
        )
    assert tally.answered == count == len(server.requests_by_prompt)
    # Taking every prompt at once, as the generator did before, puts count - 1 ahead.
    assert most_ahead < count // 2, most_ahead
