"""Depth pruning ("瘦身" in seed 002): a student made from a model by keeping every Nth decoder layer, to
be distilled from the full model afterwards. Works on the decoder-only families whose layers sit in
`model.layers` (Qwen2/2.5/3, Llama, Mistral, ...); the folder is rewritten in place, tokenizer kept."""

from __future__ import annotations

import logging
from pathlib import Path

from components.common.errors import InputError
from components.common.remote_code import allows_remote_code

log = logging.getLogger(__name__)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def kept_layers(count: int, every: int) -> list[int]:
    """Layers 0, every, 2*every, ... of `count`."""
    return list(range(0, count, every))


def keep_every_nth_layer(folder: Path, every: int, trust_remote_code: bool = False) -> list[int]:
    """Rewrite the model in `folder` with every `every`-th decoder layer; returns the kept indices."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype="auto", trust_remote_code=allows_remote_code(folder, trust_remote_code)
    )
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"keep_every: {type(model).__name__} keeps no decoder layers in model.layers; depth pruning "
            "supports Qwen, Llama and Mistral-style models, or set keep_every: 1"
        )
    keep = kept_layers(len(layers), every)
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for position, layer in enumerate(model.model.layers):
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = position  # the KV cache is indexed by position in the stack
    config = model.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, len(keep))
    for pattern in WEIGHT_FILES:
        for path in folder.glob(pattern):
            path.unlink()
    model.save_pretrained(folder, safe_serialization=True)
    log.info("depth pruning: kept layers %s of %d (every %d)", keep, len(layers), every)
    return keep
