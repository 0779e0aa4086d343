"""The stage code stands on its own: nothing under components/ imports pipelines/ (the pipeline wires the
stages; image names live in components/common/images.py)."""

import ast
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
