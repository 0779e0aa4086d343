"""Remote code (a model repository's own modeling_*.py): off unless a run opts in, and then only the code
of one pinned commit.

    download: {source: hf://Qwen/Qwen-7B-Chat, revision: <40-hex commit>, trust_remote_code: true}

With the opt-in the download stage fetches the repository's Python files from that commit, bypasses the
store's download cache (others may write to the bucket), and writes remote_code.json into the model
folder: the source, the commit and the sha256 of each Python file. A loader passes trust_remote_code=True
only for a folder whose marker lists exactly the Python files the folder holds, with those digests
(`allows_remote_code`), and only when the run opted in as well: train, merge and eval take the same
`student_trust_remote_code` parameter as the download (`opt_in_field`), so a marker someone wrote
into a folder by itself never runs code. Every other folder loads without remote code, as always. Limit: the marker
travels in the model artifact, so whoever can rewrite the pipeline's artifacts can rewrite both.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import field
from pathlib import Path

from components.common.config import exposed
from components.common.errors import ConfigError

MARKER = "remote_code.json"
COMMIT = re.compile(r"[0-9a-f]{40}")
MOVING_REVISIONS = {"main", "master"}


def opt_in_field():
    """The run's opt-in, one pipeline parameter for every stage that loads the student."""
    return field(
        default=False,
        metadata=exposed(
            "student_trust_remote_code",
            "run the student repository's own Python code (older Qwen); needs a commit in student_source@rev.",
        ),
    )


def check_pinned(scheme: str, revision: str | None) -> None:
    """Refuse remote code from anything but a hub source pinned to a commit (hf) or a fixed revision."""
    if scheme not in ("hf", "modelscope"):
        raise ConfigError(
            "trust_remote_code: only hf:// and modelscope:// sources may bring code (pinned to a commit); "
            "models from s3:// or a folder always load without it"
        )
    pinned = bool(revision) and (
        COMMIT.fullmatch(revision) if scheme == "hf" else revision not in MOVING_REVISIONS
    )
    if not pinned:
        raise ConfigError(
            f"trust_remote_code: the code would run in every stage, so pin it: give revision (or @revision) "
            f"as {'the 40-hex commit sha' if scheme == 'hf' else 'a fixed tag or commit'}, not {revision or 'none'!r}"
        )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*.py")) if p.is_file()}


def write_marker(folder: Path, source: str, revision: str) -> None:
    files = {name: _digest(path) for name, path in _code_files(folder).items()}
    marker = {"source": source, "revision": revision, "files": files}
    (folder / MARKER).write_text(json.dumps(marker, indent=2))


def allows_remote_code(folder: str | Path, opted_in: bool) -> bool:
    """True only when the run opted in and the folder is one the download stage fetched with
    trust_remote_code, its code unchanged."""
    if not opted_in:
        return False
    folder = Path(folder)
    try:
        files = json.loads((folder / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    present = _code_files(folder)
    return set(present) == set(files) and all(_digest(present[name]) == files[name] for name in files)
