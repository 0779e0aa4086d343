"""The eval judge reads JUDGE_API_KEY, and a secret planted in its provider is in no file or log line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.evaluate.config import Config, JudgeConfig
from components.evaluate.judge import judge_win_rate
from components.evaluate.stage import run
from tests.capture_server import capture_server
from tests.conftest import approve_hosts
from tests.evaluate.conftest import eval_config

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"header": "planted-header-value-4e6d", "body": "planted-body-value-8a0c"}


def eval_cli(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    """`python -m components.evaluate --config eval.yaml` on `config`, as a user runs the stage."""
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "components.evaluate", "--config", str(tmp_path / "eval.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=600,
    )


def judge_provider(server, **extra) -> dict:
    return {"name": "judge", "base_url": f"http://127.0.0.1:{server.port}/v1", "model": "judge-1", **extra}


def test_the_judge_sends_judge_api_key_not_the_teachers(judge_server, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-teacher")
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge")
    approve_hosts(monkeypatch, f"http://127.0.0.1:{judge_server.port}")
    config = from_dict(JudgeConfig, {"provider": judge_provider(judge_server, backoff_s=0.01)})
    assert config.provider.api_key_env == "JUDGE_API_KEY"
    judge_win_rate(config, ["Reverse the letters of: abc"], ["cba"], ["cba"])
    assert judge_server.authorization == "Bearer sk-judge"


def test_the_judge_provider_follows_the_teachers_rules():
    with pytest.raises(ConfigError, match="api_key_env: 'AWS_SECRET_ACCESS_KEY' is not a variable meant"):
        from_dict(JudgeConfig, {"provider": {"model": "m", "api_key_env": "AWS_SECRET_ACCESS_KEY"}})
    with pytest.raises(ConfigError, match="base_url: http://judge.example.com/v1 is plain http"):
        from_dict(JudgeConfig, {"provider": {"model": "m", "base_url": "http://judge.example.com/v1"}})


def test_config_repr_hides_the_judges_header_and_body_values(judge_server):
    provider = judge_provider(
        judge_server, extra_headers={"X-Tenant": SECRETS["header"]}, extra_body={"token": SECRETS["body"]}
    )
    config = Config(
        student_dir="b", trained_dir="m", data_dir="d", output_dir="o", judge=JudgeConfig(provider)
    )
    shown = repr(config)
    assert "X-Tenant" in shown and not [s for s in SECRETS.values() if s in shown]


def test_an_eval_run_writes_and_logs_no_planted_secret(
    tiny_model_dir, memorized_student_dir, reversal_data_dir, judge_server, tmp_path
):
    out = tmp_path / "eval"
    provider = judge_provider(
        judge_server,
        backoff_s=0.01,
        api_key_required=False,
        extra_headers={"X-Tenant": SECRETS["header"]},
        extra_body={"tenant_token": SECRETS["body"]},
    )
    config = {
        "student_dir": str(tiny_model_dir),
        "trained_dir": str(memorized_student_dir),
        "data_dir": str(reversal_data_dir),
        "output_dir": str(out),
        "max_new_tokens": 12,
        "batch_size": 4,
        "device": "cpu",
        "judge": {"provider": provider},
    }
    before = judge_server.requests
    done = eval_cli(tmp_path, config)
    assert done.returncode == 0, done.stderr
    assert judge_server.requests > before  # the judge was asked, with the planted header and body
    written = {str(p): p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()}
    assert {"eval.json", "report.html"} <= {Path(p).name for p in written}
    texts = {"stdout": done.stdout, "stderr": done.stderr, **written}
    assert [(where, name) for where, text in texts.items() for name, s in SECRETS.items() if s in text] == []
    assert '"X-Tenant": "***"' in written[str(out / "eval.json")]


QUERY_SECRET = "planted-query-value-5c1f"


def test_a_key_in_the_judge_urls_query_is_hidden_in_the_config_repr_and_the_stage_error(
    tiny_model_dir, memorized_student_dir, reversal_data_dir, tmp_path
):
    url = f"http://127.0.0.1:9/v1?api-version=1&api-key={QUERY_SECRET}"  # nothing listens on port 9
    provider = {"name": "judge", "base_url": url, "model": "judge-1", "api_key_required": False}
    fields = {
        "student_dir": str(tiny_model_dir),
        "trained_dir": str(memorized_student_dir),
        "data_dir": str(reversal_data_dir),
        "output_dir": str(tmp_path / "eval"),
        "max_new_tokens": 4,
        "max_samples": 4,
        "device": "cpu",
        "judge": {"provider": {**provider, "max_retries": 0, "preflight_timeout_s": 2}},
    }
    shown = repr(from_dict(Config, fields))
    assert "api-version=1&api-key=***" in shown and QUERY_SECRET not in shown
    done = eval_cli(tmp_path, fields)
    assert done.returncode == 2 and "api-key=***" in done.stderr, done.stderr
    assert QUERY_SECRET not in done.stdout + done.stderr


TEACHER_KEY, JUDGE_KEY = "sk-teacher-91c2", "sk-judge-4d7a"


def test_the_judge_key_never_reaches_a_host_the_run_named(
    tiny_model_dir, reversal_data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("TEACHER_API_KEY", TEACHER_KEY)
    monkeypatch.setenv("JUDGE_API_KEY", JUDGE_KEY)
    monkeypatch.delenv("DISTILL_APPROVED_API_HOSTS", raising=False)
    with capture_server() as capture:
        judge = {
            "provider": {"name": "judge", "base_url": f"{capture.url}/v1", "model": "j", "max_retries": 0}
        }
        config = eval_config(
            tiny_model_dir, tiny_model_dir, reversal_data_dir, tmp_path / "out", max_samples=2, judge=judge
        )
        with pytest.raises(InputError) as error:
            run(config)
    assert not capture.received(JUDGE_KEY) and not capture.received(TEACHER_KEY)
    assert "not a host approved for the key in $JUDGE_API_KEY" in str(error.value)
