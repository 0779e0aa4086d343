"""Fixtures of the merge tests: LoRA adapters on the tiny student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def _make_adapter(student_dir: Path, out: Path, seed: int = 0, method: str = "lora") -> Path:
    """A LoRA adapter with random (non-zero) A and B, plus a fully trained copy of the final norm (as the
    train stage's `modules_to_save` makes), so merging changes the model visibly."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(student_dir)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, modules_to_save=["norm"]
    )
    model = get_peft_model(base, lora)
    with torch.no_grad():
        model.base_model.model.model.norm.modules_to_save["default"].weight.mul_(1.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(out)
    summary = {"method": method, "base_model": "tiny://qwen2", "steps": 3, "final_loss": 1.25}
    (out / "train_summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture(scope="session")
def make_adapter():
    """make_adapter(student_dir, out, seed=0, method="lora") -> out: writes a train-stage-like adapter folder."""
    return _make_adapter


@pytest.fixture(scope="session")
def trained_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))
