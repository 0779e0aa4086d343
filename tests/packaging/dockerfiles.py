"""Reading docker/<stage>.Dockerfile for the packaging tests: instructions, ARG defaults, and the pyproject
extras the image installs (the arguments of its `docker/requirements.py` call)."""

from __future__ import annotations

import re
from pathlib import Path

from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


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


def installed_extras(stage: str) -> list[str]:
    """The extras the stage's image installs, ARG defaults substituted, in the order given."""
    defaults = arg_defaults(stage)
    extras: list[str] = []
    for run in instructions(stage, "RUN"):
        for match in re.finditer(r"requirements\.py ([^>]+)>", run):
            for word in re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], ""), match[1]).split():
                if word not in extras:
                    extras.append(word)
    return extras
