"""mode: batch against a loopback Batch API: every prompt answered once, at the batch price, whatever
fails or is killed in between."""

from __future__ import annotations

import json
import os
import signal

import pytest

from components.common.errors import ConfigError, InputError
from components.common.records import read_records
from components.common.store import open_store
from components.teacher.stage import finalize, run, run_shard
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from tests.teacher.batch_teacher import BatchFaults, start_batch_teacher
from tests.teacher.conftest import (
    batch_settings,
    demo_prompts,
    start_teacher_cli,
    teacher_config,
    wait_until,
)


def records(tmp_path) -> list:
    out = tmp_path / "out"
    return read_records(out / "train.jsonl") + read_records(out / "test.jsonl")


def batch_records(tmp_path) -> list[dict]:
    store = open_store(str(tmp_path / "store")).child("runs/batch/teacher/batches")
    return [json.loads(store.read_text(k)) for k in store.list() if k.endswith(".json")]


def test_batches_answer_every_prompt_at_the_batch_price(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 25)
    with start_batch_teacher() as server:
        result = run(
            teacher_config(tmp_path, "", **{**batch_settings(tmp_path, server, max_requests_per_file=10)})
        )
        assert [b["request_counts"]["total"] for b in server.created] == [10, 10, 5]
        assert server.teacher.total_requests == 0  # no synchronous request
    assert sorted(server.lines_by_prompt) == sorted(demo_prompts(25))
    assert set(server.lines_by_prompt.values()) == {1}
    kept = records(tmp_path)
    assert len(kept) == 25 and all(r.reasoning for r in kept)
    assert all(r.messages[-1]["content"] == r.messages[-2]["content"].split(": ")[1][::-1] for r in kept)
    metrics = result.metrics
    assert metrics["batches"] == 3 and metrics["answered"] == 25 and metrics["requests"] == 25
    full_price = (metrics["prompt_tokens"] * 1.0 + metrics["completion_tokens"] * 2.0) / 1e6
    assert metrics["cost"] == pytest.approx(full_price / 2) and metrics["total_cost"] == pytest.approx(
        full_price / 2
    )
    assert {r["state"] for r in batch_records(tmp_path)} == {"collected"}


def test_batch_files_stay_within_the_byte_limit(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 30)
    with start_batch_teacher() as server:
        run(teacher_config(tmp_path, "", **batch_settings(tmp_path, server, max_bytes_per_file=2048)))
        sizes = [server.teacher.files[b["input_file_id"]]["meta"]["bytes"] for b in server.created]
    assert len(sizes) > 1 and max(sizes) <= 2048
    assert len(records(tmp_path)) == 30


def test_failed_items_fall_back_to_synchronous_requests(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 20)
    with start_batch_teacher(BatchFaults(fail_every=4)) as server:
        result = run(teacher_config(tmp_path, "", **batch_settings(tmp_path, server)))
        asked_alone = set(server.requests_by_prompt)
    assert len(server.created) == 1
    assert len(asked_alone) == 5 and not asked_alone & set(server.lines_by_prompt)
    assert len(records(tmp_path)) == 20 and result.metrics["answered"] == 20


def test_expired_items_go_into_a_new_batch(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 20)
    with start_batch_teacher(BatchFaults(expire_after=12)) as server:
        run(teacher_config(tmp_path, "", **batch_settings(tmp_path, server, on_failure="batch")))
        assert [b["status"] for b in server.created] == ["expired", "completed"]
        assert server.created[1]["request_counts"]["total"] == 8
        assert server.teacher.total_requests == 0
    assert set(server.lines_by_prompt.values()) == {1} and len(server.lines_by_prompt) == 20
    assert len(records(tmp_path)) == 20


def test_failed_items_are_left_unanswered_when_dropped(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 20)
    with start_batch_teacher(BatchFaults(fail_every=4)) as server:
        settings = {**batch_settings(tmp_path, server, on_failure="drop"), "min_answered_ratio": 0.5}
        result = run(teacher_config(tmp_path, "", **settings))
        assert server.teacher.total_requests == 0
    assert result.metrics["failed"] == 5 and len(records(tmp_path)) == 15


@pytest.mark.parametrize("kill_at", ["waiting", "creating"])
def test_sigkill_between_submit_and_done_submits_nothing_twice(tmp_path, kill_at):
    """Killed while its batch runs (its id stored), or while the create is on the wire (the batch exists
    at the provider, its id never came back): the restart takes up that same batch."""
    write_demo_dataset(tmp_path / "prompts.jsonl", 30)
    faults = BatchFaults(hold=True, stall_create=kill_at == "creating")
    with start_batch_teacher(faults) as server:
        settings = batch_settings(tmp_path, server, max_requests_per_file=20)
        process = start_teacher_cli(tmp_path, settings)
        state = "submitted" if kill_at == "waiting" else "submitting"

        def stopped_at_its_state() -> bool:
            found = batch_records(tmp_path)
            return len(server.created) >= 1 and any(r["state"] == state for r in found)

        wait_until(stopped_at_its_state, f"no batch record in state {state}", process)
        if kill_at == "waiting":
            wait_until(lambda: len(server.created) == 2, "the second batch was never created", process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        created_before = len(server.created)
        faults.stall_create = False
        server.release()

        result = run(teacher_config(tmp_path, "", **settings))

        assert len(server.created) == 2 and created_before == (2 if kill_at == "waiting" else 1)
        assert server.teacher.total_requests == 0
        assert result.metrics["total_requests"] == 30  # the killed pod's reservations, counted once
    assert sorted(server.lines_by_prompt) == sorted(demo_prompts(30))
    assert set(server.lines_by_prompt.values()) == {1}
    assert len({r.id for r in records(tmp_path)}) == 30


def test_batch_mode_needs_an_api_provider(tmp_path):
    with pytest.raises(ConfigError, match="mode: batch needs an API provider"):
        teacher_config(tmp_path, "", mode="batch", provider={"name": "local", "model": "x", "base_url": None})


def test_shards_submit_their_own_batches_and_their_ledgers_add_up(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 21)
    with start_batch_teacher() as server:
        config = teacher_config(tmp_path, "", **batch_settings(tmp_path, server))
        shards = [run_shard(config, index, 2) for index in range(2)]
        final = finalize(config)
        assert [b["request_counts"]["total"] for b in server.created] == [11, 10]
    assert set(server.lines_by_prompt.values()) == {1} and len(server.lines_by_prompt) == 21
    metrics = final.metrics
    assert metrics["records"] == 21
    assert metrics["total_requests"] == sum(s.metrics["requests"] for s in shards) == 21
    assert metrics["total_cost"] == pytest.approx(sum(s.metrics["cost"] for s in shards))
    assert metrics["total_completion_tokens"] == sum(s.metrics["completion_tokens"] for s in shards)


def test_a_provider_without_the_batch_api_is_named_in_one_line(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    with start_teacher_server() as server:
        config = teacher_config(tmp_path, "", **batch_settings(tmp_path, server))
        with pytest.raises(InputError, match=r"mode: batch: the Batch API at .* refused batch .*: 404"):
            run(config)
        assert server.teacher.total_requests == 0


def test_batch_answers_go_through_the_judge_and_a_rerun_takes_them_from_the_cache(tmp_path):
    rows = [
        {"instruction": "Reverse the letters of: abc", "output": "cba"},
        {"instruction": "Reverse the letters of: dog", "output": "dog"},  # a wrong reference: rejected
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with start_batch_teacher() as server:
        settings = {**batch_settings(tmp_path, server), "judge": {"enabled": True}, "test_ratio": 0.0}
        result = run(teacher_config(tmp_path, "", **settings))
        judged = sum(n for p, n in server.requests_by_prompt.items() if "Candidate answer" in p)
        rerun = run(teacher_config(tmp_path, "", **{**settings, "run_id": "again"}))
        assert len(server.created) == 1  # the rerun's answers all came from the cache
    assert judged == 2 and result.metrics["judge_rejected"] == 1 and result.metrics["records"] == 1
    assert rerun.metrics["cached"] == 2 and rerun.metrics["batches"] == 0


def test_max_cost_holds_in_batches_and_settled_batches_free_the_rest(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 40)
    with start_batch_teacher() as server:
        settings = batch_settings(tmp_path, server)
        settings["provider"]["max_tokens"] = 50
        settings.update(max_cost=0.0008, min_answered_ratio=0.0)
        result = run(teacher_config(tmp_path, "", **settings))
        sizes = [b["request_counts"]["total"] for b in server.created]
    metrics = result.metrics
    assert metrics["stopped_by_budget"] == 1 and metrics["total_cost"] <= 0.0008
    # The first batch holds the budget at its worst case; once it is settled at its real cost, more fit.
    assert len(sizes) > 1 and metrics["answered"] == sum(sizes) > sizes[0]
    assert set(server.lines_by_prompt.values()) == {1}
