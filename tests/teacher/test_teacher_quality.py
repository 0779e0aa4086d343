"""What is kept: duplicates removed before paying, length filters, judge verdicts, the seeded split."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from components.common.errors import StageStopped
from components.common.logprobs_file import read_logprobs
from components.common.records import read_records, record_id
from components.teacher import Config
from components.teacher.plan import RecordIds
from components.teacher.quality import FilterCounts, select_prompts, split_keys
from components.teacher.readers import Prompt
from components.teacher.stage import run
from components.teacher.templates import render_file_template
from pipelines.demo_teacher import start_teacher_server
from tests.teacher.conftest import teacher_config
from tests.teacher.faulty_teacher import Faults, start_faulty_teacher


def prompt(text: str) -> Prompt:
    return Prompt([{"role": "user", "content": text}])


def texts(prompts: Iterable[Prompt]) -> list[str]:
    return [p.messages[-1]["content"] for p in prompts]


def test_exact_duplicates_differing_in_case_and_spacing_are_dropped():
    counts = FilterCounts()
    kept = select_prompts(
        [prompt("Hello  world"), prompt("hello world"), prompt("Hello there")], counts=counts
    )
    assert texts(kept) == ["Hello  world", "Hello there"] and counts.duplicates == 1


def test_near_duplicates_are_dropped_above_the_threshold_only():
    base = "Explain how a transformer attention layer computes its weights, step by step, with an example."
    variant = base.replace("with an example", "with one example")
    other = "Write a short poem about autumn leaves falling in a quiet park at dusk."
    counts = FilterCounts()
    kept = select_prompts(
        [prompt(base), prompt(variant), prompt(other)], near_dup_threshold=0.8, counts=counts
    )
    assert texts(kept) == [base, other] and counts.near_duplicates == 1
    assert len(list(select_prompts([prompt(base), prompt(variant)], near_dup_threshold=None))) == 2


def test_prompt_length_filters():
    counts = FilterCounts()
    kept = select_prompts(
        [prompt("hi"), prompt("a reasonable prompt"), prompt("x" * 500)],
        min_chars=5,
        max_chars=100,
        counts=counts,
    )
    assert texts(kept) == ["a reasonable prompt"] and (counts.too_short, counts.too_long) == (1, 1)


def test_split_is_seeded_and_independent_of_order():
    keys = [f"k{i}" for i in range(100)]
    test = split_keys(keys, 0.2, seed=7)
    assert len(test) == 20
    assert split_keys(reversed(keys), 0.2, seed=7) == test
    assert split_keys(keys, 0.2, seed=8) != test
    assert split_keys(["only"], 0.5, seed=0) == set()  # at least one training example


def write_alpaca(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def config(tmp_path, base_url, **overrides) -> Config:
    return teacher_config(
        tmp_path, base_url, dataset=str(tmp_path / "data.jsonl"), test_ratio=0.0, **overrides
    )


def test_duplicates_are_never_requested(tmp_path):
    rows = [{"instruction": "Reverse the letters of: abc"}] * 3 + [
        {"instruction": "Reverse the letters of: xyz"}
    ]
    write_alpaca(tmp_path / "data.jsonl", rows)
    with start_teacher_server() as server:
        result = run(config(tmp_path, server.base_url))
        assert sum(server.requests_by_prompt.values()) == 2
    assert result.metrics["duplicates"] == 2 and result.metrics["records"] == 2


def test_judge_keeps_answers_that_match_the_reference_and_files_the_rest(tmp_path):
    rows = [
        {"instruction": "Reverse the letters of: abc", "output": "cba"},
        {"instruction": "Reverse the letters of: dog", "output": "dog"},  # a wrong reference: rejected
        {"instruction": "Reverse the letters of: sun"},  # no reference: kept unjudged
    ]
    write_alpaca(tmp_path / "data.jsonl", rows)
    with start_teacher_server() as server:
        result = run(config(tmp_path, server.base_url, judge={"enabled": True}))
        judge_requests = sum(n for p, n in server.requests_by_prompt.items() if "Candidate answer" in p)
    kept = read_records(tmp_path / "out" / "train.jsonl")
    rejected = read_records(tmp_path / "out" / "rejected.jsonl")
    assert sorted(r.answer for r in kept) == ["cba", "nus"]
    assert [(r.answer, r.reference, r.judge["verdict"]) for r in rejected] == [("god", "dog", "reject")]
    assert next(r for r in kept if r.answer == "cba").judge["verdict"] == "accept"
    assert judge_requests == 2 and result.metrics["requests"] == 5
    assert result.metrics["judge_rejected"] == 1 and result.metrics["rejected"] == 1


def test_a_judge_that_fails_leaves_the_prompt_for_the_next_run_without_paying_the_teacher_twice(tmp_path):
    write_alpaca(tmp_path / "data.jsonl", [{"instruction": "Reverse the letters of: abc", "output": "cba"}])
    judge_prompt = render_file_template(
        "judge", prompt="Reverse the letters of: abc", reference="cba", answer="cba"
    )
    with start_faulty_teacher(faults=Faults(schedule={judge_prompt: ["500", "500"]})) as server:
        settings = {
            "provider": {"name": "demo", "base_url": server.base_url, "max_retries": 1, "backoff_s": 0.01},
            "judge": {"enabled": True},
        }
        # No prompt has an answer yet: the stage fails (so that KFP retries it), naming the cause.
        with pytest.raises(StageStopped, match="only 0 of 1 prompts have an answer.*judge error 1"):
            run(config(tmp_path, server.base_url, **settings))
        second = run(config(tmp_path, server.base_url, **settings))
        assert second.metrics["cached"] == 1 and second.metrics["records"] == 1
        assert server.requests_by_prompt == {"Reverse the letters of: abc": 1, judge_prompt: 3}


def test_answer_length_filter_and_n_answers_per_prompt(tmp_path):
    rows = [{"instruction": f"Reverse the letters of: {w}"} for w in ("ab", "abcdef", "abcd")]
    write_alpaca(tmp_path / "data.jsonl", rows)
    with start_teacher_server() as server:
        result = run(
            config(
                tmp_path,
                server.base_url,
                min_answer_chars=3,
                max_answer_chars=5,
                provider={"name": "demo", "base_url": server.base_url, "n": 2},
            )
        )
    kept = read_records(tmp_path / "out" / "train.jsonl")
    assert [r.answer for r in kept] == ["dcba", "dcba"] and len({r.id for r in kept}) == 2
    assert result.metrics["answer_too_short"] == 2 and result.metrics["answer_too_long"] == 2


def test_logprobs_are_stored_beside_the_records(tmp_path):
    write_alpaca(tmp_path / "data.jsonl", [{"instruction": "Reverse the letters of: abc"}])
    with start_teacher_server() as server:
        run(
            config(
                tmp_path,
                server.base_url,
                provider={"name": "demo", "base_url": server.base_url, "logprobs": True, "top_logprobs": 3},
            )
        )
    record = read_records(tmp_path / "out" / "train.jsonl")[0]
    (record_id, positions), *others = read_logprobs(tmp_path / "out")
    assert record_id == record.id and not others
    token = positions[0]
    assert token["token"] == "cba" and token["bytes"] == list(b"cba")
    # OpenAI's shape, as the train stage reads it: each alternative with its token, logprob and bytes.
    assert len(token["top_logprobs"]) == 3 and token["top_logprobs"][0] == {
        "token": "cba",
        "logprob": token["logprob"],
        "bytes": list(b"cba"),
    }
    assert (tmp_path / "out" / "logprobs.parquet").is_file()


def test_the_plans_record_ids_are_the_records_ids():
    settings = {"provider": "demo", "model": "m", "params": {"temperature": 0.0, "n": 2, "extra_body": "ab"}}
    messages = [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": 'Say "hi"\n'}]
    assert RecordIds(settings)(messages) == record_id(messages, settings)
