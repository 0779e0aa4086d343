"""Money: the cross-run cache, budget stops that keep everything so far, requests/tokens per minute."""

from __future__ import annotations

import asyncio

from components.common.records import read_records
from components.teacher import Config
from components.teacher.limits import RateLimiter
from components.teacher.stage import run
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from tests.teacher.conftest import teacher_config


def make_config(tmp_path, base_url, run_id="first", **overrides) -> Config:
    """Each run_id writes its own output folder, beside the one store the runs share."""
    return teacher_config(tmp_path, base_url, run_id=run_id, output_dir=str(tmp_path / run_id), **overrides)


def test_the_cache_turns_a_new_run_with_the_same_inputs_into_zero_calls(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 15)
    with start_teacher_server() as server:
        run(make_config(tmp_path, server.base_url, run_id="first"))
        second = run(make_config(tmp_path, server.base_url, run_id="second"))
        assert second.metrics["requests"] == 0 and second.metrics["cached"] == 15
        assert second.metrics["records"] == 15
        assert sum(server.requests_by_prompt.values()) == 15
        # Other generation parameters are other answers: a different key, so asked again.
        third = run(make_config(tmp_path, server.base_url, run_id="third", provider={"temperature": 0.7}))
        assert third.metrics["requests"] == 15 and third.metrics["cached"] == 0
    cached = read_records(tmp_path / "second" / "train.jsonl")
    assert all(r.extra["cached"] for r in cached)


def test_a_fully_cached_run_needs_neither_the_endpoint_nor_the_key(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 5)
    with start_teacher_server() as server:
        run(make_config(tmp_path, server.base_url, run_id="first"))
        base_url = server.base_url
    offline = run(
        make_config(
            tmp_path,
            base_url,
            run_id="offline",
            provider={"api_key_required": True, "api_key_env": "NOT_SET_ANYWHERE_API_KEY"},
        )
    )
    assert offline.metrics["records"] == 5 and offline.metrics["requests"] == 0


def test_max_requests_stops_cleanly_keeping_every_answer_and_a_rerun_finishes(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 20)
    with start_teacher_server() as server:
        stopped = run(make_config(tmp_path, server.base_url, max_requests=6, concurrency=3))
        assert stopped.metrics["stopped_by_budget"] == 1 and stopped.metrics["requests"] == 6
        assert stopped.metrics["records"] == 6 and stopped.metrics["unfinished"] == 14
        finished = run(make_config(tmp_path, server.base_url, concurrency=3))
        assert finished.metrics["resumed"] == 6 and finished.metrics["requests"] == 14
        assert finished.metrics["records"] == 20
        assert set(server.requests_by_prompt.values()) == {1}


def test_max_cost_counts_the_whole_run_at_the_providers_prices(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 20)
    # 1000 per million tokens, so each demo answer (about 40 tokens in and out) costs about 0.04, and
    # the worst case of a request (its prompt's bytes and 64 tokens out) about 0.11.
    provider = {"price_input_per_m": 1000.0, "price_output_per_m": 1000.0, "max_tokens": 64}
    with start_teacher_server() as server:
        result = run(make_config(tmp_path, server.base_url, max_cost=0.2, concurrency=1, provider=provider))
        spent = result.metrics["total_cost"]
        assert result.metrics["stopped_by_budget"] == 1
        assert 0.2 - 0.11 - spent / result.metrics["requests"] < spent <= 0.2
        assert result.metrics["records"] == result.metrics["requests"] < 20
        # Resuming with the same max_cost asks for nothing more: the run already spent what it may.
        again = run(make_config(tmp_path, server.base_url, max_cost=0.2, concurrency=1, provider=provider))
        assert again.metrics["requests"] == 0 and again.metrics["stopped_by_budget"] == 1
        assert again.metrics["total_cost"] == spent


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_requests_per_minute_space_requests_out():
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=None, clock=clock, sleep=clock.sleep)

    async def five():
        times = []
        for _ in range(5):
            await limiter.acquire(10)
            times.append(round(clock.now, 6))
        return times

    assert asyncio.run(five()) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_tokens_per_minute_count_prompt_and_completion_tokens():
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=600, clock=clock, sleep=clock.sleep)  # 10 tokens a second

    async def three():
        times = []
        for _ in range(3):
            await limiter.acquire(10)
            limiter.charge(10)  # the answer's completion tokens
            times.append(round(clock.now, 6))
        return times

    assert asyncio.run(three()) == [0.0, 2.0, 4.0]
