"""The stage code stands on its own: nothing under components/ imports pipelines/ (the pipeline wires the
stages; image names live in components/common/images.py)."""

import ast
import os
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


def test_no_function_in_pipelines_exceeds_100_lines():
    long = {}
    for path in sorted((COMPONENTS.parent / "pipelines").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 100:
                    long[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}


def test_a_tasks_body_imports_its_stage_spec_under_the_kfp_runtime():
    """KFP runs a task's body with _KFP_RUNTIME=true, where kfp.dsl makes no components: the modules a
    body imports (its stage's spec, the run check) must not make one when imported."""
    stages = ("download", "teacher", "train", "merge", "evaluate", "register")
    probe = "; ".join(
        [f"import components.{stage}.component" for stage in stages] + ["import pipelines.run_check"]
    )
    env = {**os.environ, "_KFP_RUNTIME": "true"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=COMPONENTS.parent, env=env
    )
    assert done.returncode == 0, done.stderr


def test_tests_import_helpers_by_package_path_and_never_another_test():
    """`from tests.<area>.conftest import ...` (or a fixture), never a helper by its bare name through
    pytest's sys.path, nor a test module."""
    tests = COMPONENTS.parent / "tests"
    local = {path.stem for path in tests.rglob("*.py")}
    offenders = {}
    for path in sorted(tests.rglob("*.py")):
        found = sorted(
            m
            for m in imported_modules(path)
            if m.split(".")[0] in local or m.split(".")[-1].startswith("test_")
        )
        if found:
            offenders[str(path.relative_to(tests.parent))] = found
    assert offenders == {}


def test_no_package_under_components_imports_another_but_common():
    """What two stages share lives in components/common/: the provider config, named providers and API
    client the judges use, the InferenceService both the hand-off and the served teacher create, model
    sources and the download cache, the tiny model maker."""
    offenders = {}
    for path in sorted(COMPONENTS.rglob("*.py")):
        owner = path.relative_to(COMPONENTS).parts[0]
        found = sorted(
            module
            for module in imported_modules(path)
            if module.startswith("components.") and module.split(".")[1] not in (owner, "common", "__init__")
        )
        if found:
            offenders[str(path.relative_to(COMPONENTS.parent))] = found
    assert offenders == {}
