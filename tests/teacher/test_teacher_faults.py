"""Every prompt ends with exactly one outcome, whatever the teacher does; requests are counted exactly."""

from __future__ import annotations

import pytest

from components.common.backoff import backoff, retry_after
from components.common.errors import InputError
from components.common.records import read_records
from components.teacher import Config
from components.teacher.stage import run
from pipelines.demo_teacher import demo_words, write_demo_dataset
from tests.teacher.conftest import demo_prompts, teacher_config
from tests.teacher.faulty_teacher import Faults, start_faulty_teacher

WORDS = demo_words(8, seed=5)
PROMPTS = demo_prompts(8, seed=5)


def make_config(tmp_path, base_url, **overrides) -> Config:
    """Eight prompts, all in train, and a short request timeout for the servers that hang."""
    write_demo_dataset(tmp_path / "prompts.jsonl", 8, seed=5)
    provider = {"timeout_s": 0.5, **overrides.pop("provider", {})}
    return teacher_config(tmp_path, base_url, **{"test_ratio": 0.0, **overrides, "provider": provider})


def answers(tmp_path) -> dict[str, str]:
    return {r.messages[-2]["content"]: r.answer for r in read_records(tmp_path / "out" / "train.jsonl")}


def test_transient_faults_are_retried_until_each_prompt_has_one_answer(tmp_path):
    schedule = {
        PROMPTS[0]: ["429", "429"],  # Retry-After honoured, then answered
        PROMPTS[1]: ["500"],
        PROMPTS[2]: ["slow"],  # beyond timeout_s: the client gives up and asks again
        PROMPTS[3]: ["drop"],  # connection closed without a response
        PROMPTS[4]: ["empty", "empty"],  # on_empty: retry
        PROMPTS[5]: ["429", "500", "drop", "slow"],
    }
    faults = Faults(schedule=schedule, retry_after_s=0.05, slow_s=5.0)
    with start_faulty_teacher(faults=faults) as server:
        result = run(make_config(tmp_path, server.base_url))
        counts = dict(server.requests_by_prompt)

    assert counts == {
        PROMPTS[0]: 3,
        PROMPTS[1]: 2,
        PROMPTS[2]: 2,
        PROMPTS[3]: 2,
        PROMPTS[4]: 3,
        PROMPTS[5]: 5,
        PROMPTS[6]: 1,
        PROMPTS[7]: 1,
    }
    assert answers(tmp_path) == {p: w[::-1] for p, w in zip(PROMPTS, WORDS, strict=True)}
    assert result.metrics["requests"] == 19 and result.metrics["retries"] == 11
    assert result.metrics["failed"] == 0 and result.metrics["records"] == 8


def test_a_streamed_teacher_is_joined_and_a_stream_cut_midway_is_asked_again(tmp_path):
    schedule = {PROMPTS[0]: ["cut"], PROMPTS[1]: ["429", "drop"], PROMPTS[2]: ["length"]}
    with start_faulty_teacher(faults=Faults(schedule=schedule, retry_after_s=0.01)) as server:
        result = run(make_config(tmp_path, server.base_url, provider={"stream": True}, on_length="keep"))
        counts = dict(server.requests_by_prompt)
    assert counts == {PROMPTS[0]: 2, PROMPTS[1]: 3, **{p: 1 for p in PROMPTS[2:]}}
    records = {r.messages[-2]["content"]: r for r in read_records(tmp_path / "out" / "train.jsonl")}
    assert {p: r.answer for p, r in records.items() if p != PROMPTS[2]} == {
        p: w[::-1] for p, w in zip(PROMPTS, WORDS, strict=True) if p != PROMPTS[2]
    }
    assert records[PROMPTS[0]].reasoning.startswith("The letters are ")
    assert records[PROMPTS[2]].extra["finish_reason"] == "length"
    assert result.metrics["completion_tokens"] > 0 and result.metrics["records"] == 8


def test_length_and_empty_policies_keep_or_drop_and_never_re_ask(tmp_path):
    schedule = {PROMPTS[0]: ["length"], PROMPTS[1]: ["empty"], PROMPTS[2]: ["length"]}
    with start_faulty_teacher(faults=Faults(schedule=schedule)) as server:
        config = make_config(
            tmp_path, server.base_url, on_length="drop", on_empty="drop", min_answered_ratio=0.5
        )
        result = run(config)
        assert result.metrics["dropped"] == 3 and result.metrics["records"] == 5
        assert PROMPTS[0] not in answers(tmp_path) and PROMPTS[1] not in answers(tmp_path)
        # The dropped answers were paid for: a re-run keeps them dropped without asking again.
        again = run(config)
        assert again.metrics["requests"] == 0
        assert sum(server.requests_by_prompt.values()) == 8


def test_truncated_answers_can_be_kept(tmp_path):
    with start_faulty_teacher(faults=Faults(schedule={PROMPTS[0]: ["length"]})) as server:
        run(make_config(tmp_path, server.base_url, on_length="keep"))
    record = next(
        r for r in read_records(tmp_path / "out" / "train.jsonl") if r.messages[-2]["content"] == PROMPTS[0]
    )
    assert record.extra["finish_reason"] == "length"
    assert record.answer == WORDS[0][::-1][: len(WORDS[0]) // 2]


def test_a_prompt_failing_past_max_retries_is_left_for_the_next_run(tmp_path):
    with start_faulty_teacher(
        faults=Faults(schedule={PROMPTS[0]: ["500"] * 3}, retry_after_s=0.01)
    ) as server:
        config = make_config(tmp_path, server.base_url, provider={"max_retries": 2}, min_answered_ratio=0.5)
        first = run(config)
        assert first.metrics["failed"] == 1 and first.metrics["records"] == 7
        assert server.requests_by_prompt[PROMPTS[0]] == 3  # the first request and 2 retries
        second = run(config)
        assert second.metrics["requests"] == 1 and second.metrics["records"] == 8
        assert server.requests_by_prompt[PROMPTS[0]] == 4


def test_a_fraction_of_429s_costs_exactly_one_extra_request_each(tmp_path):
    faults = Faults(rate_limit_fraction=0.3, retry_after_s=0.01)
    with start_faulty_teacher(faults=faults) as server:
        result = run(make_config(tmp_path, server.base_url, concurrency=4))
        limited = server.teacher.faults_served["429"]
        assert limited > 0
        assert sum(server.requests_by_prompt.values()) == 8 + limited
    assert result.metrics["requests"] == 8 + limited and result.metrics["records"] == 8


def test_a_retried_prompt_goes_ahead_of_fresh_ones_and_its_slot_is_not_idle(tmp_path):
    # One slot; the 429 comes back at once and its retry is due within 10 ms, while every answer takes
    # 50 ms: the slot serves the next fresh prompt meanwhile, then the retry before any other fresh one.
    faults = Faults(schedule={PROMPTS[0]: ["429"]}, retry_after_s=0.0)
    with start_faulty_teacher(latency_s=0.05, faults=faults) as server:
        run(make_config(tmp_path, server.base_url, concurrency=1))
        order = server.teacher.request_order
    assert order[:3] == [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    assert order[3:] == PROMPTS[2:]


def test_retry_after_header_forms():
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_backoff_is_jittered_exponential_unless_the_server_says_when():
    assert backoff(3, base_s=1.0, cap_s=60.0, retry_after_s=7.0) >= 7.0
    waits = [backoff(attempt, base_s=1.0, cap_s=3.0) for attempt in range(1, 8) for _ in range(50)]
    assert max(waits) <= 3.0 and min(waits) >= 0.0
    assert len({round(w, 6) for w in waits}) > 100  # jittered: no two clients retry in lockstep


def test_a_revoked_key_mid_run_stops_with_the_reason_and_keeps_earlier_answers(tmp_path):
    schedule = {PROMPTS[5]: ["401"]}
    with start_faulty_teacher(faults=Faults(schedule=schedule)) as server:
        config = make_config(tmp_path, server.base_url, concurrency=1, checkpoint_records=1)
        with pytest.raises(InputError, match="401 Incorrect API key"):
            run(config)
        assert sum(server.requests_by_prompt.values()) == 6
        again = run(config)
        assert again.metrics["requests"] == 3 and again.metrics["resumed"] == 5
        assert again.metrics["records"] == 8
