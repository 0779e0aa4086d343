"""Choosing the torch device from a config's `device` field ("auto", "cpu", "cuda", "cuda:1")."""

from __future__ import annotations

from components.common.errors import ConfigError


def resolve_device(name: str):
    """The torch.device for `name`; "auto" takes CUDA when it is visible, else the CPU."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
