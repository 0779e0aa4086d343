"""Print the requirements of pyproject.toml's base dependencies plus the named extras, one per line.

The Dockerfiles install these before copying the source, so that the dependency layer is rebuilt only when
pyproject.toml or docker/constraints.txt change, never when the code does:

    python docker/requirements.py train deepspeed qlora pipeline > /tmp/requirements.txt
    pip install -r /tmp/requirements.txt -c docker/constraints.txt

A word `EXTRA=1` names EXTRA, `EXTRA=0` leaves it out: the form a Dockerfile's 0/1 build argument takes
(`vllm=${VLLM}`). Self-references such as `kfp-distill[train,merge]` are expanded in place.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

SELF_REFERENCE = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]+)\s*\[(?P<extras>[^\]]+)\]\s*$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The base dependencies and those of `extras`, self-references expanded, in first-seen order."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    own_name = _normalize(project["name"])
    seen_extras: set[str] = set()
    result: list[str] = list(project.get("dependencies", []))

    def add(extra: str) -> None:
        if extra in seen_extras:
            return
        if extra not in optional:
            raise SystemExit(
                f"unknown extra {extra!r}; pyproject.toml defines: {', '.join(sorted(optional))}"
            )
        seen_extras.add(extra)
        for requirement in optional[extra]:
            match = SELF_REFERENCE.match(requirement)
            if match and _normalize(match["name"]) == own_name:
                for inner in match["extras"].split(","):
                    add(inner.strip())
            elif requirement not in result:
                result.append(requirement)

    for extra in extras:
        add(extra)
    return result


def selected_extras(words: list[str]) -> list[str]:
    """The extras the words name: `EXTRA`, or `EXTRA=1`; `EXTRA=0` names none."""
    chosen = []
    for word in words:
        extra, switch, value = word.partition("=")
        if switch and value not in ("0", "1"):
            raise SystemExit(f"{word!r}: a switched extra is EXTRA=1 or EXTRA=0 (a build argument's 0 or 1)")
        if not switch or value == "1":
            chosen.append(extra)
    return chosen


def pyproject_path(script_dir: Path) -> Path:
    """pyproject.toml beside the script (an image build copies both to /build), else the repository's."""
    for folder in (script_dir, script_dir.parent):
        if (folder / "pyproject.toml").is_file():
            return folder / "pyproject.toml"
    raise SystemExit(f"no pyproject.toml in {script_dir} or {script_dir.parent}")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python docker/requirements.py EXTRA [EXTRA ...]")
    pyproject = tomllib.loads(pyproject_path(Path(__file__).resolve().parent).read_text())
    print("\n".join(requirements(pyproject, selected_extras(argv))))


if __name__ == "__main__":
    main(sys.argv[1:])
