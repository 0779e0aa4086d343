"""Failing loudly and losing nothing: a run that answered too little fails with its causes counted, a
fatal error or a signal saves what is in flight first, and the progress line shows retries and failures
by cause while the run goes on."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time

import pytest

from components.common.config import from_dict
from components.common.errors import InputError, StageStopped
from components.common.records import read_records
from components.common.store import open_store
from components.teacher import Config
from components.teacher.config import POD_GRACE_S, STOP_SAVE_S
from components.teacher.journal import spent_by_shard
from components.teacher.money import Spend, worst_cost
from components.teacher.stage import run
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from tests.teacher.conftest import (
    demo_prompts,
    run_teacher_cli,
    start_teacher_cli,
    stored_answers,
    teacher_settings,
    wait_until,
)
from tests.teacher.faulty_teacher import Faults, start_faulty_teacher

PROMPTS = demo_prompts(8, seed=5)


def settings(tmp_path, base_url, **overrides) -> dict:
    """Two retries only, and every record in train so `kept` counts them all."""
    provider = {"max_retries": 2, **overrides.pop("provider", {})}
    defaults = {"run_id": "exit", "test_ratio": 0.0}
    return teacher_settings(tmp_path, base_url, **{**defaults, **overrides, "provider": provider})


def make_config(tmp_path, base_url, **overrides) -> Config:
    return from_dict(Config, settings(tmp_path, base_url, **overrides))


def kept(tmp_path) -> int:
    return len(read_records(tmp_path / "out" / "train.jsonl"))


def test_a_teacher_that_dies_mid_run_fails_the_stage_which_a_retry_then_finishes(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 30)
    server = start_teacher_server(latency_s=0.02)
    port = server.port

    def kill_after_ten_answers() -> None:
        while server.teacher.total_requests < 10:
            time.sleep(0.005)
        server.stop()

    killer = threading.Thread(target=kill_after_ten_answers)
    killer.start()
    with pytest.raises(StageStopped, match=r"only \d+ of 30 prompts have an answer .*failed: \w+"):
        run(make_config(tmp_path, server.base_url, concurrency=2))
    killer.join()
    stored = kept(tmp_path)
    assert 10 <= stored < 30  # what it had is stored: train.jsonl holds every answer so far
    # KFP retries the task once the teacher is back: it asks only for the rest.
    with start_teacher_server(port=port) as again:
        result = run(make_config(tmp_path, again.base_url))
        assert again.teacher.total_requests == 30 - stored
    assert result.metrics["records"] == 30


def test_an_html_page_with_status_200_fails_the_stage(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 8, seed=5)
    faults = Faults(schedule={p: ["html"] * 3 for p in PROMPTS})
    with start_faulty_teacher(faults=faults) as server:
        with pytest.raises(
            StageStopped, match=r"only 0 of 8 prompts have an answer .*failed: malformed( response)? 8"
        ):
            run(make_config(tmp_path, server.base_url))
        assert server.teacher.total_requests == 24  # each prompt: the first request and 2 retries
    assert kept(tmp_path) == 0


def test_answers_all_cut_by_max_tokens_fail_the_stage(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 8, seed=5)
    with start_teacher_server() as server:
        config = make_config(tmp_path, server.base_url, provider={"max_tokens": 1})
        with pytest.raises(StageStopped, match=r"only 0 of 8 .*dropped: cut by max_tokens 8"):
            run(config)
        # A retry asks nothing again (the dropped answers were paid for) and fails for the same reason.
        with pytest.raises(StageStopped, match=r"dropped: cut by max_tokens 8"):
            run(config)
        assert server.teacher.total_requests == 8


def test_below_min_answered_ratio_fails_but_at_it_passes(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 8, seed=5)
    faults = Faults(schedule={PROMPTS[0]: ["500"] * 3})
    with start_faulty_teacher(faults=faults) as server:
        with pytest.raises(StageStopped, match=r"only 7 of 8 .*min_answered_ratio=0.95.*failed: 500 1"):
            run(make_config(tmp_path, server.base_url))
        assert kept(tmp_path) == 7
    write_demo_dataset(tmp_path / "prompts.jsonl", 8, seed=5)
    with start_faulty_teacher(faults=Faults(schedule={PROMPTS[0]: ["500"] * 3})) as server:
        result = run(make_config(tmp_path, server.base_url, run_id="lenient", min_answered_ratio=0.875))
    assert result.metrics["records"] == 7


def test_a_dataset_whose_every_line_is_skipped_fails_in_one_line(tmp_path):
    (tmp_path / "prompts.jsonl").write_text("not json\n{broken\n[1, 2\n")
    overrides = {"dataset_format": "prompts", "bad_lines": "skip"}
    done = run_teacher_cli(tmp_path, settings(tmp_path, "http://127.0.0.1:9/v1", **overrides))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the dataset gave no prompt to ask") and "3 lines skipped" in last


def test_a_revoked_key_lets_the_requests_in_flight_finish_and_saves_them(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 8, seed=5)
    # Eight requests leave at once; seven take a second to answer, the eighth is refused at once.
    schedule = {**{p: ["slow"] for p in PROMPTS[:7]}, PROMPTS[7]: ["401"]}
    faults = Faults(schedule=schedule, slow_s=1.0)
    with start_faulty_teacher(faults=faults) as server:
        config = make_config(
            tmp_path, server.base_url, concurrency=8, use_cache=False, provider={"timeout_s": 10.0}
        )
        with pytest.raises(InputError, match="401 Incorrect API key"):
            run(config)
        assert server.teacher.total_requests == 8
        assert stored_answers(str(tmp_path / "store"), "exit") == 7  # paid for, so kept
        again = run(config)
        assert again.metrics["resumed"] == 7 and again.metrics["requests"] == 1
        assert server.requests_by_prompt[PROMPTS[7]] == 2 and server.teacher.total_requests == 9


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_every_answer_and_end_in_one_line(tmp_path, sent):
    write_demo_dataset(tmp_path / "prompts.jsonl", 60, seed=11)
    with start_faulty_teacher(latency_s=0.01, faults=Faults(stall_after=25)) as server:
        config = settings(
            tmp_path,
            server.base_url,
            concurrency=8,
            # No cache and checkpoints too rare to happen: only the signal handling can save the answers.
            use_cache=False,
            checkpoint_records=1000,
            checkpoint_seconds=600.0,
        )
        process = start_teacher_cli(tmp_path, config)
        # 25 answered, the next 8 held: the stage is mid-run.
        wait_until(lambda: server.held >= 8, "the stage never got 8 requests in flight", process)
        os.kill(process.pid, sent)
        store = str(tmp_path / "store")
        wait_until(
            lambda: stored_answers(store, "exit") >= 25, f"the 25 answers were not saved on {sent.name}"
        )
        server.release()  # the 8 in flight now finish, are paid for, and must be saved too
        assert process.wait(timeout=30) == 1
        stderr = process.stderr.read()
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == (
            f"error: stopped by {sent.name}; every answer so far is saved and a restart resumes"
        )
        assert stored_answers(str(tmp_path / "store"), "exit") == 33
        result = run(from_dict(Config, config))
        assert result.metrics["resumed"] == 33 and result.metrics["requests"] == 27


def test_sigterm_stops_within_the_pods_grace_period_while_answers_hang(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 20, seed=11)
    prices = {"price_input_per_m": 1000.0, "price_output_per_m": 1000.0, "max_tokens": 64}
    with start_faulty_teacher(faults=Faults(stall_after=5)) as server:
        config = settings(tmp_path, server.base_url, concurrency=4, stop_wait_s=1.0, provider=prices)
        process = start_teacher_cli(tmp_path, config)
        # 5 answered, then 4 in flight that the server holds: answers slower than any grace period.
        wait_until(lambda: server.held >= 4, "the stage never got 4 requests in flight", process)
        signalled = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=POD_GRACE_S) == 1
        assert time.monotonic() - signalled < 1.0 + STOP_SAVE_S
        stderr = process.stderr.read()
        assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; every answer")
        assert stored_answers(str(tmp_path / "store"), "exit") == 5
        server.release()
    # The 4 cut off may have been billed: the ledger counts them at their worst case.
    spent = sum(
        spent_by_shard(open_store(str(tmp_path / "store")).child("runs/exit/teacher/spend")).values(), Spend()
    )
    cheapest = min(
        worst_cost([{"role": "user", "content": p}], 64, 1, (1000.0, 1000.0)) for p in demo_prompts(20, 11)
    )
    assert spent.requests == 9 and spent.cost > 4 * cheapest


def test_the_progress_line_shows_retries_and_failures_by_cause_while_running(tmp_path, caplog):
    write_demo_dataset(tmp_path / "prompts.jsonl", 8, seed=5)
    schedule = {PROMPTS[0]: ["429", "429"], PROMPTS[1]: ["500"], PROMPTS[2]: ["500"] * 3}
    faults = Faults(schedule=schedule, retry_after_s=0.01)
    caplog.set_level(logging.INFO, logger="components.teacher")
    with start_faulty_teacher(latency_s=0.05, faults=faults) as server:
        run(make_config(tmp_path, server.base_url, concurrency=1, log_every_s=0.02, min_answered_ratio=0.5))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher: ")]
    final = lines[-1]
    by_cause = r"retries 5 \((500 3, 429 2|429 2, 500 3)\)"
    assert re.search(by_cause, final), final
    assert re.search(r"failed 1 \(500 1\)", final), final
    # Already while prompts were still being asked, the line told of the retries.
    assert any(re.search(r"^teacher: [0-7]/8 .*retries [1-9]", line) for line in lines[:-1]), lines
