"""Configs: the shipped providers and example config load, and mistakes name their field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.common.config import from_dict, load_config
from components.common.errors import ConfigError
from components.common.providers import load_presets, resolve_provider
from components.teacher import Config, ProviderConfig

PACKAGE = Path(__file__).resolve().parents[2] / "components" / "teacher"


@pytest.mark.parametrize("name", sorted(load_presets()))
def test_every_shipped_provider_resolves(name):
    provider = resolve_provider(ProviderConfig(name=name, model="some-model"))
    assert provider.model == "some-model"
    assert provider.is_local or provider.answers_from_dataset or provider.base_url.startswith("http")
    assert provider.price_input_per_m is not None


def test_a_named_provider_fills_only_what_the_run_leaves_unset():
    deepseek = resolve_provider(ProviderConfig(name="deepseek"))
    assert deepseek.base_url == "https://api.deepseek.com/v1" and deepseek.model == "deepseek-reasoner"
    assert deepseek.api_key_env == "TEACHER_API_KEY" and deepseek.api_key_required is True
    mine = resolve_provider(ProviderConfig(name="deepseek", model="deepseek-chat", price_input_per_m=0.27))
    assert (mine.model, mine.price_input_per_m) == ("deepseek-chat", 0.27)
    assert resolve_provider(ProviderConfig(name="vllm", model="qwen")).api_key_required is False


def test_an_unknown_provider_without_base_url_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"provider\.name: 'acme' is not in .*deepseek.*set provider\.base_url"
    ):
        resolve_provider(ProviderConfig(name="acme", model="m"))
    assert resolve_provider(ProviderConfig(name="acme", model="m", base_url="http://acme/v1")).base_url


def test_a_presets_file_of_your_own(tmp_path):
    (tmp_path / "teachers.yaml").write_text(
        yaml.safe_dump(
            {
                "providers": {
                    "lab": {
                        "base_url": "http://lab:8000/v1",
                        "model": "lab-70b",
                        "rpm": 120,
                        "extra_headers": {"X-Team": "nlp"},
                    }
                }
            }
        )
    )
    provider = resolve_provider(ProviderConfig(name="lab"), str(tmp_path / "teachers.yaml"))
    assert (provider.model, provider.rpm, provider.extra_headers) == ("lab-70b", 120, {"X-Team": "nlp"})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"providers": {"lab": {"rpm": "fast"}}}))
    with pytest.raises(ConfigError, match=r"providers\.lab\.rpm: expected int"):
        resolve_provider(ProviderConfig(name="lab", base_url="http://x"), str(tmp_path / "bad.yaml"))


RUN_CONFIGS = sorted(p.name for p in PACKAGE.glob("*.yaml") if p.name != "teacher_config.yaml")


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_shipped_run_config_loads_and_opens_with_its_command(name):
    config = load_config(Config, PACKAGE / name)
    resolve_provider(config.provider, config.provider_config)
    assert f"python -m components.teacher --config components/teacher/{name}" in (PACKAGE / name).read_text()


def test_the_comment_reply_example_wraps_every_comment(tmp_path):
    (tmp_path / "comments.jsonl").write_text('{"prompt": "The app crashed twice today."}\n')
    config = load_config(
        Config, PACKAGE / "comment_reply.yaml", {"dataset": str(tmp_path / "comments.jsonl")}
    )
    from components.teacher.readers import read_prompts

    (prompt,) = read_prompts(config)
    assert prompt.messages[0]["content"].startswith("You are Xiaoyu")
    assert prompt.messages[1]["content"].endswith("Comment: The app crashed twice today.")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"concurrency": 0}, "concurrency: 0 must be at least 1"),
        ({"test_ratio": 1.0}, r"test_ratio: 1.0 must be in \[0, 1\)"),
        ({"on_empty": "ignore"}, "on_empty: 'ignore' is not one of 'retry', 'keep', 'drop'"),
        ({"provider": {"top_logprobs": 5}}, "provider.top_logprobs: set logprobs: true"),
        ({"provider": {"quantization": "4bit"}}, "quantization: applies to the local teacher only"),
        ({"run_id": "a/b"}, "run_id: 'a/b' must be a non-empty name"),
        ({"text": {"overlap_chars": 2000}}, r"overlap_chars: 2000 must be in \[0, chunk_chars\)"),
        ({"dataset_format": "csv"}, "dataset_format: 'csv' is not one of"),
    ],
)
def test_config_mistakes_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Config, {"dataset": "d.jsonl", "output_dir": "out", **fields})


def test_empty_store_uri_defaults_beside_the_output(tmp_path):
    config = from_dict(Config, {"dataset": "d.jsonl", "output_dir": str(tmp_path / "run" / "out")})
    assert config.store_uri == str(tmp_path / "run" / ".store")
