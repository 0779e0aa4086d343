"""QLoRA adapters are merged onto the base in bf16, never onto 4-bit weights, and leave no quantization
behind. The 4-bit parts need CUDA (bitsandbytes); on CPU they are skipped and the CPU refuses clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.errors import ConfigError
from components.merge import Config
from components.merge.stage import run

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="4-bit bitsandbytes needs CUDA")
BNB_4BIT = {
    "quant_method": "bitsandbytes",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_use_double_quant": True,
}


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


def test_a_quantized_base_checkpoint_on_cpu_is_refused_naming_the_field(
    tiny_model_dir, make_adapter, tmp_path
):
    quantized = tmp_path / "base-4bit"
    shutil.copytree(tiny_model_dir, quantized)
    config = json.loads((quantized / "config.json").read_text())
    (quantized / "config.json").write_text(json.dumps({**config, "quantization_config": BNB_4BIT}))
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", method="qlora")
    if torch.cuda.is_available():
        pytest.skip("on CUDA the quantized base is dequantized instead (see the gpu test)")
    with pytest.raises(ConfigError, match="student_dir: .* is a quantized checkpoint .* needs a CUDA device"):
        run(Config(str(quantized), str(adapter), str(tmp_path / "merged")))


@pytest.mark.gpu
@gpu
def test_adapter_trained_on_4bit_weights_merges_onto_bf16_and_a_4bit_base_is_dequantized(
    tiny_model_dir, tmp_path
):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    base_4bit = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=quantization, device_map={"": 0}
    )
    # A pre-quantized base checkpoint, saved before get_peft_model injects LoRA layers into base_4bit.
    quantized_dir = tmp_path / "base-4bit"
    base_4bit.save_pretrained(quantized_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(quantized_dir)
    torch.manual_seed(0)
    model = get_peft_model(
        prepare_model_for_kbit_training(base_4bit),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)
    (adapter / "train_summary.json").write_text(
        json.dumps({"method": "qlora", "steps": 1, "final_loss": 1.0})
    )

    # 1. the usual case: the base folder holds the unquantized weights
    result = run(Config(str(tiny_model_dir), str(adapter), str(tmp_path / "merged"), device="cuda"))
    assert result.dtype == "bf16" and result.verified
    assert_plain_bf16_model(tmp_path / "merged")
    print(f"qlora merge on CUDA: max logit diff {result.max_logit_diff:.4g} (tolerance {result.tolerance})")

    # 2. the base itself is a 4-bit checkpoint: dequantized to bf16 on CUDA before merging
    assert "quantization_config" in json.loads((quantized_dir / "config.json").read_text())
    result = run(Config(str(quantized_dir), str(adapter), str(tmp_path / "merged-dq"), device="cuda"))
    assert result.verified
    assert_plain_bf16_model(tmp_path / "merged-dq")
    print(f"qlora merge onto dequantized base: max logit diff {result.max_logit_diff:.4g}")
