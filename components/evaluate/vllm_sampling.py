"""Generation with vLLM on a GPU: its scheduler batches continuously over a paged KV cache, where HF
`generate` (sampling.py, the CPU path) pads fixed batches to their longest row. Prompts, their cut to the
context, stop tokens and the decoding of answers are sampling.py's, so that the two paths differ only in
kernel numerics: on greedy decoding they agree up to near-ties between the top two tokens
(tests/evaluate/test_eval_vllm.py states the tolerance).

engine (eval Config): "auto" takes vLLM when it is installed, the device is CUDA and the folder is a full
model (an adapter folder stays on HF generate); "vllm" insists; "hf" never uses it.
"""

from __future__ import annotations

import gc
import importlib.util
import time
from pathlib import Path

import torch

from components.common.errors import ConfigError
from components.evaluate.sampling import (
    Generation,
    context_length,
    decode_output,
    fit_prompts,
    prompt_text,
    special_tokens,
    split_reasoning,
    stop_ids,
)

# vLLM holds this share of the GPU while it generates; after it is freed, the HF model of the same
# folder is loaded for perplexity and benchmarks. Half leaves that load room if the driver is slow to
# give vLLM's memory back.
GPU_MEMORY_SHARE = 0.5
VLLM_DTYPES = {"auto": "auto", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def use_vllm(engine: str, device: torch.device, path: str | Path) -> bool:
    if engine == "hf":
        return False
    available = device.type == "cuda" and importlib.util.find_spec("vllm") is not None
    adapter = (Path(path) / "adapter_config.json").is_file()
    if engine == "vllm" and not available:
        raise ConfigError("engine: vllm needs the vllm package and a CUDA GPU; use auto or hf")
    if engine == "vllm" and adapter:
        raise ConfigError(
            f"engine: vllm runs full model folders and {path} is an adapter; merge it or use hf"
        )
    return available and not adapter


class ModelFolder:
    """The config and generation config of a model folder: what stop_ids and context_length read from a
    loaded HF model, without loading its weights."""

    def __init__(self, path: str | Path):
        from transformers import AutoConfig, GenerationConfig

        self.config = AutoConfig.from_pretrained(path)
        try:
            self.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the model's config holds the defaults
            self.generation_config = GenerationConfig.from_model_config(self.config)


def vllm_generate(path: str | Path, prompts: list[list[dict[str, str]]], settings) -> Generation:
    """Answers to each prompt from the model in `path`, greedy unless `settings.do_sample`; the engine
    and its GPU memory are released before returning."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(path)
    folder = ModelFolder(path)
    stops, context = stop_ids(folder, tokenizer), context_length(folder)
    prompt_ids = [
        tokenizer(prompt_text(tokenizer, m), add_special_tokens=False)["input_ids"] for m in prompts
    ]
    prompt_ids = fit_prompts(prompt_ids, context, settings.max_new_tokens)
    sampling = SamplingParams(
        max_tokens=settings.max_new_tokens,
        temperature=settings.temperature if settings.do_sample else 0.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
        top_k=settings.top_k if settings.do_sample else -1,
        seed=settings.seed,
        stop_token_ids=stops,
        skip_special_tokens=False,
    )
    llm = LLM(
        model=str(path),
        dtype=VLLM_DTYPES[settings.dtype],
        seed=settings.seed,
        gpu_memory_utilization=GPU_MEMORY_SHARE,
        max_model_len=context,
    )
    try:
        began = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling, use_tqdm=False)
        seconds = time.perf_counter() - began
    finally:
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    specials = special_tokens(tokenizer)
    raw, new_tokens = [], 0
    for output in outputs:
        text, count = decode_output(list(output.outputs[0].token_ids), stops, tokenizer, specials)
        raw.append(text)
        new_tokens += count
    answers = [split_reasoning(text)[1] for text in raw]
    return Generation(answers=answers, raw=raw, new_tokens=new_tokens, seconds=seconds)
