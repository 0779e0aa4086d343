"""docker/requirements.py as the Dockerfiles run it: copied with pyproject.toml into /build, away from the
repository, it still finds pyproject.toml (it once looked one folder up and stopped every build)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_requirements_script_reads_the_pyproject_copied_beside_it(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy(REPO / "docker" / "requirements.py", build)
    shutil.copy(REPO / "pyproject.toml", build)
    done = subprocess.run(
        [sys.executable, str(build / "requirements.py"), "download", "modelscope", "pipeline"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "pyyaml>=6.0" in lines and "kfp==2.17.0" in lines
    assert any(line.startswith("modelscope") for line in lines)


def test_requirements_script_still_reads_the_repositorys_pyproject():
    done = subprocess.run(
        [sys.executable, str(REPO / "docker" / "requirements.py"), "merge"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "peft>=0.15" in done.stdout.splitlines()
