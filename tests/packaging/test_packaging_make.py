"""docker/cluster.mk, the build/push/submit targets the Makefile includes, printed with `make -n`: one
build and one push per stage with the image names of pipelines/images.py, the platform and the version
label, and a submit that passes the run config. No Docker engine is needed to check what would run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.images import STAGES

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def dry_run(tmp_path: Path, *arguments: str) -> list[str]:
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        f"BIN := {Path(sys.executable).parent}\nVENV := {tmp_path}/venv\n"
        f"include {REPO}/docker/cluster.mk\n$(VENV)/.installed:\n\t@echo install\n"
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-f", str(makefile), *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [" ".join(line.split()) for line in result.stdout.replace("\\\n", " ").splitlines()]


def test_build_makes_every_stage_image_with_the_pipeline_image_names(tmp_path):
    lines = dry_run(
        tmp_path, "build", "REGISTRY=registry.example.com/ml", "TAG=abc1234", "PLATFORM=linux/arm64"
    )
    builds = [line for line in lines if " build " in line]
    assert builds == [
        f"DOCKER_BUILDKIT=1 docker build --platform linux/arm64 --file docker/{stage}.Dockerfile "
        f"--build-arg VERSION=abc1234 --tag registry.example.com/ml/kfp-distill-{stage}:abc1234 ."
        for stage in STAGES
    ]


def test_one_stage_can_be_built_with_extra_build_arguments(tmp_path):
    lines = dry_run(
        tmp_path,
        "build-train",
        "REGISTRY=r.example.com",
        "TAG=v1",
        "DOCKER_BUILD_ARGS=--build-arg FLASH_ATTN=2.8.3",
    )
    (build,) = [line for line in lines if " build " in line]
    assert "--file docker/train.Dockerfile" in build and "--build-arg FLASH_ATTN=2.8.3" in build
    assert build.endswith("--tag r.example.com/kfp-distill-train:v1 .")


def test_push_pushes_every_stage_image(tmp_path):
    lines = dry_run(tmp_path, "push", "REGISTRY=registry.example.com/ml", "TAG=abc1234")
    assert [line for line in lines if line.startswith("docker push")] == [
        f"docker push registry.example.com/ml/kfp-distill-{stage}:abc1234" for stage in STAGES
    ]


def test_submit_passes_the_run_config_and_the_image_names(tmp_path):
    lines = dry_run(
        tmp_path, "submit", "REGISTRY=r.example.com", "TAG=v1", "RUN_CONFIG=run.yaml", "SUBMIT_ARGS=--wait"
    )
    assert (
        lines[-1]
        == f"REGISTRY=r.example.com TAG=v1 {sys.executable} -m pipelines.submit --config run.yaml --wait"
    )
