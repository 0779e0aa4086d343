"""On-policy samples from a vLLM engine beside the student on its GPU, holding the student's current weights.

    engine = sampling_engine(settings.engine, device, method, vllm_installed())   # "vllm" or "hf"
    sampler = VllmSampler(student_dir, dtype)        # once per run: the engine takes GPU_MEMORY_SHARE
    continuations = sampler(model, prompts, pad_id=..., eos_id=..., temperature=..., max_new_tokens=...,
                            seed=...)                # the same call as on_policy.sample (HF generate)

Before each call the engine loads the student's current weights, so the samples are on-policy. Only a
fully fine-tuned student (method full) is loaded this way: a LoRA student's weights are a base plus an
adapter that vLLM would have to reload from disk each step, so it samples with HF generate. Each request
carries its seed, so one engine draws the same samples for the same seed.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from components.common.errors import ConfigError

# The engine's share of the GPU (weights and KV cache); the student, its optimizer state and the
# teacher need the rest.
GPU_MEMORY_SHARE = 0.3


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def sampling_engine(engine: str, device: torch.device, method: str, installed: bool) -> str:
    """ "vllm" where it can sample (CUDA, vllm installed, method full) and `engine` allows it, else "hf";
    engine "vllm" where it cannot is a ConfigError naming why."""
    if engine == "hf":
        return "hf"
    missing = [
        why
        for why, ok in (
            ("a CUDA GPU", device.type == "cuda"),
            ("the vllm package (the GPU images' vllm extra)", installed),
            ("method full (a LoRA student samples with HF generate)", method == "full"),
        )
        if not ok
    ]
    if engine == "vllm" and missing:
        raise ConfigError(f"kd.on_policy.engine: vllm needs {' and '.join(missing)}; use auto or hf")
    return "hf" if missing else "vllm"


class VllmSampler:
    """A vLLM engine in this process, loaded from the student's folder, sampling with its current weights."""

    def __init__(self, student_dir: str, dtype: torch.dtype):
        # The engine runs in this process, so that its model can take the student's weights in place.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(
            model=student_dir,
            dtype=dtype,
            gpu_memory_utilization=GPU_MEMORY_SHARE,
            enable_prefix_caching=False,  # the weights change every step: cached prefixes go stale
        )

    def _load_weights(self, model) -> None:
        engine_model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        engine_model.load_weights((name, tensor.detach()) for name, tensor in model.state_dict().items())

    @torch.no_grad()
    def __call__(
        self, model, prompts, *, pad_id: int, eos_id: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[int]]:
        from vllm import SamplingParams, TokensPrompt

        self._load_weights(model)
        params = SamplingParams(
            temperature=temperature,
            max_tokens=max_new_tokens,
            seed=seed,
            stop_token_ids=[eos_id],
            include_stop_str_in_output=True,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params)
        return [list(output.outputs[0].token_ids) for output in outputs]
