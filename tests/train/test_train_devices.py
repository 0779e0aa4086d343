"""Parameterizations and devices: LoRA variants, memory options, QLoRA, bf16 and an 8-bit teacher train on
the CPU through the code that runs on CUDA; what truly needs a GPU fails early on CPU; Qwen2.5-shaped
random-init models measure the GPU paths on a GPU (marked `gpu`)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from components.common.errors import ConfigError
from components.train.launch import deepspeed_config, relaunch_command
from components.train.settings import distribution
from components.train.stage import run
from components.train.trainer import DistillTrainer
from tests.conftest import free_port
from tests.train.conftest import assert_adapter_trained

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal of a GPU-only path")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    ("fields", "adapter_key"),
    [
        ({"lora": {"r": 8, "alpha": 16, "use_rslora": True}}, "use_rslora"),
        ({"lora": {"r": 8, "alpha": 16, "use_dora": True}}, "use_dora"),
        ({"gradient_checkpointing": True, "gradient_accumulation_steps": 2, "batching": "packed"}, None),
        ({"gradient_checkpointing": True}, None),
        ({"batching": "grouped", "reasoning": "train", "truncation": "left", "max_length": 40}, None),
    ],
    ids=[
        "rslora",
        "dora",
        "checkpointing+accumulation+packing",
        "checkpointing+padding-free",
        "grouping+reasoning+truncation",
    ],
)
def test_lora_variants_and_memory_options_train(make_config, fields, adapter_key):
    config = make_config(max_steps=2, **fields)
    result = run(config)
    assert result.steps == 2
    assert_adapter_trained(result)
    adapter_config = json.loads(open(f"{config.output_dir}/adapter_config.json").read())
    if adapter_key:
        assert adapter_config[adapter_key] is True


@cpu_only
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"precision": "fp16"}, "precision: 'fp16' mixed precision needs a CUDA GPU .* use 'bf16'"),
        ({"report_to": ["tensorboardX"]}, "report_to: unknown tracker 'tensorboardX'"),
    ],
    ids=["fp16", "report_to"],
)
def test_what_truly_needs_a_gpu_fails_early_on_cpu_naming_the_field(make_config, fields, message):
    config = make_config(**fields)
    with pytest.raises(ConfigError, match=message):
        run(config)
    assert not os.path.exists(config.output_dir)


def cpu_notes(caplog) -> list[str]:
    return [m for m in caplog.messages if "runs on the CPU: the same code as on CUDA, but slow" in m]


def test_qlora_trains_adapters_on_a_4bit_student_on_cpu(make_config, caplog, monkeypatch):
    import bitsandbytes as bnb

    from components.train import trainer

    loaded = []
    load_student = trainer.load_student
    monkeypatch.setattr(
        trainer, "load_student", lambda *a, **k: loaded.append(load_student(*a, **k)) or loaded[-1]
    )
    config = make_config(method="qlora", precision="bf16", max_steps=3, gradient_checkpointing=True)
    result = run(config)
    assert_adapter_trained(result)
    # The frozen base really is NF4 (double-quantized, bf16 compute), as bitsandbytes packs it on CUDA.
    layers = [m for m in loaded[0].modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" and m.compute_dtype == torch.bfloat16 for m in layers)
    summary = json.loads(open(f"{config.output_dir}/train_summary.json").read())
    assert summary["method"] == "qlora" and summary["precision"] == "bf16"
    assert cpu_notes(caplog) == [
        "precision: bf16 runs on the CPU: the same code as on CUDA, but slow; give the task a GPU",
        "method: qlora (4-bit bitsandbytes) runs on the CPU: the same code as on CUDA, but slow; "
        "give the task a GPU",
    ]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_autocast_trains_on_cpu(make_config, tiny_model_dir, method, caplog):
    from transformers import AutoModelForCausalLM

    # With held-out evaluation and samples: they run the unwrapped student, in the same autocast.
    held_out = {"eval_steps": 3, "eval_samples": 2, "sample_count": 1, "sample_max_new_tokens": 4}
    config = make_config(method=method, precision="bf16", max_steps=3, **held_out)
    result = run(config)
    assert result.steps == 3 and math.isfinite(result.final_loss)
    if method == "lora":
        assert_adapter_trained(result)
    else:  # fp32 master weights under bf16 autocast: every one of them moved
        before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()
        after = AutoModelForCausalLM.from_pretrained(config.output_dir).parameters()
        assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert json.loads(open(f"{config.output_dir}/train_summary.json").read())["precision"] == "bf16"
    assert len(cpu_notes(caplog)) == 1


def test_logit_kd_with_an_8bit_teacher_on_cpu(make_config, tiny_teacher_dir, caplog):
    config = make_config(
        max_steps=3, kd={"kind": "logits", "teacher_dir": str(tiny_teacher_dir), "teacher_8bit": True}
    )
    result = run(config)
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.loss_parts["kd"])
    assert_adapter_trained(result)
    assert cpu_notes(caplog) == [
        "kd.teacher_8bit (8-bit bitsandbytes) runs on the CPU: the same code as on CUDA, but slow; "
        "give the task a GPU"
    ]


def test_deepspeed_configs_are_shipped_and_resolved_from_the_run(make_config):
    # The [deepspeed] extra; its config parser runs on CPU (DS_BUILD_OPS=0 installs are enough).
    DeepSpeedConfig = pytest.importorskip("deepspeed.runtime.config").DeepSpeedConfig

    for name in ("zero0", "zero2", "zero2_offload", "zero3", "zero3_offload"):
        config = make_config(deepspeed="none", batch_size=4, gradient_accumulation_steps=8, max_grad_norm=0.5)
        config.deepspeed = name
        ds = deepspeed_config(distribution(config), "bf16")
        assert "auto" not in json.dumps(ds)
        assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 8
        assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
        assert ds["zero_optimization"]["stage"] == int(name[4])
        assert ("offload_optimizer" in ds["zero_optimization"]) == name.endswith("offload")
        # DeepSpeed itself accepts it (its parser needs no GPU and no process group).
        parsed = DeepSpeedConfig(ds)
        assert parsed.zero_optimization_stage == int(name[4])
        assert parsed.train_batch_size == 4 * 8 and parsed.bfloat16_config.enabled


def test_more_than_one_gpu_relaunches_on_all_of_them(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    file = tmp_path / "c.yaml"
    assert relaunch_command("auto", "none", file, gpus=1) is None
    torchrun = relaunch_command("auto", "none", file, gpus=4)
    assert torchrun[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    assert torchrun[-4:] == ["-m", "components.train", "--config", str(file)]
    accelerate = relaunch_command("accelerate", "none", file, gpus=2)
    assert accelerate[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "2"]
    assert relaunch_command("none", "none", file, gpus=8) is None
    # DeepSpeed needs a process group on one device or a CPU too: one rank under torchrun.
    zero = relaunch_command("auto", "zero2", file, gpus=0)
    assert zero[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert relaunch_command("auto", "none", file, gpus=4) is None, "a rank never relaunches itself"


# --- GPU (run on a GPU machine: pytest -m gpu tests/train) ---------------------------------------------

QWEN25 = {
    "0.5B": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
    },
    "1.5B": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
    },
}


def qwen25_shaped(folder, size: str, tokenizer_dir, layers: int | None = None):
    """A random-init model with Qwen2.5-<size>'s shape and vocabulary rows, and the tiny tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    shape = dict(QWEN25[size])
    if layers:
        shape["num_hidden_layers"] = layers
    config = Qwen2Config(vocab_size=151936, num_key_value_heads=2, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def single_rank(monkeypatch):
    """The environment of rank 0 of 1, as torchrun sets it: DeepSpeed needs a process group."""
    port = free_port()
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))


@pytest.mark.gpu
@needs_cuda
def test_gpu_qlora_4bit_trains_a_0_5b_shaped_student(make_config, tiny_model_dir, tmp_path):
    student = qwen25_shaped(tmp_path / "student", "0.5B", tiny_model_dir)
    config = make_config(student_dir=student, method="qlora", max_steps=5, gradient_checkpointing=True)
    result = run(config)
    summary = json.loads(open(f"{config.output_dir}/train_summary.json").read())
    assert summary["method"] == "qlora" and summary["precision"] == "bf16"
    assert_adapter_trained(result)
    print(
        f"qlora 0.5B: {result.tokens_per_second:.0f} tok/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_gpu_bf16_lora_under_deepspeed_zero(make_config, tiny_model_dir, tmp_path, zero, single_rank):
    student = qwen25_shaped(tmp_path / "student", "0.5B", tiny_model_dir)
    config = make_config(student_dir=student, precision="bf16", deepspeed=zero, max_steps=5)
    result = run(config)
    assert json.loads(open(f"{config.output_dir}/adapter_config.json").read())["r"] == 16
    assert_adapter_trained(result)
    print(f"lora bf16 {zero}: {result.tokens_per_second:.0f} tok/s")


@pytest.mark.gpu
@needs_cuda
def test_gpu_kd_with_an_8bit_teacher(make_config, tiny_model_dir, tmp_path):
    student = qwen25_shaped(tmp_path / "student", "0.5B", tiny_model_dir)
    teacher = qwen25_shaped(tmp_path / "teacher", "1.5B", tiny_model_dir)
    config = make_config(
        student_dir=student,
        max_steps=5,
        precision="bf16",
        kd={"kind": "logits", "teacher_dir": teacher, "teacher_8bit": True, "chunk_size": 256},
    )
    result = run(config)
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.loss_parts["kd"])
    assert_adapter_trained(result)
    print(
        f"kd 8-bit teacher: {result.tokens_per_second:.0f} tok/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("teacher_tokenizer", ["same", "other"])
def test_gpu_on_policy_kd_samples_scores_and_trains_on_cuda(
    make_config, tiny_model_dir, tmp_path, teacher_tokenizer
):
    from components.common.tiny_model import make_tiny_model

    student = qwen25_shaped(tmp_path / "student", "0.5B", tiny_model_dir)
    tokenizer_dir = tiny_model_dir
    if teacher_tokenizer == "other":  # digit and letter pairs merged: aligned to the student by bytes
        tokenizer_dir = tmp_path / "merged-tokenizer"
        make_tiny_model("tiny://qwen2?warmup_steps=0&merges=776", tokenizer_dir)
    teacher = qwen25_shaped(tmp_path / "teacher", "1.5B", tokenizer_dir)
    config = make_config(
        student_dir=student,
        max_steps=5,
        precision="bf16",
        kd={
            "kind": "on_policy",
            "teacher_dir": teacher,
            "divergence": "reverse_kl",
            "on_policy": {"fraction": 0.5, "max_new_tokens": 32},
        },
    )
    result = run(config)
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.loss_parts["kd"])
    assert_adapter_trained(result)
    if teacher_tokenizer == "other":
        assert result.kd_alignment["matched_positions"] > 0
    print(
        f"on-policy KD, {teacher_tokenizer} tokenizer: {result.tokens_per_second:.0f} tok/s, "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


@pytest.mark.gpu
@needs_cuda
def test_gpu_a_training_step_never_waits_for_the_gpu(make_config, tiny_model_dir, tmp_path, monkeypatch):
    """A step queues its kernels and returns: any device-to-host copy or sync inside it raises."""
    student = qwen25_shaped(tmp_path / "student", "0.5B", tiny_model_dir)
    original = DistillTrainer.loss_step

    def strict_step(self, stage, micro_batches):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, stage, micro_batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(DistillTrainer, "loss_step", strict_step)
    config = make_config(student_dir=student, precision="bf16", max_steps=3, logging_steps=3)
    assert run(config).steps == 3


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(make_config, tmp_path):
    # No dropout: compiled code draws its random masks from another generator.
    common = {"max_steps": 3, "lora": {"dropout": 0.0}}
    eager = run(make_config(**common, output_dir=str(tmp_path / "eager")))
    compiled = run(make_config(**common, output_dir=str(tmp_path / "compiled"), compile=True))
    assert compiled.final_loss == pytest.approx(eager.final_loss, rel=1e-4)
