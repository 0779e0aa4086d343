"""The `vllm` extra installs with the shared pins: pip resolves it against docker/constraints.txt without
installing anything (the GPU images install it; CI has no GPU)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not pypi_reachable(), reason="PyPI unreachable: the vllm extra resolves against PyPI")
def test_the_vllm_extra_resolves_with_the_shared_pins(tmp_path):
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    command += ["--report", str(report), "-c", str(REPO / "docker" / "constraints.txt"), ".[vllm]"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "docker" / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert chosen["vllm"] == pins["vllm"]
    for name in ("torch", "transformers", "numpy"):
        assert chosen[name].split("+", 1)[0] == pins[name], name
