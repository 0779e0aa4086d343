"""Choosing the torch device from a config's `device` field ("auto", "cpu", "cuda", "cuda:1")."""

from __future__ import annotations

import logging

from components.common.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str):
    """The torch.device for `name`; "auto" takes CUDA when it is visible, else the CPU."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def note_slow_on_cpu(what: str, device) -> None:
    """One log line where a path made for GPUs (bitsandbytes, bf16, ZeRO) runs on the CPU: the same code
    as on CUDA and correct, only slow, so a run that meant to have a GPU sees it lacks one."""
    if device.type == "cpu":
        log.warning("%s runs on the CPU: the same code as on CUDA, but slow; give the task a GPU", what)
