"""Every config shipped in components/train/configs loads, opens with its run command, and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.config import load_config
from components.train import Config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "components" / "train" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_starts_with_its_command(path):
    config = load_config(Config, path)
    first = path.read_text().splitlines()[0]
    assert (
        first.startswith("# ") and "components.train --config components/train/configs/" + path.name in first
    )
    assert config.output_dir and config.tensorboard_dir
