"""docker/cluster.mk, the build/push/submit targets the Makefile includes, printed with `make -n` and the
engine commands they lead to printed by pipelines.container_engine's --dry-run: one build and one push per
stage with the image names of pipelines/images.py, the engine, the platform, the variant and the version
label, and a submit that passes the run config. No container engine is needed to check what would run."""

from __future__ import annotations

import re
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


def engine_commands(make_line: str) -> list[str]:
    """What the make recipe's pipelines.container_engine call runs, printed by its --dry-run."""
    done = subprocess.run(make_line, shell=True, cwd=REPO, capture_output=True, text=True, check=True)
    return [re.sub(r"inputs=[0-9a-f]{32}", "inputs=<digest>", line) for line in done.stdout.splitlines()]


def test_build_makes_every_stage_image_with_the_pipeline_image_names(tmp_path):
    lines = dry_run(
        tmp_path,
        "build",
        "ENGINE=docker",
        "REGISTRY=registry.example.com/ml",
        "TAG=abc1234",
        "PLATFORM=linux/arm64",
        "BUILD_FLAGS=--dry-run",
    )
    (build,) = [line for line in lines if "pipelines.container_engine build" in line]
    assert engine_commands(build) == [
        f"docker build --platform linux/arm64 --file docker/{stage}.Dockerfile --build-arg VERSION=abc1234 "
        f"--label io.kfp-distill.inputs=<digest> --tag registry.example.com/ml/kfp-distill-{stage}:abc1234 ."
        for stage in STAGES
    ]


def test_one_stage_can_be_built_with_extra_build_arguments(tmp_path):
    lines = dry_run(
        tmp_path,
        "build-train",
        "ENGINE=podman",
        "REGISTRY=r.example.com",
        "TAG=v1",
        "BUILD_ARGS=--build-arg FLASH_ATTN=1",
        "BUILD_FLAGS=--dry-run",
    )
    (build,) = [line for line in lines if "pipelines.container_engine build" in line]
    (command,) = engine_commands(build)
    assert command.startswith("podman build --layers")
    assert "--file docker/train.Dockerfile" in command and "--build-arg FLASH_ATTN=1" in command
    assert command.endswith("--tag r.example.com/kfp-distill-train:v1 .")


def test_the_cpu_variant_builds_from_a_given_base_with_a_wheel_folder(tmp_path):
    lines = dry_run(
        tmp_path,
        "build-eval",
        "ENGINE=buildah",
        "VARIANT=cpu",
        "PLATFORM=",
        f"WHEELS={tmp_path}",
        "BASE_IMAGE=localhost/kfp-distill-base:bookworm",
        "BUILD_FLAGS=--dry-run",
    )
    (build,) = [line for line in lines if "pipelines.container_engine build" in line]
    (command,) = engine_commands(build)
    assert command.startswith(
        f"buildah build --layers -v {tmp_path}:/wheels:ro --file docker/eval.Dockerfile"
    )
    for argument in (
        "BASE_IMAGE=localhost/kfp-distill-base:bookworm",
        "TORCH=torch==2.13.0+cpu",
        "TORCH_INDEX=",
    ):
        assert f"--build-arg {argument} " in command


def test_push_pushes_every_stage_image(tmp_path):
    lines = dry_run(tmp_path, "push", "ENGINE=docker", "REGISTRY=registry.example.com/ml", "TAG=abc1234")
    (push,) = [line for line in lines if "pipelines.container_engine push" in line]
    assert engine_commands(push + " --dry-run") == [
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
