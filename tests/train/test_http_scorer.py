"""The served-teacher scorer's transport: several prompts per request, bounded concurrency, retries by
cause, against loopback servers speaking vLLM's /v1/completions with prompt_logprobs."""

from __future__ import annotations

import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.common.records import read_records
from components.train.config import KDSettings
from components.train.teacher_scoring import HttpScorer, LocalScorer
from pipelines.demo_scoring_server import scoring_app
from pipelines.loopback import ServerThread
from tests.train.conftest import assert_same_scores, vllm_app


@pytest.fixture(scope="module")
def samples(reversal_data) -> tuple[list, list]:
    records = read_records(reversal_data / "train.jsonl")[:12]
    return [r.prompt_messages for r in records], [r.answer for r in records]


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


def fast_scorer(url: str, tokenizer, **transport) -> HttpScorer:
    return HttpScorer(url, "teacher", tokenizer, top_k=4, timeout_s=10.0, **transport)


@pytest.mark.parametrize(("refuse_lists", "sizes"), [(False, [2, 2, 1]), (True, [1, 1, 1, 1, 1])])
def test_scorer_sends_several_prompts_per_request_where_the_server_takes_them(
    tiny_teacher_dir, tokenizer, samples, refuse_lists, sizes
):
    prompts, answers = samples[0][:5], samples[1][:5]
    seen: list[int] = []
    with ServerThread(vllm_app(tiny_teacher_dir, refuse_lists=refuse_lists, seen=seen)) as server:
        remote = fast_scorer(server.url, tokenizer, batch_size=2, concurrency=2).entries(prompts, answers)
    assert sorted(seen, reverse=True) == sizes
    local = LocalScorer(AutoModelForCausalLM.from_pretrained(tiny_teacher_dir), tokenizer, top_k=4)
    assert_same_scores(remote, local.entries(prompts, answers))


def test_scorer_keeps_the_concurrency_bound_in_flight(tokenizer, samples):
    app, stats = scoring_app(len(tokenizer), latency_s=0.3)
    with ServerThread(app) as server:
        scored = fast_scorer(server.url, tokenizer, batch_size=1, concurrency=3).entries(*samples)
    assert len(scored) == len(samples[0]) and all(not s.bad for s in scored)
    assert stats.requests == len(samples[0]) and stats.most_in_flight == 3


@pytest.mark.parametrize("faults", [[503, 429], [500, 502]])
def test_scorer_retries_a_busy_or_failing_server(tokenizer, samples, faults):
    app, stats = scoring_app(len(tokenizer), faults=faults, retry_after_s=0.4)
    started = time.monotonic()
    with ServerThread(app) as server:
        (scored,) = fast_scorer(server.url, tokenizer, retries=2).entries(samples[0][:1], samples[1][:1])
    assert not scored.bad and stats.requests == 3
    if 429 in faults:  # waited out both Retry-Afters
        assert time.monotonic() - started >= 0.8


def test_scorer_gives_up_after_its_retries_naming_the_server_and_the_cause(tokenizer, samples):
    app, stats = scoring_app(len(tokenizer), faults=[502] * 5)
    with (
        ServerThread(app) as server,
        pytest.raises(InputError, match=r"^kd.teacher_url: http://.*\(3 tries\).*502"),
    ):
        fast_scorer(server.url, tokenizer, retries=2).entries(samples[0][:1], samples[1][:1])
    assert stats.requests == 3


def test_scorer_does_not_retry_a_request_the_server_refuses(tokenizer, samples):
    app, stats = scoring_app(len(tokenizer), faults=[404])
    with ServerThread(app) as server, pytest.raises(InputError, match=r"\(1 tries\).*404"):
        fast_scorer(server.url, tokenizer, retries=3).entries(samples[0][:1], samples[1][:1])
    assert stats.requests == 1


def test_scorer_refuses_a_reply_without_one_choice_per_prompt(tokenizer, samples):
    app, _ = scoring_app(len(tokenizer), drop_a_choice=True)
    with ServerThread(app) as server, pytest.raises(InputError, match=r"without one choice per prompt"):
        fast_scorer(server.url, tokenizer, batch_size=4).entries(samples[0][:4], samples[1][:4])


@pytest.mark.parametrize(
    ("field", "value"), [("teacher_batch_size", 0), ("teacher_concurrency", 0), ("teacher_retries", -1)]
)
def test_scorer_settings_out_of_range_are_refused_at_load(tiny_teacher_dir, field, value):
    kd = {
        "kind": "logits",
        "teacher_dir": str(tiny_teacher_dir),
        "teacher_url": "http://t:8000",
        field: value,
    }
    with pytest.raises(ConfigError, match=rf"^kd.{field}: must be"):
        from_dict(KDSettings, kd)
