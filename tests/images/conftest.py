"""Fixtures of the image tests: the CPU stage images, built (or reused when unchanged) by `make images-cpu`
with whichever engine works here, and a runner of commands inside them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from pipelines.container_engine import detect_engine, run_in_image
from pipelines.images import STAGES

REPO = Path(__file__).resolve().parents[2]
CPU_IMAGES = {"REGISTRY": "localhost/kfp-distill", "TAG": "cpu"}  # docker/cluster.mk CPU_REGISTRY, CPU_TAG


def make_command(*targets: str) -> list[str]:
    """make in this test's Python environment, which is installed already (`-o`: never reinstalled)."""
    venv = Path(sys.executable).parent.parent
    return ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed", *targets]


def pytest_collection_modifyitems(config, items):
    """The image builds take minutes: a run leaves them out unless its `-m` names them (`-m images`, as
    `make test-images` does), so `make test`, `pytest -m gpu` and `pytest -m "not slow"` never build."""
    if "images" in (config.getoption("markexpr") or ""):
        return
    builds = [item for item in items if item.get_closest_marker("images")]
    if builds:
        config.hook.pytest_deselected(items=builds)
        items[:] = [item for item in items if not item.get_closest_marker("images")]


@pytest.fixture(scope="session")
def make_targets():
    """make_targets(*targets) -> the argv of make in this installed environment."""
    return make_command


@pytest.fixture(scope="session")
def engine() -> str:
    try:
        return detect_engine()
    except SystemExit as error:
        pytest.skip(str(error))


class CpuImages(Mapping):
    """stage -> the name of its CPU image, which `make images-cpu` builds (or finds up to date) the first
    time a test asks for it: a run of some image tests builds only the images they use."""

    def __init__(self) -> None:
        self.ready: set[str] = set()

    def __getitem__(self, stage: str) -> str:
        if stage not in STAGES:
            raise KeyError(stage)
        if stage not in self.ready:
            subprocess.run(
                make_command("images-cpu", f"CPU_STAGES={stage}"), cwd=REPO, check=True, env=os.environ
            )
            self.ready.add(stage)
        return f"{CPU_IMAGES['REGISTRY']}/kfp-distill-{stage}:{CPU_IMAGES['TAG']}"

    def __iter__(self) -> Iterator[str]:
        return iter(STAGES)

    def __len__(self) -> int:
        return len(STAGES)


@pytest.fixture(scope="session")
def cpu_images(engine) -> CpuImages:
    return CpuImages()


@pytest.fixture(scope="session")
def run_in(engine):
    """run_in(image, *argv, mounts={host: path}, environment={...}) -> the completed process, output kept."""

    def run(image: str, *argv: str, **options) -> subprocess.CompletedProcess:
        try:
            return run_in_image(engine, image, list(argv), capture=True, **options)
        except subprocess.CalledProcessError as error:
            raise AssertionError(f"{argv} failed in {image}:\n{error.stdout}\n{error.stderr}") from None

    return run
