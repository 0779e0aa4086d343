"""The eval judge reads JUDGE_API_KEY and follows the teacher's provider rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.evaluate.config import JudgeConfig
from components.evaluate.judge import judge_win_rate

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"header": "planted-header-value-4e6d", "body": "planted-body-value-8a0c"}


def judge_provider(server, **extra) -> dict:
    return {"name": "judge", "base_url": f"http://127.0.0.1:{server.port}/v1", "model": "judge-1", **extra}


def test_the_judge_sends_judge_api_key_not_the_teachers(judge_server, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-teacher")
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge")
    config = from_dict(JudgeConfig, {"provider": judge_provider(judge_server, backoff_s=0.01)})
    assert config.provider.api_key_env == "JUDGE_API_KEY"
    judge_win_rate(config, ["Reverse the letters of: abc"], ["cba"], ["cba"])
    assert judge_server.authorization == "Bearer sk-judge"


def test_the_judge_provider_follows_the_teachers_rules():
    with pytest.raises(ConfigError, match="api_key_env: 'AWS_SECRET_ACCESS_KEY' is not a variable meant"):
        from_dict(JudgeConfig, {"provider": {"model": "m", "api_key_env": "AWS_SECRET_ACCESS_KEY"}})
    with pytest.raises(ConfigError, match="base_url: http://judge.example.com/v1 is plain http"):
        from_dict(JudgeConfig, {"provider": {"model": "m", "base_url": "http://judge.example.com/v1"}})
