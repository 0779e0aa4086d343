"""API keys go only to hosts an administrator approved (components/common/approved_hosts.py), whatever
base_url a run names: a real capture server on loopback, named by a run as the teacher or the judge, never
receives the key; `submit --check` refuses allow_insecure_http from a run, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.approved_hosts import key_may_go_to
from components.common.errors import InputError
from components.teacher.stage import run
from pipelines import submit
from pipelines.demo_teacher import write_demo_dataset
from tests.capture_server import capture_server
from tests.conftest import approve_hosts
from tests.teacher.conftest import teacher_config

TEACHER_KEY, JUDGE_KEY = "sk-teacher-91c2", "sk-judge-4d7a"


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", TEACHER_KEY)
    monkeypatch.setenv("JUDGE_API_KEY", JUDGE_KEY)
    monkeypatch.delenv("DISTILL_APPROVED_API_HOSTS", raising=False)


def attempt(call) -> Exception | None:
    try:
        call()
    except Exception as error:
        return error
    return None


def test_the_teacher_key_never_reaches_a_host_the_run_named(tmp_path, keys):
    write_demo_dataset(tmp_path / "prompts.jsonl", 4, seed=1)
    with capture_server() as capture:
        config = teacher_config(tmp_path, f"{capture.url}/v1", provider={"api_key_required": True})
        error = attempt(lambda: run(config))
    assert not capture.received(TEACHER_KEY)
    assert isinstance(error, InputError) and "is not a host approved for the key in $TEACHER_API_KEY" in str(
        error
    )


def test_a_provider_that_needs_no_key_at_an_unapproved_host_gets_none(tmp_path, keys):
    write_demo_dataset(tmp_path / "prompts.jsonl", 4, seed=1)
    with capture_server() as capture:
        config = teacher_config(tmp_path, f"{capture.url}/v1", provider={"api_key_required": False})
        attempt(lambda: run(config))  # the capture answers 404: the run fails in its preflight
    assert capture.requests and not capture.received(TEACHER_KEY)


def test_approved_hosts_are_the_shipped_providers_and_the_administrators_list(monkeypatch):
    monkeypatch.delenv("DISTILL_APPROVED_API_HOSTS", raising=False)
    assert key_may_go_to("https://api.deepseek.com/v1") and key_may_go_to("https://api.openai.com:443/v1")
    assert not key_may_go_to("http://api.deepseek.com/v1")  # another scheme is another origin
    assert not key_may_go_to("https://llm.corp.example/v1")
    approve_hosts(monkeypatch, "llm.corp.example", "http://vllm.team.svc.cluster.local:8000")
    assert key_may_go_to("https://llm.corp.example/v1")
    assert key_may_go_to("http://vllm.team.svc.cluster.local:8000/v1")
    assert not key_may_go_to("http://vllm.team.svc.cluster.local:9000/v1")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return submit.compile_package(tmp_path_factory.mktemp("compiled") / "distill_pipeline.yaml")


@pytest.mark.parametrize(
    ("assignments", "field"),
    [
        (
            [
                "teacher_base_url=http://capture.example/v1",
                "teacher_overrides.provider.allow_insecure_http=true",
            ],
            "teacher.provider.allow_insecure_http",
        ),
        (
            ["teacher_overrides.judge={enabled: true, provider: {model: j, allow_insecure_http: true}}"],
            "teacher.judge.provider.allow_insecure_http",
        ),
        (
            ["eval_overrides.judge.provider={model: j, allow_insecure_http: true}"],
            "eval.judge.provider.allow_insecure_http",
        ),
    ],
)
def test_submit_check_refuses_allow_insecure_http_from_the_run(package, capsys, assignments, field):
    sets = [arg for assignment in assignments for arg in ("--set", assignment)]
    assert submit.main(["--check", "--package", str(package), *sets]) == 2
    assert capsys.readouterr().err.startswith(f"error: {field}: may not come from a run's parameters")
