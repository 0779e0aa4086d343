"""Reading docker/<stage>.Dockerfile for the packaging tests: instructions, ARG defaults, and the pyproject
extras the image installs (the arguments of its `docker/requirements.py` call)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
sys.path.insert(0, str(DOCKER))
from requirements import requirements, selected_extras  # noqa: E402  (docker/requirements.py is a script, not a package)


def parse(stage: str) -> DockerfileParser:
    return DockerfileParser(path=str(DOCKER / f"{stage}.Dockerfile"))


def instructions(stage: str, name: str) -> list[str]:
    return [item["value"] for item in parse(stage).structure if item["instruction"] == name]


def arg_defaults(stage: str) -> dict[str, str]:
    defaults = {}
    for value in instructions(stage, "ARG"):
        key, _, default = value.partition("=")
        if default or key.strip() not in defaults:  # a stage's bare `ARG X` keeps the global default
            defaults[key.strip()] = default.strip().strip('"')
    return defaults


def installed_extras(stage: str, build_args: dict[str, str] | None = None) -> list[str]:
    """The extras the stage's image installs, built with `build_args` (the ARG defaults otherwise), in the
    order given; `EXTRA=0` words are left out as docker/requirements.py leaves them out."""
    values = {**arg_defaults(stage), **(build_args or {})}
    extras: list[str] = []
    for run in instructions(stage, "RUN"):
        for match in re.finditer(r"requirements\.py ([^>]+)>", run):
            words = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m[1], ""), match[1]).replace("\\", " ")
            for extra in selected_extras(words.split()):
                if extra not in extras:
                    extras.append(extra)
    return extras


def image_requirements(stage: str, build_args: dict[str, str] | None = None) -> list[str]:
    """The requirement lines of the extras the stage's image installs, built with `build_args`."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return requirements(pyproject, installed_extras(stage, build_args))
