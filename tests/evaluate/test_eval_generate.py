"""Batched generation and perplexity give the same numbers as one prompt at a time."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from components.common.records import read_records
from components.evaluate import Config
from components.evaluate.sampling import answer_perplexity, generate, load_model, prompt_text

CPU = torch.device("cpu")


def settings(**extra) -> Config:
    fields = {
        "student_dir": "b",
        "trained_dir": "m",
        "data_dir": "d",
        "output_dir": "o",
        "max_new_tokens": 12,
    }
    return Config(**{**fields, **extra})


@pytest.fixture(scope="module")
def test_split(reversal_data_dir):
    records = read_records(reversal_data_dir / "test.jsonl")
    return [r.prompt_messages for r in records], [r.answer for r in records]


def test_batched_generation_keeps_the_input_order(memorized_student_dir, test_split):
    prompts, answers = test_split
    model, tokenizer = load_model(memorized_student_dir, "fp32", CPU, "trained_dir")
    batched = generate(model, tokenizer, prompts, settings(batch_size=3))
    one_by_one = [generate(model, tokenizer, [p], settings(batch_size=1)).answers[0] for p in prompts]

    assert batched.answers == one_by_one == answers  # the memorized student answers each prompt right
    assert batched.new_tokens == sum(len(a) + 1 for a in answers)  # byte tokens + end of turn
    assert batched.seconds > 0


def test_perplexity_does_not_depend_on_batching_and_matches_a_direct_computation(tiny_model_dir, test_split):
    prompts, answers = test_split
    answers = [a * (i % 3 + 1) for i, a in enumerate(answers)]  # uneven lengths: padding on every row
    model, tokenizer = load_model(tiny_model_dir, "fp32", CPU, "trained_dir")
    batched = answer_perplexity(model, tokenizer, prompts, answers, batch_size=4)
    single = answer_perplexity(model, tokenizer, prompts, answers, batch_size=1)

    nll, count = 0.0, 0
    for messages, answer in zip(prompts, answers, strict=True):
        prompt = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        with torch.no_grad():
            nll += model(input_ids=ids, labels=labels).loss.item() * len(target)
        count += len(target)

    assert batched == pytest.approx(single, rel=1e-5)
    assert batched == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_sampling_is_configurable_and_seeded(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, "fp32", CPU, "trained_dir")
    prompts = [[{"role": "user", "content": "Reverse the letters of: abc"}]] * 3
    sampled = settings(do_sample=True, temperature=1.5, top_k=0, max_new_tokens=8)
    first, again = generate(model, tokenizer, prompts, sampled), generate(model, tokenizer, prompts, sampled)
    assert first.raw == again.raw  # same seed, same samples
    assert len(set(first.raw)) > 1  # rows of the same prompt differ: it really sampled
    greedy = generate(model, tokenizer, prompts, dataclasses.replace(sampled, do_sample=False))
    assert len(set(greedy.raw)) == 1


def test_an_adapter_folder_is_evaluated_on_top_of_the_untrained_base(tiny_model_dir, test_split, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.evaluate.sampling import size_on_disk
    from components.merge import Config as MergeConfig
    from components.merge.stage import run as merge

    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(
        tmp_path / "adapter"
    )
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    merge(MergeConfig(str(tiny_model_dir), str(tmp_path / "adapter"), str(tmp_path / "merged")))
    prompts, answers = test_split

    scored = {}
    for name in ("adapter", "merged"):
        model, tokenizer = load_model(tmp_path / name, "fp32", CPU, "trained_dir", base_dir=tiny_model_dir)
        scored[name] = answer_perplexity(model, tokenizer, prompts, answers, batch_size=4)
    base, tokenizer = load_model(tiny_model_dir, "fp32", CPU, "student_dir")

    assert scored["adapter"] == pytest.approx(scored["merged"], rel=1e-4)
    assert scored["adapter"] != pytest.approx(
        answer_perplexity(base, tokenizer, prompts, answers, 4), rel=1e-2
    )
    adapter_bytes = size_on_disk(tmp_path / "adapter", base_dir=tiny_model_dir)
    assert (
        adapter_bytes
        == size_on_disk(tiny_model_dir) + (tmp_path / "adapter/adapter_model.safetensors").stat().st_size
    )


def test_asking_for_cuda_without_a_gpu_fails_naming_the_field():
    from components.common.devices import resolve_device
    from components.common.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device: 'cuda' asked for but no CUDA device is visible"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("dtype", "quantization", "layer"),
    [("bf16", "none", None), ("auto", "8bit", "Linear8bitLt"), ("auto", "4bit", "Linear4bit")],
    ids=["bf16", "8bit", "4bit"],
)
def test_bf16_8bit_and_4bit_students_answer_on_cpu_like_fp32(
    memorized_student_dir, test_split, dtype, quantization, layer, caplog
):
    """The eval's quantized and bf16 loading runs on the CPU through the code that runs on CUDA."""
    prompts, answers = test_split
    model, tokenizer = load_model(memorized_student_dir, dtype, CPU, "trained_dir", quantization=quantization)
    if layer:
        assert any(type(m).__name__ == layer for m in model.modules())
        assert f"quantization: {quantization} (bitsandbytes) runs on the CPU" in caplog.text
    else:
        assert next(model.parameters()).dtype == torch.bfloat16
    scored = generate(model, tokenizer, prompts, settings(batch_size=4))
    right = sum(a == b for a, b in zip(scored.answers, answers, strict=True))
    reference, _ = load_model(memorized_student_dir, "fp32", CPU, "trained_dir")
    ppl = answer_perplexity(model, tokenizer, prompts, answers, batch_size=4)
    fp32_ppl = answer_perplexity(reference, tokenizer, prompts, answers, batch_size=4)
    print(
        f"{dtype}/{quantization}: {right}/{len(answers)} right, perplexity {ppl:.4f} against {fp32_ppl:.4f}"
    )
    assert right >= len(answers) - 1
    assert ppl == pytest.approx(fp32_ppl, rel=0.05)
