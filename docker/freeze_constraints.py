"""Write docker/constraints.txt: the exact versions, as installed in this environment, of everything the
project's extras pull in, so that every image and the development venv resolve the same releases.

    . .venv/bin/activate && python docker/freeze_constraints.py > docker/constraints.txt

The closure is walked through installed distribution metadata (requirements, their extras and markers),
starting from pyproject.toml's base dependencies and every extra that is installed here. Distributions
the images install but this environment does not (the modelscope extra, the wheel builder of the train
image) are pinned in IMAGE_ONLY.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from requirements import requirements  # noqa: E402  (sibling script, not a package)

HEADER = """\
# Exact versions shared by the images (docker/*.Dockerfile) and the development venv.
# Generated from the development .venv by: python docker/freeze_constraints.py > docker/constraints.txt
# torch is pinned by version only: the CPU images take the +cpu build, the CUDA images PyPI's CUDA build.
"""

# Installed by an image but not by the development venv, so the walk below cannot find their versions.
IMAGE_ONLY = {"modelscope": "1.40.2", "wheel": "0.48.0", "flash-attn": "2.8.3.post2"}


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = default_environment()
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras or {""})


def closure(roots: list[str]) -> dict[str, str]:
    """Installed version of every distribution reachable from `roots`, keyed by canonical name."""
    pinned: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = [(Requirement(root), frozenset()) for root in roots]
    while pending:
        requirement, parent_extras = pending.pop()
        if not _applies(requirement, set(parent_extras)):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        pinned[name] = dist.version.split("+", 1)[0]
        for child in dist.requires or []:
            pending.append((Requirement(child), frozenset(requirement.extras)))
    return pinned


def main() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = list(pyproject["project"].get("optional-dependencies", {}))
    pinned = closure(requirements(pyproject, extras))
    pinned.pop(canonicalize_name(pyproject["project"]["name"]), None)
    pinned.update(IMAGE_ONLY)
    print(HEADER + "\n".join(f"{name}=={version}" for name, version in sorted(pinned.items())))


if __name__ == "__main__":
    main()
