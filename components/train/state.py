"""What a checkpoint holds and how it is put back: weights, optimizer, schedule, position and RNG.

The trainable weights alone are saved (LoRA adapters are megabytes; the frozen base is the input model
and is loaded again on restart). The data position needs no state of its own: the batch stream is a pure
function of (seed, stage, step), so restoring the step restores the order. RNG states make dropout
continue as it would have.

Nothing read back may run code: the project's files are safetensors and `weights_only` torch files, and
the files DeepSpeed/accelerate unpickle are loaded only after each one's sha256 matched the marker
(checkpoint.py).
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import torch

from components.common.errors import InputError
from components.common.records import stable_hash
from components.train.checkpoint import CheckpointStore, step_name

log = logging.getLogger(__name__)


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


def shared_folder(trainer, purpose: str, step: int) -> Path:
    """A local folder every rank of this pod names alike (DeepSpeed ranks each write their shard there)."""
    # Keyed by the store and run: two runs on one machine never share it, the ranks of one run always do.
    run = stable_hash([trainer.config.store_uri, trainer.config.run_id], 12)
    return Path(tempfile.gettempdir()) / f"train-{purpose}-{run}-{step_name(step)}"


def save_checkpoint(trainer, checkpoints: CheckpointStore) -> None:
    """Write the trainer's state at its current step into the store.

    Every node's first rank uploads what its ranks wrote (ZeRO shards live on each node's disk); the
    global first rank adds the trainer state and, after a barrier, the COMPLETE marker.
    """
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    acc = trainer.accelerator
    step = trainer.global_step
    local = shared_folder(trainer, "save", step)
    if acc.is_local_main_process:
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
    if acc.is_main_process:
        checkpoints.begin(step)
    acc.wait_for_everyone()
    if trainer.config.deepspeed != "none":
        acc.save_state(str(local / "accelerate"))
    elif acc.is_main_process:
        save_file(trainable_state(acc.unwrap_model(trainer.model)), str(local / "trainable.safetensors"))
        torch.save(trainer.optimizer.state_dict(), local / "optimizer.pt")
    if acc.is_main_process:
        torch.save(rng_state(), local / "rng.pt")
        state = {
            "step": step,
            "stage": trainer.stage_index,
            "stage_step": trainer.stage_step,
            "scheduler": trainer.scheduler.state_dict(),
            "final_loss": trainer.final_loss,
            "loss_parts": trainer.loss_parts,
        }
        (local / "trainer.json").write_text(json.dumps(state))
    acc.wait_for_everyone()
    uploaded = checkpoints.upload(step, local) if acc.is_local_main_process else {}
    # Every node uploaded its own ranks' files: the marker lists (and digests) all of them.
    files = {rel: entry for node in gather_object([uploaded]) for rel, entry in node.items()}
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoints.complete(step, files)
        log.info("checkpoint %s saved to %s", step_name(step), checkpoints.store.uri)
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


def load_checkpoint(trainer, step: int) -> dict:
    """Restore weights, optimizer and RNG from checkpoint `step`; returns its trainer.json."""
    from accelerate.utils import gather_object
    from safetensors.torch import load_file

    acc = trainer.accelerator
    local = shared_folder(trainer, "resume", step)
    trainer.checkpoints.check_resumable(step)
    refused = ""
    if acc.is_local_main_process:
        shutil.rmtree(local, ignore_errors=True)
        try:
            trainer.checkpoints.download(step, local)  # every file checked against its recorded sha256
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
            objective = acc.unwrap_model(trainer.model)
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
            trainer.optimizer.load_state_dict(load_plain(local / "optimizer.pt", step))
        set_rng_state(load_plain(local / "rng.pt", step))
        acc.wait_for_everyone()
    finally:
        if acc.is_local_main_process:
            shutil.rmtree(local, ignore_errors=True)
    log.info("resumed from %s (stage %d, step %d)", step_name(step), state["stage"], state["stage_step"])
    return state
