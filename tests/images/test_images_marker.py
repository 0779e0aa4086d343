"""The image builds run only when asked for with `-m images` (make test-images): `make test`, `-m gpu` and
`-m "not slow"` collect them and leave them out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def selected(*options: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *options,
            str(HERE / "test_stage_images.py"),
        ],
        capture_output=True,
        text=True,
        cwd=HERE.parents[1],
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("options", [(), ("-m", "gpu"), ("-m", "not slow")])
def test_image_builds_are_left_out_unless_asked_for(options):
    assert selected(*options).startswith("no tests collected (17 deselected)")


def test_image_builds_run_under_their_marker():
    assert selected("-m", "images").startswith("17 tests collected")
