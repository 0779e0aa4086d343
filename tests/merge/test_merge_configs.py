"""Every YAML config shipped with the merge stage loads, and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.config import load_config
from components.merge import Config

SHIPPED = sorted((Path(__file__).parents[2] / "components" / "merge").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    config = load_config(Config, path)
    assert config.output_dir
    assert f"python -m components.merge --config components/merge/{path.name}" in path.read_text()


def test_there_is_a_shipped_config():
    assert SHIPPED
