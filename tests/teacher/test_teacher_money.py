"""Limits that hold exactly: every request is reserved and journaled before it leaves.

The demo teacher on loopback counts what it received; the stage's totals must agree with it.
"""

from __future__ import annotations

import os
import signal

import pytest

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.records import read_records
from components.teacher import Config
from components.teacher.limits import shard_allowance
from components.teacher.money import token_cost, worst_cost
from components.teacher.stage import finalize, run, run_shard
from pipelines.demo_teacher import demo_words, start_teacher_server, write_demo_dataset
from tests.teacher.conftest import run_teacher_cli, start_teacher_cli, teacher_config, wait_until
from tests.teacher.faulty_teacher import Faults, start_faulty_teacher

PRICES = {"price_input_per_m": 1000.0, "price_output_per_m": 1000.0}


def paid_for(records) -> float:
    """What the teacher billed for the answers it gave, from the usage it reported."""
    prices = (PRICES["price_input_per_m"], PRICES["price_output_per_m"])
    return sum(token_cost(r.usage["prompt_tokens"], r.usage["completion_tokens"], prices) for r in records)


def test_max_requests_1_with_32_in_flight_sends_exactly_one_request(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 40)
    with start_teacher_server(latency_s=0.05) as server:
        result = run(teacher_config(tmp_path, server.base_url, max_requests=1, concurrency=32))
        assert server.teacher.total_requests == 1
    assert result.metrics["requests"] == 1 and result.metrics["total_requests"] == 1
    assert result.metrics["records"] == 1 and result.metrics["stopped_by_budget"] == 1


def test_max_cost_holds_exactly_with_32_requests_in_flight(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 40)
    prompt = [{"role": "user", "content": f"Reverse the letters of: {demo_words(40)[0]}"}]
    worst = worst_cost(prompt, 64, 1, (1000.0, 1000.0))
    max_cost = 5.5 * worst  # five requests at their worst case; real answers cost less than half that
    provider = {**PRICES, "max_tokens": 64}
    with start_teacher_server(latency_s=0.05) as server:
        result = run(
            teacher_config(tmp_path, server.base_url, max_cost=max_cost, concurrency=32, provider=provider)
        )
        received = server.teacher.total_requests
    records = read_records(tmp_path / "out" / "train.jsonl") + read_records(tmp_path / "out" / "test.jsonl")
    assert result.metrics["stopped_by_budget"] == 1
    assert len(records) == received == result.metrics["total_requests"]
    # Held exactly, by the stage's own count and by what the teacher reported using; and it was used:
    # answers settled below their worst case left room for more than five.
    assert paid_for(records) == pytest.approx(result.metrics["total_cost"])
    assert result.metrics["total_cost"] <= max_cost
    assert received > 5 and result.metrics["total_cost"] + worst > max_cost


def test_shards_split_the_limits_so_the_run_holds_them_and_a_finishing_run_adds_nothing(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 30)
    with start_teacher_server() as server:
        config = teacher_config(tmp_path, server.base_url, max_requests=4, concurrency=8)
        shards = [run_shard(config, index, 3) for index in range(3)]
        # 4 requests in 3 shares: 2, 1, 1; a retried shard finds its share spent.
        assert [s.metrics["requests"] for s in shards] == [2, 1, 1]
        assert run_shard(config, 0, 3).metrics["requests"] == 0
        # The single-shard run that finishes a sharded one draws what is left of the run's limit: nothing.
        finished = run(config)
        assert finished.metrics["requests"] == 0 and finished.metrics["total_requests"] == 4
        assert server.teacher.total_requests == 4


def test_a_finishing_run_gets_what_the_shards_left(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 30)
    with start_teacher_server() as server:
        config = teacher_config(tmp_path, server.base_url, max_requests=10)
        run_shard(teacher_config(tmp_path, server.base_url, max_requests=4), 1, 2)  # 2 of the 4 (its share)
        finished = run(config)
        assert finished.metrics["requests"] == 8 and server.teacher.total_requests == 10
        assert finalize(config).metrics["total_requests"] == 10


def test_shard_allowances_add_up_to_what_the_limit_leaves():
    for count in range(1, 6):
        for limit in range(0, 12):
            for others in range(0, 14):
                shares = [shard_allowance(limit, index, count, 0, others) for index in range(count)]
                assert sum(shares) == max(0, limit - others), (count, limit, others, shares)
        costs = [shard_allowance(1.0, index, count, 0.0, 0.25) for index in range(count)]
        assert sum(costs) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ({}, r"max_cost: provider 'demo' has no prices.*price_input_per_m"),
        ({**PRICES, "max_tokens": None}, r"max_cost: provider.max_tokens is unset"),
    ],
)
def test_max_cost_without_prices_or_max_tokens_is_refused_before_any_request(tmp_path, provider, message):
    write_demo_dataset(tmp_path / "prompts.jsonl", 5)
    with start_teacher_server() as server:
        with pytest.raises(ConfigError, match=message):
            run(teacher_config(tmp_path, server.base_url, max_cost=1.0, provider=provider))
        assert server.teacher.total_requests == 0


def test_max_cost_without_prices_is_one_line_from_the_command_line(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 5)
    settings = {
        "dataset": str(tmp_path / "prompts.jsonl"),
        "output_dir": str(tmp_path / "out"),
        "provider": {"name": "vllm", "model": "m"},
        "max_cost": 5,
    }
    done = run_teacher_cli(tmp_path, settings)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: max_cost: provider 'vllm' has no prices")
    assert "Traceback" not in done.stderr


def test_totals_count_every_attempt_of_a_pod_killed_mid_run(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 60, seed=11)
    # 30% of requests are refused with a 429 and retried. After 25 requests the server holds every further
    # one: the 8 workers end up each with a request in flight, which the kill takes down with the pod.
    faults = Faults(rate_limit_fraction=0.3, retry_after_s=0.01, stall_after=25)
    with start_faulty_teacher(latency_s=0.01, faults=faults) as server:
        settings = {
            "dataset": str(tmp_path / "prompts.jsonl"),
            "output_dir": str(tmp_path / "out"),
            "store_uri": str(tmp_path / "store"),
            "run_id": "killed",
            "provider": {"name": "demo", "base_url": server.base_url, **PRICES, "max_tokens": 64},
            "concurrency": 8,
            "progress_bar": False,
        }
        process = start_teacher_cli(tmp_path, settings)
        wait_until(lambda: server.held >= 8, "the stage never got 8 requests in flight", process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        wait_until(lambda: server.held == 0, "held requests outlived their client")
        server.release()

        result = run(from_dict(Config, settings))
        taken_up = server.teacher.total_requests
        retried = server.teacher.faults_served["429"]

    # Every request that left either pod is counted: those the server took up (answers and 429s of
    # both pods) and the 8 the kill cut off in flight, which a provider may well have billed.
    assert retried > 0
    assert result.metrics["total_requests"] == taken_up + 8
    records = read_records(tmp_path / "out" / "train.jsonl") + read_records(tmp_path / "out" / "test.jsonl")
    assert len(records) == 60
    # The 8 cut off count at their worst case, since what they cost is unknown.
    assert result.metrics["total_cost"] >= paid_for(records)
