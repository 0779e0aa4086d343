"""Checkpoints in the run-scoped store: written every N steps, the last K kept, the newest complete one resumed.

Layout under `runs/<run_id>/train/checkpoints/`:

    step-00000200/trainable.safetensors   the trainable weights only (adapters, or all for full FT)
    step-00000200/optimizer.pt            optimizer state
    step-00000200/trainer.json            step, data position, scheduler, curriculum stage, RNG states
    step-00000200/COMPLETE                written last: the list of files with their sizes

A pod killed while uploading leaves a folder without COMPLETE (or with a file missing): such a
folder is never resumed from and is deleted by the next successful save. Under DeepSpeed the folder holds
accelerate's `save_state` output (sharded ZeRO state) instead of the first two files.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from components.common.store import ArtifactStore

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
NAME = re.compile(r"^step-(\d{8})$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    def __init__(self, store: ArtifactStore, keep: int):
        self.store = store
        self.keep = keep

    def _steps(self) -> dict[int, list[str]]:
        """Every checkpoint folder in the store (complete or not) -> its keys."""
        folders: dict[int, list[str]] = {}
        for key in self.store.list(""):
            head, _, _ = key.partition("/")
            match = NAME.match(head)
            if match:
                folders.setdefault(int(match.group(1)), []).append(key)
        return folders

    def _is_complete(self, step: int, keys: list[str]) -> bool:
        name = step_name(step)
        if f"{name}/{MARKER}" not in keys:
            return False
        manifest = json.loads(self.store.read_text(f"{name}/{MARKER}"))
        return all(f"{name}/{rel}" in keys for rel in manifest["files"])

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        folders = self._steps()
        for step in sorted(folders, reverse=True):
            if self._is_complete(step, folders[step]):
                return step
            log.warning("checkpoint %s is incomplete (interrupted upload); ignoring it", step_name(step))
        return None

    def save(self, step: int, local_dir: Path) -> None:
        """Upload `local_dir` as checkpoint `step`, mark it complete, then prune old and partial ones."""
        self.begin(step)
        self.complete(step, self.upload(step, local_dir))

    def begin(self, step: int) -> None:
        """Clear whatever an interrupted earlier attempt left under this step's name."""
        self.store.delete(step_name(step))

    def upload(self, step: int, local_dir: Path) -> dict[str, int]:
        """Upload every file of `local_dir` into checkpoint `step`; returns relative path -> size."""
        files = {}
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                self.store.upload_file(path, f"{step_name(step)}/{rel}")
                files[rel] = path.stat().st_size
        return files

    def complete(self, step: int, files: dict[str, int]) -> None:
        """Write the marker (last, once every file is stored), then prune."""
        self.store.write_text(f"{step_name(step)}/{MARKER}", json.dumps({"step": step, "files": files}))
        self._prune(step)

    def _prune(self, newest: int) -> None:
        folders = self._steps()
        complete = sorted(s for s in folders if self._is_complete(s, folders[s]))
        keep = set(complete[-self.keep :])
        for step in folders:
            if step not in keep and step != newest:
                self.store.delete(step_name(step))

    def download(self, step: int, local_dir: Path) -> Path:
        """Copy checkpoint `step` into `local_dir`."""
        self.store.download_dir(step_name(step), Path(local_dir))
        return Path(local_dir)
