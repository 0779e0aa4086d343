"""Checkpoints in the run-scoped store: written every N steps, the last K kept, the newest complete one resumed.

Layout under `runs/<run_id>/train/checkpoints/`:

    step-00000200/trainable.safetensors   the trainable weights only (adapters, or all for full FT)
    step-00000200/optimizer.pt            optimizer state
    step-00000200/trainer.json            step, data position, scheduler, curriculum phase, RNG states,
                                          each phase's best-so-far held-out loss (phase_eval.py)
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

Each curriculum phase's best weights (eval_steps) are kept beside the checkpoints, in the same format:

    ../best/<phase>/step-00000150/        the folder output_dir/best/<phase>/ held after the evaluation at
                                          global step 150 (safetensors and json), and its COMPLETE marker

A checkpoint's trainer.json names the best of each phase as of its step, so one folder is kept per best
that a kept checkpoint names (`BestStore.prune`); a resume copies those folders back into output_dir/best/.

What a checkpoint holds: the trainable weights alone (LoRA adapters are megabytes; the frozen base is the
input model and is loaded again on restart). The data position needs no state of its own: the batch stream
is a pure function of (seed, phase, step), so restoring the step restores the order. RNG states make
dropout continue as it would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.common.config import to_dict
from components.common.errors import InputError
from components.common.records import stable_hash
from components.common.runs import process_owner
from components.common.store import ArtifactStore, file_digest, path_under

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
NAME = re.compile(r"^step-(\d{8})$")
# What save_pretrained writes for an adapter or model and its tokenizer, and no pickle: a best folder
# listing any other kind of file is not copied back into output_dir (whoever loads it from there would
# unpickle it).
BEST_SUFFIXES = (".safetensors", ".json", ".txt", ".jinja", ".md", ".model")

# Fields that say where things go or how often they are logged and saved, and switches that trade speed
# for memory without changing the arithmetic: a retry may change them and still resume. The input
# folders are compared by content instead of by path (a multi-node pod downloads them elsewhere).
NOT_FINGERPRINTED = {
    "student_dir",
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
    # Where a multi-node run's job is queued and run does not decide its weights.
    "cluster.engine",
    "cluster.runtime",
    "cluster.queue_name",
    "cluster.priority_class",
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
        "student_dir": folder_digest(config.student_dir),
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
    def __init__(self, store: ArtifactStore, keep: int | None, run: dict[str, Any] | None = None):
        """`run` (run_id and `run_fingerprint`) is recorded in every checkpoint and checked on resume;
        `keep` complete checkpoints are kept (None: the owner prunes, as `BestStore` does)."""
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

    def is_complete(self, step: int) -> bool:
        return self._is_complete(step, self.store.list(step_name(step)))

    def complete_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        folders = self._steps()
        return sorted(step for step in folders if self._is_complete(step, folders[step]))

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        folders = self._steps()
        for step in sorted(folders, reverse=True):
            if self._is_complete(step, folders[step]):
                return step
            log.warning("checkpoint %s is incomplete (interrupted upload); ignoring it", step_name(step))
        return None

    def manifest(self, step: int) -> dict[str, Any]:
        text = self.store.read_text(f"{step_name(step)}/{MARKER}")
        try:
            manifest = json.loads(text)
        except ValueError:
            manifest = None
        if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)):
            raise InputError(
                f"{self.store.uri}/{step_name(step)}/{MARKER} is not a manifest this project wrote (no JSON "
                f"object listing files); delete {self.store.uri}/{step_name(step)}"
            )
        return manifest

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
        if self.keep is not None:
            self._prune(step)

    def _prune(self, newest: int) -> None:
        keep = set(self.complete_steps()[-self.keep :])
        for step in self._steps():
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


class BestStore:
    """Each phase's best weights in the run's store: `<phase>/step-<global step>/`, written and checked like
    a checkpoint (a CheckpointStore per phase, pruned by what the kept checkpoints name)."""

    def __init__(self, store: ArtifactStore, run: dict[str, Any] | None = None):
        self.store = store
        self.run = run

    def _phase(self, phase: str) -> CheckpointStore:
        return CheckpointStore(self.store.child(phase), None, self.run)

    def save(self, phase: str, step: int, folder: Path) -> None:
        """Upload `folder` (output_dir/best/<phase>/) as the phase's best at global step `step`."""
        best = self._phase(phase)
        best.begin(step)
        best.complete(step, best.upload(step, folder))

    def restore(self, phase: str, step: int, folder: Path) -> bool:
        """Copy the phase's best of step `step` into `folder`, every file checked; False (and a log line
        saying why) when the store does not hold it whole and unchanged."""
        best = self._phase(phase)
        where = f"{best.store.uri}/{step_name(step)}"
        try:
            if not best.is_complete(step):
                raise InputError(f"{where} is missing or incomplete")
            best.check_resumable(step)
            unexpected = [rel for rel in best.manifest(step)["files"] if not rel.endswith(BEST_SUFFIXES)]
            if unexpected:
                raise InputError(
                    f"{where} lists {unexpected[0]!r}, not a safetensors, json or tokenizer file"
                )
            shutil.rmtree(folder, ignore_errors=True)
            best.download(step, folder)
        except InputError as error:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning(
                "best weights of phase %s not restored (%s); its best starts over from the evaluations "
                "after the checkpoint",
                phase,
                error,
            )
            return False
        return True

    def prune(self, checkpoints: CheckpointStore) -> None:
        """Delete every best folder that no complete checkpoint's trainer.json names."""
        named = set()
        for step in checkpoints.complete_steps():
            try:
                state = json.loads(checkpoints.store.read_text(f"{step_name(step)}/trainer.json"))
                named |= {(phase, int(record["step"])) for phase, record in state.get("best", {}).items()}
            except (ValueError, TypeError, KeyError, AttributeError):
                log.warning("%s: trainer.json is unreadable; keeping every best folder", step_name(step))
                return
        folders = {tuple(key.split("/")[:2]) for key in self.store.list("") if key.count("/") >= 2}
        for phase, name in sorted(folders):
            match = NAME.match(name)
            if match and (phase, int(match.group(1))) not in named:
                self.store.delete(f"{phase}/{name}")


def trainable_state(objective) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().cpu().contiguous()
        for name, param in objective.named_parameters()
        if param.requires_grad
    }


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    """What a checkpoint saves of a run in progress, handed over by the trainer: checkpointing reads
    nothing else of it."""

    accelerator: Any
    model: Any  # the prepared objective (a DDP wrapper or DeepSpeed engine around it)
    optimizer: Any
    scheduler: Any
    step: int
    phase: int
    phase_step: int
    final_loss: float
    loss_parts: dict[str, float]
    best: dict[str, dict] = field(default_factory=dict)  # each phase's best so far (phase_eval.py)


def shared_folder(checkpoints: CheckpointStore, purpose: str, step: int) -> Path:
    """A local folder every rank of this pod names alike (DeepSpeed ranks each write their shard there)."""
    # Keyed by the run's checkpoint location: two runs on one machine never share it, its ranks always do.
    run = stable_hash([checkpoints.store.uri], 12)
    return Path(tempfile.gettempdir()) / f"train-{purpose}-{run}-{step_name(step)}"


def save_checkpoint(
    state: TrainingState, checkpoints: CheckpointStore, sharded: bool, bests: BestStore | None = None
) -> None:
    """Write `state` into the store as checkpoint `state.step`; `sharded`: the optimizer and weights are
    ZeRO partitions, saved by accelerate on every rank. `bests` drops the best folders no kept
    checkpoint names any more.

    Every node's first rank uploads what its ranks wrote (ZeRO shards live on each node's disk); the
    global first rank adds the trainer state and, after a barrier, the COMPLETE marker.
    """
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    acc = state.accelerator
    step = state.step
    local = shared_folder(checkpoints, "save", step)
    if acc.is_local_main_process:
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
    if acc.is_main_process:
        checkpoints.begin(step)
    acc.wait_for_everyone()
    if sharded:
        acc.save_state(str(local / "accelerate"))
    elif acc.is_main_process:
        save_file(trainable_state(acc.unwrap_model(state.model)), str(local / "trainable.safetensors"))
        torch.save(state.optimizer.state_dict(), local / "optimizer.pt")
    if acc.is_main_process:
        torch.save(rng_state(), local / "rng.pt")
        saved = {
            "step": step,
            "phase": state.phase,
            "phase_step": state.phase_step,
            "scheduler": state.scheduler.state_dict(),
            "final_loss": state.final_loss,
            "loss_parts": state.loss_parts,
            "best": state.best,
        }
        (local / "trainer.json").write_text(json.dumps(saved))
    acc.wait_for_everyone()
    uploaded = checkpoints.upload(step, local) if acc.is_local_main_process else {}
    # Every node uploaded its own ranks' files: the marker lists (and digests) all of them.
    files = {rel: entry for node in gather_object([uploaded]) for rel, entry in node.items()}
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoints.complete(step, files)
        log.info("checkpoint %s saved to %s", step_name(step), checkpoints.store.uri)
        if bests is not None:
            bests.prune(checkpoints)
    if acc.is_local_main_process:
        shutil.rmtree(local, ignore_errors=True)
    acc.wait_for_everyone()


def load_plain(path: Path, step: int):
    """torch.load of tensors and plain data only: a pickle that would run code is refused, not run."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"checkpoint {step_name(step)}: {path.name} holds more than tensors and plain data, so loading "
            f"it could run code from the store; refused ({str(error).splitlines()[0]}). Delete that "
            "checkpoint from runs/<run_id>/train/checkpoints to resume from an earlier one"
        ) from None


def load_checkpoint(accelerator, model, optimizer, checkpoints: CheckpointStore, step: int) -> dict:
    """Restore the weights of `model` (the prepared objective), `optimizer` and the RNG from checkpoint
    `step`; returns its trainer.json (what TrainingState held besides them)."""
    from accelerate.utils import gather_object
    from safetensors.torch import load_file

    acc = accelerator
    local = shared_folder(checkpoints, "resume", step)
    checkpoints.check_resumable(step)
    refused = ""
    if acc.is_local_main_process:
        shutil.rmtree(local, ignore_errors=True)
        try:
            checkpoints.download(step, local)  # every file checked against its recorded sha256
        except InputError as error:
            refused = str(error)
    # A collective in place of a barrier: every rank stops with the refusal instead of waiting for it.
    refusals = [message for message in gather_object([refused]) if message]
    if refusals:
        if acc.is_local_main_process:
            shutil.rmtree(local, ignore_errors=True)
        raise InputError(refusals[0])
    try:
        state = json.loads((local / "trainer.json").read_text())
        if (local / "accelerate").is_dir():
            acc.load_state(str(local / "accelerate"))
        else:
            objective = acc.unwrap_model(model)
            weights = load_file(str(local / "trainable.safetensors"))
            expected = {name: tuple(t.shape) for name, t in trainable_state(objective).items()}
            stored = {name: tuple(t.shape) for name, t in weights.items()}
            if stored != expected:
                differing = sorted(set(stored.items()) ^ set(expected.items()))[:2]
                raise InputError(
                    f"checkpoint {step_name(step)} does not match this model's trainable weights "
                    f"(e.g. {differing}); it was written with another method or LoRA shape. Use a new "
                    "run_id, or delete runs/<run_id>/train/checkpoints"
                )
            objective.load_state_dict(weights, strict=False)
            optimizer.load_state_dict(load_plain(local / "optimizer.pt", step))
        set_rng_state(load_plain(local / "rng.pt", step))
        acc.wait_for_everyone()
    finally:
        if acc.is_local_main_process:
            shutil.rmtree(local, ignore_errors=True)
    log.info("resumed from %s (phase %d, step %d)", step_name(step), state["phase"], state["phase_step"])
    return state
