"""The installed extras match what each stage imports: for every stage, a fresh venv gets exactly the
extras its CPU image installs (torch 2.13.0 first where the extras need it, as the images do, then
`pip install -e '.[extras]'` with docker/constraints.txt), and every module of the stage package must
import there. A module importing something its image lacks fails here instead of on the cluster.

The venvs are cached between runs under ~/.cache/kfp-distill/extras-venvs, keyed by pyproject.toml, the
constraints, the extras and this checkout's path; uv installs them when available (seconds from its
cache), pip otherwise.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from components.common.images import SHARED_IMAGES, STAGE_PACKAGES
from pipelines.container_engine import CPU_BUILD_ARGS
from pipelines.images import STAGES
from tests.packaging.dockerfiles import DOCKER, REPO, installed_extras

sys.path.insert(0, str(DOCKER))
from requirements import requirements  # noqa: E402  (docker/requirements.py is a script, not a package)

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kfp-distill" / "extras-venvs"
IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
failures = []
for package in sys.argv[1:]:
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if info.name.endswith(".__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as error:
            failures.append(f"{info.name}: {type(error).__name__}: {error}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def _install(python: Path, arguments: list[str]) -> None:
    uv = shutil.which("uv")
    if uv:
        links = os.environ.get("PIP_FIND_LINKS", "").split()
        command = [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            *[f"--find-links={p}" for p in links],
        ]
    else:
        command = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*command, *arguments], check=True, cwd=REPO)


def stage_venv(extras: list[str]) -> Path:
    """A venv holding the project with exactly `extras`, built once per input and reused."""
    pyproject_text = (REPO / "pyproject.toml").read_text()
    key = hashlib.sha256(
        "\n".join(
            [pyproject_text, (DOCKER / "constraints.txt").read_text(), ",".join(extras), str(REPO)]
        ).encode()
    ).hexdigest()[:16]
    folder = CACHE / f"{'-'.join(extras)}-{key}"
    python = folder / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be building the same venv
        if not (folder / ".complete").exists():
            for stale in CACHE.glob(f"{'-'.join(extras)}-*"):  # venvs of older pyproject/constraints
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            venv.create(folder, with_pip=shutil.which("uv") is None)
            needed = {Requirement(line).name for line in requirements(tomllib.loads(pyproject_text), extras)}
            if "torch" in needed:
                # The local CPU build of 2.13.0; any other torch would pull several GB of CUDA wheels.
                _install(python, ["torch==2.13.0"])
            _install(python, ["-c", str(DOCKER / "constraints.txt"), "-e", f".[{','.join(extras)}]"])
            (folder / ".complete").touch()
    return python


def shared_steps(stage: str) -> list[str]:
    """The packages of the pipeline steps that run in `stage`'s image (the register step in eval's)."""
    return [f"components.{step}" for step, image in SHARED_IMAGES.items() if image == stage]


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_of_the_stage_imports_with_only_its_image_extras(stage):
    # The CPU variant's extras: the GPU images add vLLM, whose wheels need CUDA.
    python = stage_venv(installed_extras(stage, CPU_BUILD_ARGS))
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [
            str(python),
            "-c",
            IMPORT_EVERY_MODULE,
            STAGE_PACKAGES[stage],
            *shared_steps(stage),
            "components.common",
        ],
        capture_output=True,
        text=True,
        cwd=CACHE,
        env=environment,
    )
    assert result.returncode == 0, (
        f"{stage} image lacks what its code imports:\n{result.stdout}{result.stderr}"
    )


def test_the_extras_venvs_are_isolated_from_each_other():
    python = stage_venv(installed_extras("teacher", CPU_BUILD_ARGS))
    probe = (
        "import importlib.util as u; print([m for m in ('torch', 'transformers', 'peft') if u.find_spec(m)])"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=CACHE, check=True)
    assert result.stdout.strip() == "[]", "the teacher image must stay free of the training stack"
