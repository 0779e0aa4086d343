"""Teacher replies are untrusted: a reported usage, a batch output line or a custom_id cannot make the
stage overspend, crash, pay twice or record an answer under another prompt."""

from __future__ import annotations

import json
import math

import pytest

from components.common.records import read_records
from components.teacher.money import worst_cost
from components.teacher.stage import run
from pipelines.demo_teacher import write_demo_dataset
from tests.teacher.batch_teacher import BatchFaults, start_batch_teacher
from tests.teacher.conftest import (
    batch_settings,
    demo_prompts,
    run_teacher_cli,
    teacher_config,
    teacher_settings,
)
from tests.teacher.faulty_teacher import Faults, start_faulty_teacher

PRICES = {"price_input_per_m": 1000.0, "price_output_per_m": 1000.0}
MISREPORTED = {
    "missing": lambda usage: None,
    "negative": lambda usage: {**usage, "completion_tokens": -100_000},
    "nan": lambda usage: {**usage, "prompt_tokens": float("nan")},
}


def most_requests(max_cost: float, count: int, max_tokens: int, prices: tuple[float, float]) -> int:
    """How many requests fit max_cost when each is counted at its worst case (the cheapest prompt's)."""
    cheapest = min(
        worst_cost([{"role": "user", "content": p}], max_tokens, 1, prices) for p in demo_prompts(count)
    )
    return math.floor(max_cost / cheapest)


def strict_summary(tmp_path) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"summary.json holds {constant}, which is not JSON")

    return json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)


def records(tmp_path) -> list:
    out = tmp_path / "out"
    return read_records(out / "train.jsonl") + read_records(out / "test.jsonl")


def assert_each_answer_is_its_prompts(kept) -> None:
    for record in kept:
        word = record.messages[-2]["content"].split(": ")[1]
        assert record.messages[-1]["content"] == word[::-1], record.messages


@pytest.mark.parametrize("usage", sorted(MISREPORTED))
def test_a_misreported_usage_is_paid_at_its_worst_case_in_sync_mode(tmp_path, usage):
    write_demo_dataset(tmp_path / "prompts.jsonl", 40)
    max_cost = 0.8
    fits = most_requests(max_cost, 40, 64, (1000.0, 1000.0))
    with start_faulty_teacher(Faults(usage=MISREPORTED[usage]), latency_s=0.02) as server:
        settings = {"max_cost": max_cost, "concurrency": 8, "min_answered_ratio": 0.0}
        result = run(
            teacher_config(tmp_path, server.base_url, provider={**PRICES, "max_tokens": 64}, **settings)
        )
        received = server.teacher.total_requests
    metrics = strict_summary(tmp_path)["metrics"]
    assert 0 < received <= fits < 40 and result.metrics["stopped_by_budget"] == 1
    assert 0 <= metrics["total_cost"] <= max_cost and metrics["total_requests"] == received


@pytest.mark.parametrize("usage", sorted(MISREPORTED))
def test_a_misreported_usage_is_paid_at_its_worst_case_in_batch_mode(tmp_path, usage):
    write_demo_dataset(tmp_path / "prompts.jsonl", 40)
    max_cost = 0.0008
    fits = most_requests(max_cost, 40, 50, (0.5, 1.0))  # the batch price: half the sync prices
    with start_batch_teacher(BatchFaults(usage=MISREPORTED[usage])) as server:
        settings = batch_settings(tmp_path, server)
        settings["provider"]["max_tokens"] = 50
        settings.update(max_cost=max_cost, min_answered_ratio=0.0)
        run(teacher_config(tmp_path, "", **settings))
        sent = sum(b["request_counts"]["total"] for b in server.created)
    metrics = strict_summary(tmp_path)["metrics"]
    assert 0 < sent <= fits < 40 and metrics["total_requests"] == sent
    assert 0 <= metrics["total_cost"] <= max_cost


def malformed(lines: list[str]) -> list[str]:
    """The output file with junk around its lines, the first answer cut in half and the second one's
    body of the wrong shape."""
    second = json.loads(lines[1])
    second["response"]["body"]["choices"] = "not a list"
    junk = ["{oops", "[1, 2]", '{"custom_id": ["x"], "response": 7, "error": "y"}', "null"]
    return [*junk[:2], lines[0][: len(lines[0]) // 2], json.dumps(second), *junk[2:], *lines[2:]]


def test_malformed_batch_lines_fail_their_items_and_the_rest_is_kept(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 10)
    with start_batch_teacher(BatchFaults(output=malformed)) as server:
        result = run(teacher_config(tmp_path, "", **batch_settings(tmp_path, server)))
        asked_alone = sum(server.requests_by_prompt.values())
    assert len(server.created) == 1 and asked_alone == 2  # the two bad items, by on_failure: sync
    assert result.metrics["answered"] == 10 and len(records(tmp_path)) == 10
    assert_each_answer_is_its_prompts(records(tmp_path))


def error_then_answer(lines: list[str]) -> list[str]:
    """The first item twice: a 500 line, then its answer."""
    first = json.loads(lines[0])
    failed = {**first, "response": {"status_code": 500, "body": {"error": {"message": "busy"}}}}
    return [json.dumps(failed), *lines]


def swapped_keys(lines: list[str]) -> list[str]:
    """The first two items' custom_ids swapped, each keeping the rest of its own id (the request digest)."""
    first, second = json.loads(lines[0]), json.loads(lines[1])
    a, b = first["custom_id"], second["custom_id"]
    first["custom_id"], second["custom_id"] = b[:32] + a[32:], a[:32] + b[32:]
    return [json.dumps(first), json.dumps(second), *lines[2:]]


def test_an_answer_line_wins_over_an_error_line_for_the_same_item(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 10)
    with start_batch_teacher(BatchFaults(output=error_then_answer)) as server:
        result = run(teacher_config(tmp_path, "", **batch_settings(tmp_path, server)))
        assert server.teacher.total_requests == 0  # nothing asked again
    assert result.metrics["answered"] == 10 and result.metrics["requests"] == 10
    assert len(records(tmp_path)) == 10


def test_a_swapped_custom_id_is_refused_not_recorded(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 10)
    with start_batch_teacher(BatchFaults(output=swapped_keys)) as server:
        run(teacher_config(tmp_path, "", **batch_settings(tmp_path, server)))
        asked_alone = set(server.requests_by_prompt)
    kept = records(tmp_path)
    assert len(kept) == 10 and len(asked_alone) == 2
    assert_each_answer_is_its_prompts(kept)


def test_every_answer_filtered_out_fails_in_one_line(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 5)
    with start_faulty_teacher() as server:
        done = run_teacher_cli(tmp_path, teacher_settings(tmp_path, server.base_url, max_answer_chars=1))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no record left: 5 prompts were answered") and "answer_too_long 5" in last


def test_an_edited_cache_entry_is_a_logged_miss_and_asked_again(tmp_path, caplog):
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    with start_faulty_teacher() as server:
        run(teacher_config(tmp_path, server.base_url, run_id="first", test_ratio=0.0))
        entries = sorted((tmp_path / "store" / "cache" / "teacher").rglob("*.json"))
        edited = json.loads(entries[0].read_text())
        edited["answers"][0]["content"] = "an answer nobody asked for"
        entries[0].write_text(json.dumps(edited))
        result = run(teacher_config(tmp_path, server.base_url, run_id="second", test_ratio=0.0))
        assert server.teacher.total_requests == 4  # three, then the edited one again
    assert result.metrics["cached"] == 2 and result.metrics["answered"] == 1
    assert_each_answer_is_its_prompts(records(tmp_path))
    assert f"cache entry {edited['key'][:2]}/{edited['key']}.json does not match its request" in caplog.text
