"""Helpers of the teacher-stage tests: the config of a run against the demo teacher on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.common.config import from_dict
from components.common.store import open_store
from components.teacher import Config
from pipelines.demo_teacher import demo_words, start_teacher_server

REPO = Path(__file__).resolve().parents[2]


def teacher_settings(tmp_path: Path, base_url: str, **overrides: Any) -> dict[str, Any]:
    """The fields of a run asking the demo teacher at `base_url` for tmp_path/prompts.jsonl, writing
    tmp_path/out and the store tmp_path/store, retrying after 10 ms instead of a second. `provider`
    entries are merged into the demo provider's; every other override replaces its field."""
    provider = {"name": "demo", "base_url": base_url, "backoff_s": 0.01, **overrides.pop("provider", {})}
    return {
        "dataset": str(tmp_path / "prompts.jsonl"),
        "output_dir": str(tmp_path / "out"),
        "store_uri": str(tmp_path / "store"),
        "progress_bar": False,
        "provider": provider,
        **overrides,
    }


def teacher_config(tmp_path: Path, base_url: str, **overrides: Any) -> Config:
    return from_dict(Config, teacher_settings(tmp_path, base_url, **overrides))


def demo_prompts(count: int, seed: int = 0) -> list[str]:
    """The prompts `write_demo_dataset(path, count, seed)` writes, in its order."""
    return [f"Reverse the letters of: {word}" for word in demo_words(count, seed)]


def stored_answers(store_uri: str, run_id: str) -> int:
    """How many answers the run's journal holds in the store (one line each in its part files)."""
    store = open_store(store_uri)
    parts = [key for key in store.list(f"runs/{run_id}/teacher") if "/part-" in key]
    return sum(len(store.read_text(key).splitlines()) for key in parts)


def teacher_command(tmp_path: Path, settings: dict[str, Any]) -> list[str]:
    """`python -m components.teacher --config tmp_path/teacher.yaml`, with `settings` written there."""
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(settings))
    return [sys.executable, "-m", "components.teacher", "--config", str(path)]


def run_teacher_cli(tmp_path: Path, settings: dict[str, Any]) -> subprocess.CompletedProcess:
    """The stage's command run to its end, its output captured as text."""
    command = teacher_command(tmp_path, settings)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def start_teacher_cli(tmp_path: Path, settings: dict[str, Any]) -> subprocess.Popen:
    """The stage's command started in the background, its stderr kept as text."""
    command = teacher_command(tmp_path, settings)
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen | None = None) -> None:
    """Poll `condition` for up to a minute; fails naming `what`, or with the stage's error if `process`
    ended first."""
    deadline = time.monotonic() + 60
    while not condition():
        assert process is None or process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def local_teacher_config(tmp_path, model_dir, run_id="local", **provider) -> Config:
    """A teacher stage Config whose provider is the local model `model_dir`."""
    return from_dict(
        Config,
        {
            "dataset": str(tmp_path / "prompts.jsonl"),
            "output_dir": str(tmp_path / run_id),
            "store_uri": str(tmp_path / "store"),
            "run_id": run_id,
            "progress_bar": False,
            "test_ratio": 0.0,
            "on_length": "keep",
            "use_cache": False,
            "provider": {
                "name": "local",
                "model": str(model_dir),
                "max_tokens": 6,
                "batch_size": 4,
                **provider,
            },
        },
    )


FAST_POLLS = {"poll_s": 0.02, "poll_max_s": 0.1}


def batch_settings(tmp_path, server, **batch) -> dict:
    return teacher_settings(
        tmp_path,
        server.base_url,
        mode="batch",
        run_id="batch",
        provider={"price_input_per_m": 1.0, "price_output_per_m": 2.0, "batch_price_factor": 0.5},
        batch={**FAST_POLLS, **batch},
    )


@pytest.fixture
def keyed_server(monkeypatch):
    """The demo teacher on loopback requiring the key sk-test, which TEACHER_API_KEY holds, its host
    approved for the key as the ConfigMap distill-approved-hosts would."""
    from tests.conftest import approve_hosts

    monkeypatch.setenv("TEACHER_API_KEY", "sk-test")
    with start_teacher_server(api_key="sk-test") as running:
        approve_hosts(monkeypatch, running.base_url)
        yield running
