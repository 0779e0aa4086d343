"""LLM-as-judge win rate of the student against the teacher, through the teacher stage's client."""

from __future__ import annotations

import pytest

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.evaluate.config import JudgeConfig
from components.evaluate.judge import judge_win_rate, parse_verdict
from tests.conftest import free_port


def judge_config(server, **extra) -> JudgeConfig:
    provider = {
        "name": "test-judge",
        "base_url": f"http://127.0.0.1:{server.port}/v1",
        "model": "judge-1",
        "api_key_required": False,
        "backoff_s": 0.01,
        "max_tokens": 64,
    }
    return from_dict(JudgeConfig, {"provider": provider, **extra})


def test_win_rate_counts_wins_and_half_ties_with_positions_alternated(judge_server):
    words = ["abc", "dog", "cat", "sun", "sky", "map"]
    questions = [f"Reverse the letters of: {w}" for w in words]
    right = [w[::-1] for w in words]
    # samples 0-2: only the student is right; 3: both right; 4-5: only the teacher is right
    student = right[:4] + ["nope", "nope"]
    teacher = ["nope", "nope", "nope"] + right[3:]
    metrics, outcomes = judge_win_rate(judge_config(judge_server), questions, student, teacher)

    assert outcomes == ["student", "student", "student", "tie", "teacher", "teacher"]
    assert metrics["judge_win_rate"] == pytest.approx((3 + 0.5) / 6)
    assert metrics["judge_tie_rate"] == pytest.approx(1 / 6)
    assert metrics["judge_samples"] == 6 and metrics["judge_errors"] == 0
    assert judge_server.requests >= 7  # six verdicts, after one 429 that was retried


def test_max_samples_limits_the_requests(judge_server):
    before = judge_server.requests
    metrics, outcomes = judge_win_rate(
        judge_config(judge_server, max_samples=2), ["Reverse the letters of: ab"] * 5, ["ba"] * 5, ["ba"] * 5
    )
    assert len(outcomes) == 2 and metrics["judge_win_rate"] == 0.5 and judge_server.requests - before == 2


def test_verdict_parsing_takes_the_last_verdict_line():
    assert parse_verdict("A is wrong.\nVERDICT: B") == "B"
    assert parse_verdict("VERDICT: A\n... on reflection\n**VERDICT: tie**") == "TIE"
    assert parse_verdict("Answer A is better.") is None


def test_judge_config_is_checked():
    with pytest.raises(ConfigError, match="judge.max_samples: 0 must be at least 1"):
        from_dict(JudgeConfig, {"provider": {"base_url": "http://x/v1", "model": "m"}, "max_samples": 0})


def test_an_unreachable_judge_fails_before_any_sample_with_one_clear_error():
    from components.common.errors import InputError

    port = free_port()  # a port that was free a moment ago: nothing listens there

    config = from_dict(
        JudgeConfig,
        {
            "provider": {
                "name": "gone",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "model": "judge-1",
                "api_key_required": False,
                "max_retries": 0,
            }
        },
    )
    with pytest.raises(InputError, match="unreachable"):
        judge_win_rate(config, ["q"], ["a"], ["a"])
