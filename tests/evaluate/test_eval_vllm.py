"""The vLLM generation path: chosen only where it can run, refused clearly where it cannot, and on a GPU it
agrees with HF generate on greedy decoding.

Tolerance: on greedy decoding the memorized student's answers from vLLM and from HF generate (both fp32)
are identical on at least 7 of the 8 test prompts; kernels may break a near-tie between the two most
likely tokens differently, and one such flip changes the rest of that answer."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from components.common.errors import ConfigError
from components.common.records import read_records
from components.evaluate.sampling import generate, load_model
from components.evaluate.vllm_sampling import use_vllm, vllm_generate

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_stays_on_hf_generate_on_cpu_and_for_adapter_folders(tiny_model_dir, tmp_path):
    assert use_vllm("auto", CPU, tiny_model_dir) is False
    assert use_vllm("hf", CUDA, tiny_model_dir) is False
    (tmp_path / "adapter_config.json").write_text("{}")
    assert use_vllm("auto", CUDA, tmp_path) is False


def test_engine_vllm_where_it_cannot_run_fails_naming_the_field(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="engine: vllm needs the vllm package and a CUDA GPU"):
        use_vllm("vllm", CPU, tiny_model_dir)
    if HAS_VLLM:
        (tmp_path / "adapter_config.json").write_text("{}")
        with pytest.raises(ConfigError, match="is an adapter; merge it or use hf"):
            use_vllm("vllm", CUDA, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (HAS_VLLM and torch.cuda.is_available()), reason="vLLM generation needs vllm and a GPU"
)
def test_vllm_agrees_with_hf_generate_on_greedy_decoding(memorized_student_dir, reversal_data_dir):
    records = read_records(reversal_data_dir / "test.jsonl")
    prompts = [r.prompt_messages for r in records]
    settings = SimpleNamespace(
        max_new_tokens=12,
        batch_size=4,
        do_sample=False,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        seed=0,
        dtype="fp32",
    )
    model, tokenizer = load_model(memorized_student_dir, "fp32", CUDA, "trained_dir")
    with_hf = generate(model, tokenizer, prompts, settings)
    del model
    torch.cuda.empty_cache()
    with_vllm = vllm_generate(memorized_student_dir, prompts, settings)
    agree = sum(a == b for a, b in zip(with_vllm.answers, with_hf.answers, strict=True))
    assert agree >= len(prompts) - 1, list(zip(with_vllm.answers, with_hf.answers, strict=True))
    assert with_vllm.new_tokens > 0 and with_vllm.tokens_per_s > 0
