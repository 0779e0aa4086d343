"""pipelines/container_engine.py without building anything: which engine is chosen, the build command each
engine gets, and the inputs digest that decides whether an image is rebuilt or reused."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from pipelines.container_engine import (
    REPO,
    BuildSettings,
    build_command,
    context_files,
    detect_engine,
    inputs_hash,
)


def fake_engines(folder: Path, **exit_codes: int) -> dict[str, str]:
    """Executables named after engines, each exiting with its code (a docker CLI whose daemon is down
    fails `docker info` exactly so), and a PATH holding only them."""
    folder.mkdir(exist_ok=True)
    for name, code in exit_codes.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\nexit {code}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": str(folder)}


def test_a_docker_cli_without_a_daemon_is_passed_over_for_a_working_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_engines(tmp_path / "bin", docker=1, buildah=0)["PATH"])
    assert detect_engine({}) == "buildah"


def test_docker_is_preferred_where_its_daemon_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_engines(tmp_path / "bin", docker=0, podman=0, buildah=0)["PATH"])
    assert detect_engine({}) == "docker"


def test_engine_variable_chooses_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_engines(tmp_path / "bin", docker=1)["PATH"])
    assert detect_engine({"ENGINE": "podman"}) == "podman"
    with pytest.raises(SystemExit, match="ENGINE='kaniko' is not one of docker, podman, buildah"):
        detect_engine({"ENGINE": "kaniko"})


def test_no_working_engine_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_engines(tmp_path / "bin", docker=1)["PATH"])
    with pytest.raises(SystemExit, match="no container engine works here.*apt-get install buildah"):
        detect_engine({})


def test_cpu_variant_takes_torch_from_the_wheel_folder_on_the_given_base(tmp_path):
    settings = BuildSettings(variant="cpu", base_image="localhost/base:bookworm", wheels=str(tmp_path))
    command = build_command("buildah", "train", "r/kfp-distill-train:cpu", settings, label="abc")
    assert command[:3] == ["buildah", "build", "--layers"]
    assert command[command.index("-v") + 1] == f"{tmp_path}:/wheels:ro"
    args = {command[i + 1] for i, word in enumerate(command) if word == "--build-arg"}
    assert {
        "BASE_IMAGE=localhost/base:bookworm",
        "BUILD_BASE_IMAGE=localhost/base:bookworm",
        "PYTHON=python3",
        "TORCH=torch==2.13.0+cpu",
        "TORCH_INDEX=",
        "DS_PREBUILD=0",
    } <= args
    assert command[-5:] == ["--label", "io.kfp-distill.inputs=abc", "--tag", "r/kfp-distill-train:cpu", "."]


def test_cuda_variant_keeps_each_dockerfiles_pinned_bases(tmp_path):
    command = build_command("docker", "train", "r/t:1", BuildSettings(platform="linux/amd64"), label="x")
    assert command[:4] == ["docker", "build", "--platform", "linux/amd64"]
    assert not [word for word in command if word.startswith(("BASE_IMAGE=", "TORCH="))]
    with pytest.raises(SystemExit, match="docker build cannot mount a wheel folder"):
        build_command("docker", "train", "r/t:1", BuildSettings(wheels=str(tmp_path)), label="x")


def test_build_context_is_what_dockerignore_admits():
    files = {path.relative_to(REPO).as_posix() for path in context_files()}
    assert {"pyproject.toml", "docker/requirements.py", "docker/constraints.txt"} <= files
    assert "components/train/trainer.py" in files and "pipelines/images.py" in files
    assert "pipelines/distill_pipeline.yaml" not in files
    # The host-side runner and builder: editing them must not rebuild the images.
    assert "pipelines/run_containers.py" not in files and "pipelines/container_engine.py" not in files
    assert not [f for f in files if f.startswith(("tests/", ".git", "README")) or "__pycache__" in f]


def copy_of_the_build_inputs(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for name in (".dockerignore", "pyproject.toml", "docker", "components", "README.md"):
        source = REPO / name
        target = repo / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("")
    return repo


def test_an_image_is_rebuilt_when_its_inputs_change_and_only_then(tmp_path):
    repo = copy_of_the_build_inputs(tmp_path)
    args = {"TORCH": "torch==2.13.0+cpu"}
    first = inputs_hash("merge", args, repo)
    (repo / "README.md").write_text("edited")
    (repo / "tests" / "test_x.py").write_text("edited")
    assert inputs_hash("merge", args, repo) == first, "files outside the build context changed the digest"
    assert inputs_hash("merge", {"TORCH": "torch==2.13.0"}, repo) != first
    trainer = repo / "components" / "train" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\n")
    assert inputs_hash("merge", args, repo) != first
