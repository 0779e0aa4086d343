"""Depth pruning as a download option (seed 002's "瘦身": fewer layers, then distil): the download stage
keeps every Nth decoder layer of the student, weights unchanged, and the result loads and generates."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.tiny_model import make_tiny_model
from components.download import Config
from components.download.stage import run

SOURCE = "tiny://qwen2?warmup_steps=0&layers=4"


def test_keep_every_2_keeps_layers_0_and_2_with_their_weights(tmp_path):
    result = run(
        from_dict(Config, {"source": SOURCE, "output_dir": str(tmp_path / "pruned"), "keep_every": 2})
    )

    assert result.metadata["kept_layers"] == [0, 2]
    full_dir = tmp_path / "full"
    make_tiny_model(SOURCE, full_dir)
    full = AutoModelForCausalLM.from_pretrained(full_dir)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    for kept, original in zip(pruned.model.layers, (full.model.layers[0], full.model.layers[2]), strict=True):
        for (name, weight), (_, source) in zip(
            kept.state_dict().items(), original.state_dict().items(), strict=True
        ):
            assert torch.equal(weight, source), name
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "pruned")
    prompt = tokenizer("Reverse the letters of: abc", return_tensors="pt")
    generated = pruned.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 3


def test_keep_every_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="keep_every: 0 must be at least 1"):
        from_dict(Config, {"source": SOURCE, "output_dir": str(tmp_path), "keep_every": 0})
