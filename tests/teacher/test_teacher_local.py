"""The local Hugging Face teacher: batched generation on a tiny Qwen2, same records as the API teacher."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.records import read_records
from components.teacher import Config
from components.teacher.local import LocalTeacher
from components.teacher.stage import run
from pipelines.demo_teacher import write_demo_dataset
from tests.teacher.conftest import local_teacher_config


def test_local_teacher_answers_every_prompt_in_batches_reproducibly(tmp_path, tiny_teacher_dir):
    write_demo_dataset(tmp_path / "prompts.jsonl", 6)
    first = run(local_teacher_config(tmp_path, tiny_teacher_dir, run_id="a"))
    second = run(local_teacher_config(tmp_path, tiny_teacher_dir, run_id="b"))
    records_a = read_records(tmp_path / "a" / "train.jsonl")
    records_b = read_records(tmp_path / "b" / "train.jsonl")
    assert first.metrics["records"] == 6 and first.metrics["requests"] == 6
    assert [r.answer for r in records_a] == [r.answer for r in records_b]  # greedy and seeded
    for record in records_a:
        assert record.messages[-1]["role"] == "assistant"
        assert record.teacher["provider"] == "local"
        assert 1 <= record.usage["completion_tokens"] <= 6
        assert record.usage["prompt_tokens"] > 5
    assert second.metrics["records"] == 6


def test_batched_answers_equal_one_at_a_time(tiny_teacher_dir):
    teacher = LocalTeacher(
        from_dict(
            Config,
            {
                "dataset": "x",
                "output_dir": "y",
                "provider": {"name": "local", "model": str(tiny_teacher_dir), "max_tokens": 5},
            },
        ).provider
    )
    conversations = [
        [{"role": "user", "content": text}] for text in ("Copy the letters of: ab", "Hi", "Reverse: xyz")
    ]
    batched = [a.choices[0].content for a in teacher.generate(conversations)]
    alone = [teacher.generate([c])[0].choices[0].content for c in conversations]
    assert batched == alone


def test_a_peft_adapter_changes_the_teacher(tmp_path, tiny_teacher_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    adapted = get_peft_model(
        base, LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    adapted.save_pretrained(tmp_path / "adapter")
    write_demo_dataset(tmp_path / "prompts.jsonl", 4)
    run(local_teacher_config(tmp_path, tiny_teacher_dir, run_id="plain", max_tokens=12))
    run(
        local_teacher_config(
            tmp_path, tiny_teacher_dir, run_id="adapted", max_tokens=12, adapter=str(tmp_path / "adapter")
        )
    )
    plain = {r.messages[0]["content"]: r.answer for r in read_records(tmp_path / "plain" / "train.jsonl")}
    with_adapter = read_records(tmp_path / "adapted" / "train.jsonl")
    by_prompt = {r.messages[0]["content"]: r.answer for r in with_adapter}
    assert by_prompt.keys() == plain.keys() and by_prompt != plain
    assert all(r.teacher["params"]["adapter"] == str(tmp_path / "adapter") for r in with_adapter)
    # An adapter folder given as the model finds its base through adapter_config.json.
    run(local_teacher_config(tmp_path, tmp_path / "adapter", run_id="adapter-as-model", max_tokens=12))
    as_model = read_records(tmp_path / "adapter-as-model" / "train.jsonl")
    assert {r.messages[0]["content"]: r.answer for r in as_model} == by_prompt


def test_several_sampled_answers_per_prompt(tmp_path, tiny_teacher_dir):
    write_demo_dataset(tmp_path / "prompts.jsonl", 2)
    run(local_teacher_config(tmp_path, tiny_teacher_dir, n=3, temperature=1.0, seed=7))
    records = read_records(tmp_path / "local" / "train.jsonl")
    assert len(records) == 6 and len({r.id for r in records}) == 6
    assert len({r.answer for r in records}) > 2  # sampled, not three copies of one greedy answer
    with pytest.raises(ConfigError, match=r"provider\.n: 3 answers per prompt .* set provider\.temperature"):
        run(local_teacher_config(tmp_path, tiny_teacher_dir, n=3))


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_a_4bit_or_8bit_local_teacher_answers_on_cpu_as_on_cuda(
    tmp_path, tiny_teacher_dir, quantization, caplog
):
    write_demo_dataset(tmp_path / "prompts.jsonl", 4)
    result = run(local_teacher_config(tmp_path, tiny_teacher_dir, quantization=quantization))
    assert result.metrics["records"] == 4
    assert len(read_records(tmp_path / "local" / "train.jsonl")) == 4
    if not torch.cuda.is_available():
        assert f"provider.quantization: {quantization} runs on the CPU" in caplog.text


def test_the_local_teacher_can_come_from_s3(tmp_path, tiny_teacher_dir, s3_endpoint):
    from components.common.store import open_store

    open_store("s3://distill").upload_dir(tiny_teacher_dir, "models/tiny-teacher")
    write_demo_dataset(tmp_path / "prompts.jsonl", 2)
    result = run(local_teacher_config(tmp_path, "s3://distill/models/tiny-teacher", run_id="from-s3"))
    assert result.metrics["records"] == 2
    local = run(local_teacher_config(tmp_path, tiny_teacher_dir, run_id="from-disk"))
    assert local.metrics["records"] == 2
    answers = {r.messages[0]["content"]: r.answer for r in read_records(tmp_path / "from-s3" / "train.jsonl")}
    assert answers == {
        r.messages[0]["content"]: r.answer for r in read_records(tmp_path / "from-disk" / "train.jsonl")
    }


def test_without_vllm_and_a_gpu_the_hf_engine_generates(tiny_teacher_dir):
    teacher = LocalTeacher(local_teacher_config(Path("."), tiny_teacher_dir).provider)
    expected = "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"
    assert teacher.engine == expected


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="vLLM needs CUDA"
)
def test_vllm_and_hf_give_the_same_greedy_answers_and_records(tmp_path, tiny_teacher_dir):
    write_demo_dataset(tmp_path / "prompts.jsonl", 16)
    teacher = LocalTeacher(local_teacher_config(tmp_path, tiny_teacher_dir).provider)
    conversations = [
        [{"role": "user", "content": f"Reverse the letters of: {w}"}] for w in "abc de fgh".split()
    ]
    by_vllm = teacher.generate_vllm(conversations)
    by_hf = teacher.generate(conversations)
    assert [vars(c) for a in by_vllm for c in a.choices] == [vars(c) for a in by_hf for c in a.choices]
    assert [(a.prompt_tokens, a.completion_tokens) for a in by_vllm] == [
        (a.prompt_tokens, a.completion_tokens) for a in by_hf
    ]
    result = run(local_teacher_config(tmp_path, tiny_teacher_dir, run_id="vllm"))
    assert result.metrics["records"] == 16
