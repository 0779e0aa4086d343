"""QLoRA adapters are merged onto the base in bf16, never onto 4-bit weights, and leave no quantization
behind; a 4-bit base checkpoint is dequantized first. The 4-bit parts run through bitsandbytes on the CPU
as on CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.records import write_records
from components.merge import Config
from components.merge.stage import run
from components.train import Config as TrainConfig
from components.train.stage import run as train
from tests.train.conftest import reversal_records


def assert_plain_bf16_model(out: Path) -> None:
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_qlora_adapter_is_merged_onto_a_bf16_base(tiny_model_dir, make_adapter, tmp_path):
    # The adapter's weights are plain LoRA matrices whatever the base was quantized to during training;
    # the train summary's method decides the merge precision.
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", method="qlora")
    result = run(Config(str(tiny_model_dir), str(adapter), str(tmp_path / "merged")))

    assert result.method == "qlora" and result.dtype == "bf16" and result.verified
    assert result.max_logit_diff <= result.tolerance == 0.5
    assert_plain_bf16_model(tmp_path / "merged")


def qlora_training_run(student_dir: Path, tmp_path: Path) -> Path:
    """The train stage's output of a real QLoRA run: adapters trained on the 4-bit NF4 student."""
    data = tmp_path / "data"
    write_records(data / "train.jsonl", reversal_records(32))
    config = from_dict(
        TrainConfig,
        {
            "student_dir": str(student_dir),
            "data_dir": str(data),
            "output_dir": str(tmp_path / "adapter"),
            "tensorboard_dir": str(tmp_path / "tb"),
            "method": "qlora",
            "precision": "bf16",
            "lora": {"target_modules": ["all-linear"]},
            "max_steps": 3,
            "batch_size": 8,
            "learning_rate": 1e-2,
            "max_length": 64,
        },
    )
    train(config)
    return Path(config.output_dir)


def test_a_real_qlora_run_merges_onto_bf16_and_a_4bit_base_is_dequantized_on_this_machine(
    tiny_model_dir, tmp_path
):
    from transformers import BitsAndBytesConfig

    adapter = qlora_training_run(tiny_model_dir, tmp_path)
    assert json.loads((adapter / "train_summary.json").read_text())["method"] == "qlora"

    # 1. the usual case: the base folder holds the unquantized weights
    result = run(Config(str(tiny_model_dir), str(adapter), str(tmp_path / "merged")))
    assert result.method == "qlora" and result.dtype == "bf16" and result.verified
    assert result.max_logit_diff <= result.tolerance
    assert_plain_bf16_model(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert any(not torch.equal(base[k], merged[k]) for k in base), "the trained adapters were folded in"
    print(f"qlora merge: max logit diff {result.max_logit_diff:.4g} (tolerance {result.tolerance})")

    # 2. the base itself is a 4-bit checkpoint, as bitsandbytes saves one: dequantized to bf16 first
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    quantized_dir = tmp_path / "base-4bit"
    AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=quantization, device_map={"": device}
    ).save_pretrained(quantized_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(quantized_dir)
    assert "quantization_config" in json.loads((quantized_dir / "config.json").read_text())
    result = run(Config(str(quantized_dir), str(adapter), str(tmp_path / "merged-dq")))
    assert result.verified and result.max_logit_diff <= result.tolerance
    assert_plain_bf16_model(tmp_path / "merged-dq")
    print(f"qlora merge onto the dequantized base: max logit diff {result.max_logit_diff:.4g}")
