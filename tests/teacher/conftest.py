"""Helpers of the teacher-stage tests: the config of a run against the demo teacher on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.common.config import from_dict
from components.teacher import Config


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
