"""Sequence-level distillation: SFT on teacher records with LoRA or full fine-tuning writes the contract."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from components.common.errors import ConfigError, InputError
from components.train.stage import run


def test_lora_sft_writes_adapter_summary_and_tensorboard(make_config, tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="components.train")
    config = make_config(method="lora", lora={"r": 8, "alpha": 16})
    result = run(config)

    out = config.output_dir
    adapter_config = json.loads(open(f"{out}/adapter_config.json").read())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    weights = load_file(f"{out}/adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    # LoRA B starts at zero: a trained adapter has moved it.
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)
    assert not any("embed_tokens" in name for name in weights), "the frozen base must not be saved"
    summary = json.loads(open(f"{out}/train_summary.json").read())
    assert summary["method"] == "lora"
    assert summary["base_model"] == str(tiny_model_dir)
    assert summary["steps"] == result.steps == 4
    assert summary["final_loss"] == pytest.approx(result.final_loss)
    assert 0 < result.final_loss < 10
    assert set(result.metrics) >= {"train_final_loss", "train_steps"}
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert Path(out, "tokenizer.json").is_file()
    events = EventAccumulator(config.tensorboard_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags >= {"train/loss", "train/ce", "train/lr", "train/grad_norm", "train/tokens_per_second"}
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    # One log line per logging step with loss, throughput and time left.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("phase main step")]
    assert len(lines) == 2 and lines[-1].startswith("phase main step 4/4 loss ")
    assert " tok/s " in lines[-1] and " eta " in lines[-1]


def test_full_finetuning_saves_a_complete_model_that_changed(make_config, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    config = make_config(method="full", max_steps=3)
    run(config)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(config.output_dir)
    changed = [
        name
        for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert len(changed) == len(list(before.parameters()))
    assert Path(config.output_dir, "generation_config.json").is_file()
    summary = json.loads(open(f"{config.output_dir}/train_summary.json").read())
    assert summary["method"] == "full" and summary["steps"] == 3


def test_training_loss_goes_down_on_repeated_data(make_config):
    first = run(make_config(method="full", max_steps=2, logging_steps=1, learning_rate=3e-3))
    longer = run(make_config(method="full", max_steps=12, logging_steps=4, learning_rate=3e-3))
    assert longer.final_loss < first.final_loss


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "lora", "lora": {"r": 0}}, "lora.r"),
        ({"save_steps": 5}, "store_uri"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"kd": {"kind": "logits"}}, "kd.teacher_dir"),
        ({"batching": "rows"}, "batching"),
        ({"method": "qlora", "deepspeed": "zero3"}, "ZeRO-3"),
        ({"compile": True, "deepspeed": "zero3"}, "compile: ZeRO-3"),
    ],
)
def test_bad_configs_fail_at_load_naming_the_field(make_config, fields, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**fields)


def test_gradient_accumulation_averages_over_all_tokens_of_the_window(make_config, tmp_path):
    from transformers import AutoModelForCausalLM

    common = {
        "method": "full",
        "max_steps": 1,
        "learning_rate": 1e-4,
        "warmup_ratio": 0.0,
        "max_grad_norm": 0.0,
    }
    whole = make_config(**common, batch_size=8, output_dir=str(tmp_path / "whole"))
    split = make_config(
        **common, batch_size=4, gradient_accumulation_steps=2, output_dir=str(tmp_path / "split")
    )
    run(whole)
    run(split)
    # Same 8 records in one batch or in two micro-batches: the same step (records differ in length, so a
    # per-micro-batch mean would weight their tokens differently and move the weights elsewhere).
    a = AutoModelForCausalLM.from_pretrained(whole.output_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(split.output_dir).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_a_missing_dataset_names_the_field(make_config, tmp_path):
    with pytest.raises(InputError, match=r"data_dir: .*/nowhere/train.jsonl does not exist"):
        run(make_config(data_dir=str(tmp_path / "nowhere")))
