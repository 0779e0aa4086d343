"""Checkpoints in the run-scoped store: written every N steps, the last K kept, the newest complete one resumed.

Layout under `runs/<run_id>/train/checkpoints/`:

    step-00000200/trainable.safetensors   the trainable weights only (adapters, or all for full FT)
    step-00000200/optimizer.pt            optimizer state
    step-00000200/trainer.json            step, data position, scheduler, curriculum stage, RNG states
    step-00000200/COMPLETE                written last: every file's size and sha256, and the run that
                                          wrote it (run_id, pod, configuration fingerprint)

A pod killed while uploading leaves a folder without COMPLETE (or with a file missing): such a
folder is never resumed from and is deleted by the next successful save. Under DeepSpeed the folder holds
accelerate's `save_state` output (sharded ZeRO state) instead of the first two files.

The bucket may be written by others, and DeepSpeed and accelerate unpickle their state files (code runs
as they load). So a resume fetches only the files COMPLETE lists, checks each one's size and sha256, and
refuses the checkpoint if any differs; the project's own files are loaded with `weights_only=True`. It
also refuses a checkpoint written under another configuration (`run_fingerprint`), naming the fields
that differ: resuming it would mix two trainings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from components.common.config import to_dict
from components.common.errors import InputError
from components.common.runs import process_owner
from components.common.store import ArtifactStore, file_digest, path_under

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
NAME = re.compile(r"^step-(\d{8})$")

# Fields that say where things go or how often they are logged and saved, and switches that trade speed
# for memory without changing the arithmetic: a retry may change them and still resume. The input
# folders are compared by content instead of by path (a multi-node pod downloads them elsewhere).
NOT_FINGERPRINTED = {
    "model_dir",
    "data_dir",
    "datasets",
    "kd.teacher_dir",
    "output_dir",
    "tensorboard_dir",
    "store_uri",
    "run_id",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "report_to",
    "tensorboard_sync_seconds",
    "launcher",
    "gradient_checkpointing",
    "compile",
}
# Files up to this size are hashed whole; larger ones (model weights) count by name and size.
HASHED_BYTES = 64 * 1024 * 1024


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def folder_digest(folder: str | Path, only: str = "*") -> str:
    """What a folder holds: names and sizes of its files matching `only`, and the content of small ones."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob(only)):
        if path.is_file():
            size = path.stat().st_size
            content = file_digest(path) if size <= HASHED_BYTES else ""
            digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0{content}\n".encode())
    return digest.hexdigest()


def run_fingerprint(config) -> dict[str, Any]:
    """The run and what decides its weights: the config's fields (flattened, dotted), its inputs' content."""
    fields = {
        name: value for name, value in _flatten(to_dict(config)).items() if name not in NOT_FINGERPRINTED
    }
    inputs = {
        "model_dir": folder_digest(config.model_dir),
        "data_dir": folder_digest(config.data_dir, "train.jsonl"),
    }
    for name, folder in sorted(config.datasets.items()):
        inputs[f"datasets.{name}"] = folder_digest(folder, "train.jsonl")
    if config.kd.teacher_dir:
        inputs["kd.teacher_dir"] = folder_digest(config.kd.teacher_dir)
    return {"run_id": config.run_id, "config": fields, "inputs": inputs}


def _flatten(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in values.items():
        dotted = f"{where}.{name}" if where else name
        if isinstance(value, dict) and dotted != "datasets":
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def fingerprint_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'field: old -> new' for every fingerprinted field or input that differs (inputs: 'content differs')."""
    differences = []
    old, new = stored.get("config", {}), current["config"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            differences.append(f"{name}: {old.get(name)!r} -> {new.get(name)!r}")
    old, new = stored.get("inputs", {}), current["inputs"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            differences.append(f"{name}: its content differs")
    return differences


class CheckpointStore:
    def __init__(self, store: ArtifactStore, keep: int, run: dict[str, Any] | None = None):
        """`run` (run_id and `run_fingerprint`) is recorded in every checkpoint and checked on resume."""
        self.store = store
        self.keep = keep
        self.run = run

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
        return all(f"{name}/{rel}" in keys for rel in self.manifest(step)["files"])

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        folders = self._steps()
        for step in sorted(folders, reverse=True):
            if self._is_complete(step, folders[step]):
                return step
            log.warning("checkpoint %s is incomplete (interrupted upload); ignoring it", step_name(step))
        return None

    def manifest(self, step: int) -> dict[str, Any]:
        return json.loads(self.store.read_text(f"{step_name(step)}/{MARKER}"))

    def save(self, step: int, local_dir: Path) -> None:
        """Upload `local_dir` as checkpoint `step`, mark it complete, then prune old and partial ones."""
        self.begin(step)
        self.complete(step, self.upload(step, local_dir))

    def begin(self, step: int) -> None:
        """Clear whatever an interrupted earlier attempt left under this step's name."""
        self.store.delete(step_name(step))

    def upload(self, step: int, local_dir: Path) -> dict[str, dict[str, Any]]:
        """Upload every file of `local_dir` into checkpoint `step`; returns relative path -> size, sha256."""
        files = {}
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                files[rel] = {"size": path.stat().st_size, "sha256": file_digest(path)}
                self.store.upload_file(path, f"{step_name(step)}/{rel}")
        return files

    def complete(self, step: int, files: dict[str, dict[str, Any]]) -> None:
        """Write the marker (last, once every file is stored), then prune."""
        run = {**(self.run or {}), "owner": process_owner()}
        self.store.write_text(
            f"{step_name(step)}/{MARKER}", json.dumps({"step": step, "files": files, "run": run})
        )
        self._prune(step)

    def _prune(self, newest: int) -> None:
        folders = self._steps()
        complete = sorted(s for s in folders if self._is_complete(s, folders[s]))
        keep = set(complete[-self.keep :])
        for step in folders:
            if step not in keep and step != newest:
                self.store.delete(step_name(step))

    def check_resumable(self, step: int) -> None:
        """Refuse checkpoint `step` if another configuration of the run (or another run) wrote it."""
        if self.run is None:
            return
        stored = self.manifest(step).get("run", {})
        differences = fingerprint_differences(stored, self.run)
        if stored.get("run_id") != self.run["run_id"]:
            differences.insert(0, f"run_id: {stored.get('run_id')!r} -> {self.run['run_id']!r}")
        if differences:
            more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
            shown = "; ".join(differences[:5]) + more
            raise InputError(
                f"checkpoint {step_name(step)} in {self.store.uri} was written with another configuration "
                f"({shown}); resuming it would mix two trainings. Use a new run_id, or delete "
                f"{self.store.uri} to start this run over"
            )

    def download(self, step: int, local_dir: Path) -> Path:
        """Copy checkpoint `step` into `local_dir`: only the files its marker lists, each one verified."""
        name = step_name(step)
        files = self.manifest(step)["files"]
        if not all(isinstance(entry, dict) and "sha256" in entry for entry in files.values()):
            raise InputError(
                f"checkpoint {name} in {self.store.uri} records no file digests (an older format), so it "
                f"cannot be checked before loading; delete {self.store.uri} to start this run over"
            )
        for rel, entry in files.items():
            local = path_under(Path(local_dir), rel)
            self.store.download_file(f"{name}/{rel}", local)
            if local.stat().st_size != entry["size"] or file_digest(local) != entry["sha256"]:
                raise InputError(
                    f"checkpoint {name}: {rel} in {self.store.uri} is not the file that was saved (its "
                    "size or sha256 differs from the COMPLETE marker); refusing to load it. Someone or "
                    f"something changed the store: delete {self.store.uri}/{name} to resume from an "
                    "earlier checkpoint"
                )
        return Path(local_dir)
