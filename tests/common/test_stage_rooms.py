"""Every stage package has the same rooms: config.py (Config), stage.py (run(config) -> Result, with Result
importable from it), component.py (its StageSpec) and __main__.py; the package re-exports Config only, so importing it
stays light (tests/test_layers.py)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
STAGES = sorted(p.name for p in COMPONENTS.iterdir() if (p / "component.py").is_file())


def test_the_stages_are_the_pipelines_six_and_the_served_teacher():
    assert STAGES == ["download", "evaluate", "merge", "register", "teacher", "teacher_server", "train"]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_package_has_the_same_rooms(stage):
    rooms = {"config.py", "stage.py", "component.py", "__main__.py"}
    assert rooms <= {p.name for p in (COMPONENTS / stage).iterdir()}
    module = importlib.import_module(f"components.{stage}.stage")
    package = importlib.import_module(f"components.{stage}")
    config = importlib.import_module(f"components.{stage}.config")
    assert package.Config is config.Config
    signature = inspect.signature(module.run)
    assert list(signature.parameters) == ["config"]
    assert signature.return_annotation in ("Result", module.Result)
