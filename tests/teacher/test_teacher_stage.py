"""The teacher-data stage end to end against the loopback demo teacher, through the real openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.errors import InputError
from components.common.records import read_records
from components.teacher.stage import run
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from tests.conftest import approve_hosts
from tests.teacher.conftest import teacher_config


@pytest.fixture
def server(monkeypatch):
    with start_teacher_server(api_key="sk-test") as running:
        approve_hosts(monkeypatch, running.base_url)
        yield running


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-test")


def test_run_writes_split_records_with_reasoning_and_metrics(tmp_path, server, keyed):
    write_demo_dataset(tmp_path / "prompts.jsonl", 40, seed=3)
    config = teacher_config(tmp_path, server.base_url, provider={"api_key_required": True}, test_ratio=0.25)

    result = run(config)

    out = tmp_path / "out"
    train, test = read_records(out / "train.jsonl"), read_records(out / "test.jsonl")
    assert (len(train), len(test)) == (30, 10)
    assert {r.split for r in train} == {"train"} and {r.split for r in test} == {"test"}
    for record in train + test:
        word = record.messages[0]["content"].rsplit(" ", 1)[1]
        assert record.answer == word[::-1]
        assert record.reasoning.startswith("The letters are ")
        assert record.teacher["model"] == "demo-teacher"
        assert record.usage["completion_tokens"] > 0
    assert sum(server.requests_by_prompt.values()) == 40
    assert all(count == 1 for count in server.requests_by_prompt.values())
    assert result.metrics["records"] == 40 and result.metrics["requests"] == 40
    assert result.metrics["completion_tokens"] > 0
    assert all(isinstance(v, float) for v in result.metrics.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["train"] == 30
    assert "sk-test" not in (out / "summary.json").read_text()


def test_a_second_run_asks_nothing(tmp_path, server, keyed):
    write_demo_dataset(tmp_path / "prompts.jsonl", 12)
    config = teacher_config(tmp_path, server.base_url)
    run(config)
    again = run(config)
    assert again.metrics["requests"] == 0 and again.metrics["records"] == 12
    assert sum(server.requests_by_prompt.values()) == 12


def test_think_in_answer_puts_reasoning_before_the_answer(tmp_path, server, keyed):
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    run(teacher_config(tmp_path, server.base_url, think_in_answer=True, test_ratio=0.0))
    record = read_records(tmp_path / "out" / "train.jsonl")[0]
    assert record.answer.startswith("<think>\nThe letters are ")
    assert record.answer.endswith("</think>\n\n" + record.messages[0]["content"].rsplit(" ", 1)[1][::-1])


def test_missing_dataset_names_the_path(tmp_path, server, keyed):
    config = teacher_config(tmp_path, server.base_url)
    with pytest.raises(InputError, match=r"prompts\.jsonl does not exist"):
        run(config)


def test_malformed_line_names_file_and_line(tmp_path, server, keyed):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Reverse the letters of: abc"}\n{"prompt": oops}\n')
    with pytest.raises(InputError, match=r"prompts\.jsonl:2: not valid JSON"):
        run(teacher_config(tmp_path, server.base_url))
    assert sum(server.requests_by_prompt.values()) == 0


def test_unreachable_teacher_names_the_base_url(tmp_path, keyed):
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    with start_teacher_server() as stopped:
        base_url = stopped.base_url
    with pytest.raises(InputError, match=rf"teacher at {base_url} is unreachable"):
        run(teacher_config(tmp_path, base_url, provider={"timeout_s": 5}))


def test_missing_api_key_names_the_variable_before_any_request(tmp_path, server, monkeypatch):
    monkeypatch.delenv("MY_TEACHER_API_KEY", raising=False)
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    config = teacher_config(
        tmp_path, server.base_url, provider={"api_key_env": "MY_TEACHER_API_KEY", "api_key_required": True}
    )
    with pytest.raises(InputError, match="environment variable MY_TEACHER_API_KEY is not set"):
        run(config)
    assert server.teacher.total_requests == 0


def test_wrong_api_key_is_refused_in_preflight(tmp_path, server, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-wrong")
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    with pytest.raises(InputError, match=r"rejected the API key in \$TEACHER_API_KEY"):
        run(teacher_config(tmp_path, server.base_url, provider={"api_key_required": True}))
    assert server.teacher.total_requests == 0


def test_unknown_model_is_refused_in_preflight(tmp_path, server, keyed):
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    with pytest.raises(InputError, match="does not serve model 'gpt-9'"):
        run(teacher_config(tmp_path, server.base_url, provider={"model": "gpt-9"}))


def test_progress_is_logged_for_the_kfp_ui_with_tokens_and_cost(tmp_path, caplog):
    write_demo_dataset(tmp_path / "prompts.jsonl", 6)
    with start_teacher_server(latency_s=0.1) as server:
        with caplog.at_level("INFO", logger="components.teacher"):
            run(
                teacher_config(
                    tmp_path,
                    server.base_url,
                    concurrency=1,
                    log_every_s=0.15,
                    provider={"price_input_per_m": 1.0},
                )
            )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher: ")]
    assert len(lines) >= 3  # while it runs, not only at the end
    assert lines[-1].startswith("teacher: 6/6 prompts (100.0%)")
    assert "6 requests, tokens in/out 60/" in lines[-1] and "cost 0.0001" in lines[-1]


def test_raw_text_and_sharegpt_sources_become_records_end_to_end(tmp_path, server, keyed):
    fixtures = Path(__file__).parent / "fixtures"
    for name, fmt in (("zh.txt", "text"), ("sharegpt.jsonl", "sharegpt")):
        config = teacher_config(
            tmp_path,
            server.base_url,
            dataset=str(fixtures / name),
            dataset_format=fmt,
            output_dir=str(tmp_path / fmt),
            run_id=fmt,
            test_ratio=0.0,
            text={"chunk_chars": 60},
            system_prompt="你是老师。",
        )
        result = run(config)
        records = read_records(tmp_path / fmt / "train.jsonl")
        assert result.metrics["records"] == len(records) >= 2
        for record in records:
            assert record.messages[0] == {"role": "system", "content": "你是老师。"}
            assert record.messages[-1]["role"] == "assistant" and record.answer.startswith("Answer ")
    sharegpt = read_records(tmp_path / "sharegpt" / "train.jsonl")
    assert {r.reference for r in sharegpt} == {"4", None}
    assert any(
        r.extra["source"].endswith("zh.txt:2") for r in read_records(tmp_path / "text" / "train.jsonl")
    )


def test_extra_headers_and_body_reach_the_provider(tmp_path, server, keyed):
    write_demo_dataset(tmp_path / "prompts.jsonl", 2)
    provider = {"extra_headers": {"X-Team": "distill"}, "extra_body": {"enable_thinking": False}}
    run(teacher_config(tmp_path, server.base_url, provider=provider, test_ratio=0.0))
    assert server.teacher.last_headers["x-team"] == "distill"
    assert all(r.reasoning is None for r in read_records(tmp_path / "out" / "train.jsonl"))


def test_the_dataset_holds_only_the_current_prompts_answers(tmp_path, server, keyed):
    write_demo_dataset(tmp_path / "prompts.jsonl", 10)
    run(teacher_config(tmp_path, server.base_url))
    smaller = run(teacher_config(tmp_path, server.base_url, max_samples=4))  # same run_id, fewer prompts
    assert smaller.metrics["records"] == 4 and smaller.metrics["stale_answers"] == 6
    assert smaller.metrics["requests"] == 0
    records = read_records(tmp_path / "out" / "train.jsonl") + read_records(tmp_path / "out" / "test.jsonl")
    firsts = [
        json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()[:4]
    ]
    assert sorted(r.messages[0]["content"] for r in records) == sorted(firsts)
