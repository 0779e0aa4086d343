"""Never pay twice: a stage killed mid-run (SIGKILL) and restarted asks for every prompt exactly once."""

from __future__ import annotations

import json
import os
import signal

import pytest

from components.common.config import from_dict
from components.common.records import read_records
from components.common.store import open_store
from components.teacher import Config
from components.teacher.stage import run
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from tests.teacher.conftest import (
    start_teacher_cli,
    stored_answers,
    teacher_config,
    teacher_settings,
    wait_until,
)
from tests.teacher.faulty_teacher import Faults, start_faulty_teacher


def saved_answers(store_uri: str, saved_by: str) -> int:
    store = open_store(store_uri)
    if saved_by == "cache":
        return len(store.list("cache/teacher"))
    return stored_answers(store_uri, "killed")


# journal: no cache, a checkpoint after every answer. cache: checkpoints too rare to happen before the
# kill, so only the cache entry written as each answer arrives can save it.
SAVED_BY = {
    "journal": {"use_cache": False, "checkpoint_records": 1},
    "cache": {"use_cache": True, "checkpoint_records": 1000, "checkpoint_seconds": 600.0},
}


@pytest.mark.parametrize("saved_by", list(SAVED_BY))
def test_sigkill_mid_run_then_restart_asks_each_prompt_once(tmp_path, store_uri, saved_by):
    write_demo_dataset(tmp_path / "prompts.jsonl", 60, seed=11)
    # After 25 answers the server holds every further request, so the kill lands mid-run at a known point;
    # requests held when the client dies were never taken up, like requests queued at a provider.
    with start_faulty_teacher(latency_s=0.01, faults=Faults(stall_after=25)) as server:
        settings = teacher_settings(
            tmp_path,
            server.base_url,
            store_uri=store_uri,
            run_id="killed",
            concurrency=8,
            **SAVED_BY[saved_by],
        )
        process = start_teacher_cli(tmp_path, settings)
        wait_until(
            lambda: saved_answers(store_uri, saved_by) >= 25, "the stage never stored 25 answers", process
        )
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert not (tmp_path / "out" / "train.jsonl").exists()
        # The server must notice the dead client's connections before it lets held requests through.
        wait_until(lambda: server.held == 0, "held requests outlived their client")
        server.release()

        result = run(from_dict(Config, settings))

        assert result.metrics["requests"] == 35
        if saved_by == "journal":
            assert result.metrics["resumed"] == 25
        else:
            assert result.metrics["cached"] == 25
        assert len(server.requests_by_prompt) == 60
        assert set(server.requests_by_prompt.values()) == {1}
    records = read_records(tmp_path / "out" / "train.jsonl") + read_records(tmp_path / "out" / "test.jsonl")
    assert len(records) == 60 and len({r.id for r in records}) == 60


def test_a_finished_shard_keeps_one_part_that_a_rerun_resumes_from(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 10)
    with start_teacher_server() as server:
        config = teacher_config(
            tmp_path, server.base_url, run_id="compact", use_cache=False, checkpoint_records=1
        )
        run(config)
        parts = list((tmp_path / "store" / "runs" / "compact" / "teacher").rglob("part-*.jsonl"))
        assert len(parts) == 1 and len(parts[0].read_text().splitlines()) == 10
        assert run(config).metrics["resumed"] == 10
        assert sum(server.requests_by_prompt.values()) == 10


def test_the_resume_scan_reads_each_entrys_outcome_whatever_its_layout(tmp_path):
    from components.common.openai_api import Choice
    from components.teacher.journal import Journal
    from components.teacher.readers import Prompt
    from components.teacher.worker_pool import Job, make_entry

    journal = Journal(open_store(str(tmp_path)), "shard-00000-of-00001")
    prompt = Prompt([{"role": "user", "content": 'a "quoted" prompt'}])
    answered = make_entry(Job("a1", prompt), [Choice("yes")], "ok", "", {"model": "m"})
    cut = make_entry(Job("b2", prompt), [Choice("ye", finish_reason="length")], "dropped", "length", {})
    journal.write_part([answered, cut])
    reordered = {"status": "dropped", "key": "c3", "reason": "empty", "answers": []}
    journal.store.write_text("shard-00000-of-00001/part-999999-reordered.jsonl", json.dumps(reordered) + "\n")
    assert journal.read_outcomes() == {"a1": "", "b2": "length", "c3": "empty"}
