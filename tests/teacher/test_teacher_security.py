"""Run parameters are untrusted: templates cannot run code, keys go only where meant, secrets stay hidden.

Templates render in Jinja's sandbox and are tried at config load; `api_key_env` names only API-key
variables; plain http only to loopback or the cluster; local inputs never come from /proc, /sys, /dev or
mounted Secrets; the judge has its own key; and a secret planted in extra_headers, extra_body or a URL's
user:password@ appears in no file a run writes and in no line it logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.common.providers import resolve_provider
from components.common.records import read_records
from components.teacher import Config, ProviderConfig
from components.teacher.readers import read_prompts
from components.teacher.stage import run
from components.teacher.templates import render_file_template
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from tests.conftest import approve_hosts
from tests.teacher.conftest import run_teacher_cli


def load(tmp_path, **fields) -> Config:
    data = {"dataset": str(tmp_path / "prompts.jsonl"), "output_dir": str(tmp_path / "out"), **fields}
    return from_dict(Config, data)


# Templates render in a sandbox, and a template that reaches for Python internals stops the load.

SHELL = "{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}"


def test_a_prompt_template_that_reaches_for_a_shell_is_refused_at_load_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=r"^prompt_template: access to attribute '__init__' .* is unsafe"):
        load(tmp_path, prompt_template=SHELL % marker)
    assert not marker.exists()


def test_text_and_judge_template_files_are_sandboxed_too(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.j2"
    evil.write_text("{{ chunk }} " + SHELL % marker)
    with pytest.raises(ConfigError, match=r"^text\.template '.*evil\.j2': access to attribute '__init__'"):
        load(tmp_path, text={"template": str(evil)})
    evil.write_text("{{ lipsum.__globals__['os'].system('touch " + str(marker) + "') }}")
    with pytest.raises(
        ConfigError, match=r"^judge\.template '.*evil\.j2': access to attribute '__globals__'"
    ):
        load(tmp_path, judge={"enabled": True, "template": str(evil)})
    assert not marker.exists()


def test_a_format_template_may_only_name_prompt():
    with pytest.raises(ConfigError, match=r"prompt_template: \{prompt\.__class__\} is not allowed"):
        from_dict(Config, {"dataset": "d.jsonl", "output_dir": "o", "prompt_template": "{prompt.__class__}"})


def test_safe_templates_still_render_with_filters_and_loops():
    assert render_file_template("qa", chunk="Some text.").endswith("Passage:\nSome text.")
    config = from_dict(
        Config,
        {
            "dataset": "d.jsonl",
            "output_dir": "o",
            "prompt_template": "{% for w in prompt.split() %}{{ w|upper }} {% endfor %}",
        },
    )
    from components.teacher.templates import render_prompt_template

    assert render_prompt_template(config.prompt_template, "a b") == "A B "


# api_key_env names only key variables; plain http only to loopback or the cluster.


@pytest.mark.parametrize(
    "name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "HF_TOKEN", "PATH", "AWS_X_API_KEY"]
)
def test_api_key_env_refuses_variables_not_meant_for_api_keys(name):
    with pytest.raises(ConfigError, match=rf"api_key_env: '{name}' is not a variable meant for an API key"):
        ProviderConfig(name="deepseek", api_key_env=name)


@pytest.mark.parametrize("name", ["TEACHER_API_KEY", "JUDGE_API_KEY", "DEEPSEEK_API_KEY"])
def test_api_key_env_accepts_the_pipeline_secrets_and_the_api_key_pattern(name):
    assert ProviderConfig(name="deepseek", api_key_env=name).api_key_env == name


def test_a_run_naming_the_store_credentials_as_its_key_sends_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "store-secret")
    write_demo_dataset(tmp_path / "prompts.jsonl", 3)
    with start_teacher_server() as server:
        with pytest.raises(ConfigError, match="provider.api_key_env: 'AWS_SECRET_ACCESS_KEY'"):
            run(
                load(
                    tmp_path,
                    provider={
                        "name": "demo",
                        "base_url": server.base_url,
                        "api_key_env": "AWS_SECRET_ACCESS_KEY",
                    },
                )
            )
        assert server.teacher.total_requests == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://api.deepseek.com/v1",
        "http://127.0.0.1:8000/v1",
        "http://127.8.9.10/v1",
        "http://localhost:8000/v1",
        "http://[::1]:8000/v1",
        "http://vllm:8000/v1",
        "http://vllm.models.svc:8000/v1",
        "http://vllm.models.svc.cluster.local:8000/v1",
    ],
)
def test_https_anywhere_and_plain_http_to_loopback_or_the_cluster_are_accepted(url):
    assert ProviderConfig(name="x", base_url=url).base_url == url


@pytest.mark.parametrize("url", ["http://api.example.com/v1", "http://10.0.0.5:8000/v1", "http://8.8.8.8/v1"])
def test_plain_http_elsewhere_needs_allow_insecure_http(url):
    with pytest.raises(ConfigError, match=r"base_url: .* is plain http .* allow_insecure_http: true"):
        ProviderConfig(name="x", base_url=url)
    assert ProviderConfig(name="x", base_url=url, allow_insecure_http=True).base_url == url


@pytest.mark.parametrize("url", ["ftp://host/v1", "file:///etc/passwd", "api.example.com/v1"])
def test_base_url_must_be_http_or_https(url):
    with pytest.raises(ConfigError, match="is not an http\\(s\\) URL"):
        ProviderConfig(name="x", base_url=url)


def test_a_presets_file_cannot_bring_plain_http_in(tmp_path):
    presets = tmp_path / "teachers.yaml"
    presets.write_text(
        yaml.safe_dump({"providers": {"lab": {"base_url": "http://lab.example.com/v1", "model": "m"}}})
    )
    with pytest.raises(ConfigError, match=r"providers\.lab\.base_url: .* is plain http"):
        resolve_provider(ProviderConfig(name="lab"), str(presets))
    with pytest.raises(ConfigError, match=r"providers\.lab\.base_url: .* is plain http"):
        resolve_provider(ProviderConfig(name="lab", allow_insecure_http=True), str(presets))
    lab = {"base_url": "http://lab.example.com/v1", "model": "m", "allow_insecure_http": True}
    presets.write_text(yaml.safe_dump({"providers": {"lab": lab}}))
    with pytest.raises(
        ConfigError, match="provider_config: .* sets allow_insecure_http on lab; only the image's"
    ):
        resolve_provider(ProviderConfig(name="lab"), str(presets))


# Local inputs never come from the pod's secret-bearing folders.


@pytest.mark.parametrize(
    "path",
    [
        "/proc/self/environ",
        "/sys/class",
        "/dev/stdin",
        "/var/run/secrets/kubernetes.io/token",
        "/run/secrets/x",
    ],
)
def test_dataset_under_a_secret_bearing_folder_is_refused_at_load(tmp_path, path):
    with pytest.raises(ConfigError, match=rf"^dataset: {path} lies under /"):
        load(tmp_path, dataset=path, dataset_format="text")


def test_a_symlink_to_proc_is_refused_as_dataset_template_or_presets(tmp_path):
    link = tmp_path / "notes.txt"
    link.symlink_to("/proc/self/environ")
    with pytest.raises(ConfigError, match=r"^dataset: .*notes\.txt lies under /proc"):
        load(tmp_path, dataset=str(link))
    template = tmp_path / "mine.j2"
    template.symlink_to("/proc/self/environ")
    with pytest.raises(ConfigError, match=r"text\.template: .*mine\.j2 lies under /proc"):
        load(tmp_path, text={"template": str(template)})
    with pytest.raises(ConfigError, match=r"provider_config: .*notes\.txt lies under /proc"):
        resolve_provider(ProviderConfig(name="lab"), str(link))


def test_a_dataset_folder_holding_a_symlink_to_the_environment_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANTED_SECRET", "planted-environment-secret")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("An ordinary passage of text. It has two sentences.")
    (folder / "b.txt").symlink_to("/proc/self/environ")
    config = load(tmp_path, dataset=str(folder), dataset_format="text")
    with pytest.raises(ConfigError, match=r"^dataset: .*b\.txt lies under /proc"):
        list(read_prompts(config))


# The judge reads JUDGE_API_KEY unless told otherwise.


def write_referenced_dataset(path: Path) -> None:
    lines = [{"prompt": f"Reverse the letters of: {w}", "reference": w[::-1]} for w in ("abc", "sun")]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_the_judge_reads_its_own_key_and_never_the_teachers(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-teacher")
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge")
    write_referenced_dataset(tmp_path / "prompts.jsonl")
    with (
        start_teacher_server(api_key="sk-teacher") as teacher,
        start_teacher_server(api_key="sk-judge") as judge,
    ):
        approve_hosts(monkeypatch, teacher.base_url, judge.base_url)
        config = load(
            tmp_path,
            store_uri=str(tmp_path / "store"),
            progress_bar=False,
            provider={"name": "demo", "base_url": teacher.base_url, "api_key_required": True},
            judge={
                "enabled": True,
                "provider": {"name": "demo", "base_url": judge.base_url, "api_key_required": True},
            },
        )
        result = run(config)
        assert judge.teacher.last_headers["authorization"] == "Bearer sk-judge"
    assert result.metrics["records"] == 2
    assert {r.judge["verdict"] for r in read_records(tmp_path / "out" / "train.jsonl")} == {"accept"}


def test_a_judge_on_the_teachers_provider_still_needs_judge_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-shared")
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    write_referenced_dataset(tmp_path / "prompts.jsonl")
    with start_teacher_server(api_key="sk-shared") as server:
        approve_hosts(monkeypatch, server.base_url)
        config = load(
            tmp_path,
            store_uri=str(tmp_path / "store"),
            progress_bar=False,
            provider={"name": "demo", "base_url": server.base_url, "api_key_required": True},
            judge={"enabled": True},
        )
        assert config.judge.provider.api_key_env == "JUDGE_API_KEY"
        with pytest.raises(InputError, match="environment variable JUDGE_API_KEY is not set"):
            run(config)
        monkeypatch.setenv("JUDGE_API_KEY", "sk-shared")
        assert run(config).metrics["records"] == 2


# Planted secrets appear in no file of a run and in no logged line, nor in a config's repr.

SECRETS = {"header": "planted-header-value-7f3a", "body": "planted-body-value-9c1e"}
PASSWORD = "planted-pw-2b8d"


def secret_provider(base_url: str) -> dict:
    return {
        "name": "demo",
        "base_url": base_url,
        "extra_headers": {"X-Tenant": SECRETS["header"]},
        "extra_body": {"tenant_token": SECRETS["body"], "enable_thinking": True},
    }


def leaks(texts: dict[str, str]) -> list[tuple[str, str]]:
    return [(where, name) for where, text in texts.items() for name, s in SECRETS.items() if s in text]


def test_config_repr_hides_header_and_body_values(tmp_path):
    config = load(tmp_path, provider=secret_provider("http://127.0.0.1:9/v1"), judge={"enabled": True})
    shown = repr(config)
    assert "X-Tenant" in shown and "'enable_thinking': True" in shown
    assert leaks({"repr": shown}) == []


def test_a_teacher_run_writes_and_logs_no_planted_secret(tmp_path):
    write_referenced_dataset(tmp_path / "prompts.jsonl")
    work = tmp_path / "run"
    with start_teacher_server() as server:
        config = {
            "dataset": str(tmp_path / "prompts.jsonl"),
            "output_dir": str(work / "out"),
            "store_uri": str(work / "store"),
            "provider": secret_provider(server.base_url),
            "judge": {"enabled": True},
            "progress_bar": False,
        }
        done = run_teacher_cli(tmp_path, config)
        assert done.returncode == 0, done.stderr
        # The secrets were really used: the header reached the server.
        assert server.teacher.last_headers["x-tenant"] == SECRETS["header"]
    written = {str(p): p.read_text(errors="replace") for p in work.rglob("*") if p.is_file()}
    assert len(written) >= 6  # train, test, rejected, summary, the journal and the cache
    assert leaks({"stdout": done.stdout, "stderr": done.stderr, **written}) == []
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["config"]["provider"]["extra_body"] == {"tenant_token": "***", "enable_thinking": True}
    assert summary["config"]["judge"]["provider"]["extra_headers"] == {"X-Tenant": "***"}
    params = read_records(work / "out" / "train.jsonl")[0].teacher["params"]
    assert params["extra_body"]["enable_thinking"] is True
    assert params["extra_body"]["tenant_token"].startswith("sha256:")


def test_a_password_in_base_url_is_refused_without_being_shown(tmp_path):
    write_referenced_dataset(tmp_path / "prompts.jsonl")
    with start_teacher_server() as server:
        base_url = server.base_url.replace("http://", f"http://someone:{PASSWORD}@")
        config = {"dataset": str(tmp_path / "prompts.jsonl"), "output_dir": str(tmp_path / "out")}
        done = run_teacher_cli(tmp_path, {**config, "provider": {"name": "demo", "base_url": base_url}})
        assert server.teacher.total_requests == 0
    assert done.returncode == 2
    assert done.stderr.startswith("error: provider.base_url: http://***@127.0.0.1:")
    assert "holds user:password@" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


def test_every_log_line_has_url_passwords_redacted(capsys):
    import logging

    from components.common.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging()
        logging.getLogger("any.module").warning(
            "retrying %s", f"https://someone:{PASSWORD}@api.example.com/v1"
        )
        out = capsys.readouterr().out
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert "retrying https://***@api.example.com/v1" in out and PASSWORD not in out


def test_redaction_rules():
    from components.common.redact import redact_config, redact_urls

    assert redact_urls("see https://me:p@ss@host:1/v1?a=b and s3://k:s@bucket/x") == (
        "see https://***@host:1/v1?a=b and s3://***@bucket/x"
    )
    assert redact_urls("mail me@example.com at https://host/v1") == "mail me@example.com at https://host/v1"
    shown = redact_config(
        {
            "a": [{"extra_headers": {"Authorization": "Bearer k"}}],
            "extra_body": {"n": 3, "x": {"y": "s"}, "f": False},
        }
    )
    assert shown == {
        "a": [{"extra_headers": {"Authorization": "***"}}],
        "extra_body": {"n": "***", "x": {"y": "***"}, "f": False},
    }
