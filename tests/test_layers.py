"""The stage code stands on its own: nothing under components/ imports pipelines/ (the pipeline wires the
stages; image names live in components/common/images.py)."""

import ast
import subprocess
import sys
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[1] / "components"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_components_do_not_import_pipelines():
    offenders = {}
    for path in sorted(COMPONENTS.rglob("*.py")):
        found = sorted(m for m in imported_modules(path) if m.split(".")[0] == "pipelines")
        if found:
            offenders[str(path.relative_to(COMPONENTS.parent))] = found
    assert offenders == {}


def test_the_run_check_loads_no_stage_code():
    """The check task runs in a small image: every stage's Config, and nothing of torch or the clients."""
    heavy = ("torch", "transformers", "peft", "openai", "deepspeed", "huggingface_hub", "boto3")
    probe = f"import sys, pipelines.run_check; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=COMPONENTS.parent
    ).stdout.strip()
    assert loaded == "[]"
