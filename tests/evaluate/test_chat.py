"""`python -m components.evaluate.chat <model dir>` answers prompts, from a pipe one line each, through the
eval stage's generation (issue 29 item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def chat(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "components.evaluate.chat", *args],
        input=stdin,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_each_piped_line_gets_one_answer_line(tiny_model_dir):
    result = chat(
        str(tiny_model_dir), "--max-new-tokens", "4", stdin="Reverse the letters of: cat\n\nhello\n"
    )
    assert result.returncode == 0, result.stderr
    answers = result.stdout.splitlines()
    assert len(answers) == 2


def test_a_folder_that_is_no_model_is_one_line_and_exit_2(tmp_path):
    result = chat(str(tmp_path), stdin="hi\n")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: model: {tmp_path} is not a Hugging Face model folder (no config.json)"
    ]
