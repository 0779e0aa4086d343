"""The README's by-hand stage commands run as written, one after another, each stage reading the previous
one's output through the shipped demo configs (issue 29 item 4)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- by-hand stage commands: tests/test_readme_commands.py runs them -->"

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The lines of the shell block that follows MARKER in the README."""
    text = (REPO / "README.md").read_text()
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_names_each_stage_in_pipeline_order():
    stages = [
        command.split()[2] for command in readme_commands() if command.startswith("python -m components.")
    ]
    assert stages[:5] == [
        "components.download",
        "components.teacher",
        "components.train",
        "components.merge",
        "components.evaluate",
    ]


def test_the_readme_stage_commands_chain(tmp_path):
    # The commands write data/ under the working folder and read the configs from the repository.
    for folder in ("components", "pipelines"):
        (tmp_path / folder).symlink_to(REPO / folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    background = []
    try:
        for command in readme_commands():
            argv = shlex.split(command.removesuffix("&").strip())
            argv[0] = sys.executable if argv[0] == "python" else argv[0]
            if command.endswith("&"):
                background.append(
                    subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
                )
                assert "serving" in background[-1].stdout.readline()
                continue
            stdin = "Reverse the letters of: cat\n" if "components.evaluate.chat" in command else None
            result = subprocess.run(
                argv, cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=3600
            )
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    finally:
        for process in background:
            process.terminate()
            process.wait(timeout=30)
    assert (tmp_path / "data/eval/report.html").is_file()
    assert len(result.stdout.splitlines()) == 1  # the chat's answer to the one prompt piped in
