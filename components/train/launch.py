"""Devices and processes: the accelerate `Accelerator` for this run, and the multi-GPU re-launch.

One GPU or a CPU: `run()` trains in the calling process; on a CPU, ZeRO runs over gloo under torchrun
(deepspeed_cpu.py builds DeepSpeed's comm op first). Several GPUs visible in one pod and `launcher`
auto/torchrun/accelerate: `run()` writes the config to a file and starts

    torchrun --standalone --nproc_per_node <gpus> -m components.train --config <file>
    accelerate launch --num_processes <gpus> -m components.train --config <file>

and waits; each rank then runs the same recipe, with DDP or DeepSpeed set up by accelerate. The ZeRO
configs are JSON files in components/train/deepspeed/ picked by the `deepspeed` field; the values
marked "auto" there are filled from the run's config here (batch size, accumulation, clipping, dtype).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.common.config import to_dict
from components.common.devices import note_slow_on_cpu
from components.train import deepspeed_cpu

log = logging.getLogger(__name__)

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"


@dataclass(frozen=True)
class Distribution:
    """How the run spreads over its devices: what the Accelerator and the ZeRO config need of it."""

    precision: str = "auto"  # the Config's precision, resolved here for the device found
    deepspeed: str = "none"
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    find_unused_parameters: bool = False  # a phase may give a module no gradient (intermediate KD)


def deepspeed_config(distribution: Distribution, precision: str) -> dict:
    """The shipped ZeRO JSON for `distribution.deepspeed`, with every "auto" value resolved."""
    ds = json.loads((DEEPSPEED_DIR / f"{distribution.deepspeed}.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = distribution.batch_size
    ds["gradient_accumulation_steps"] = distribution.gradient_accumulation_steps
    ds["gradient_clipping"] = distribution.max_grad_norm
    ds["bf16"]["enabled"] = precision == "bf16"
    ds["fp16"]["enabled"] = precision == "fp16"
    return ds


def accelerator_for(distribution: Distribution):
    """The Accelerator: mixed precision, accumulation, and DeepSpeed when configured."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, InitProcessGroupKwargs

    from components.train.modeling import resolve_precision

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(distribution.precision, torch.device(device_type))
    plugin = None
    # A curriculum phase may weight an intermediate term 0: its projection then gets no gradient.
    handlers: list = [
        DistributedDataParallelKwargs(find_unused_parameters=distribution.find_unused_parameters)
    ]
    if distribution.deepspeed != "none":
        if device_type == "cpu":
            deepspeed_cpu.prepare(distribution.deepspeed)
            note_slow_on_cpu(f"deepspeed: {distribution.deepspeed}", torch.device("cpu"))
            # accelerate picks a process-group backend only for accelerators; without one every rank
            # would count itself the only process.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(distribution, precision))
    return Accelerator(
        mixed_precision={"fp32": "no"}.get(precision, precision),
        gradient_accumulation_steps=distribution.gradient_accumulation_steps,
        deepspeed_plugin=plugin,
        # accelerate's cpu flag turns DeepSpeed off; without a GPU it runs on the CPU regardless.
        cpu=device_type == "cpu" and plugin is None,
        kwargs_handlers=handlers,
    )


def relaunch_command(launcher: str, deepspeed: str, config_file: Path, gpus: int) -> list[str] | None:
    """The `launcher` command for this run on `gpus` devices, or None to train in this process."""
    # DeepSpeed needs a process group even on one GPU or a CPU: a launcher of one rank gives it one.
    ranks = max(gpus, 1) if deepspeed != "none" else gpus
    if launcher == "none" or ranks <= 1 and deepspeed == "none" or "LOCAL_RANK" in os.environ:
        return None
    if launcher == "accelerate":
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(ranks),
            "-m",
            "components.train",
            "--config",
            str(config_file),
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        "-m",
        "components.train",
        "--config",
        str(config_file),
    ]


def maybe_relaunch(config) -> bool:
    """Run the stage on every visible GPU (or, for DeepSpeed, one CPU rank) in child processes; False when
    this process should train."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with tempfile.TemporaryDirectory(prefix="train-launch-") as folder:
        config_file = Path(folder) / "train.yaml"
        command = relaunch_command(config.launcher, config.deepspeed, config_file, gpus)
        if command is None:
            return False
        if not gpus and config.deepspeed != "none":
            deepspeed_cpu.prepare(config.deepspeed)  # its refusals in this process, in one line
        config_file.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        log.info("training on %s: %s", f"{gpus} GPUs" if gpus else "the CPU", " ".join(command))
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"distributed training failed with exit code {completed.returncode}")
    return True
