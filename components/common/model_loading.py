"""Loading a causal LM and its tokenizer for batched generation: the eval stage's students and the
teacher stage's local teacher load the same way."""

from __future__ import annotations

from pathlib import Path

from components.common.remote_code import allows_remote_code


def quantization_config(quantization: str):
    """bitsandbytes settings for "8bit" or "4bit" (NF4 with bf16 compute); needs CUDA to load."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


def load_for_generation(
    weights: str | Path, tokenizer_folder: str | Path, remote_code: bool = False, **kwargs
):
    """(model, tokenizer) with remote code only where the run opted in (`remote_code`) and the folder's
    marker allows it. The tokenizer pads on the left: in a batch every prompt must end where generation
    starts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_folder, trust_remote_code=allows_remote_code(tokenizer_folder, remote_code)
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        weights, trust_remote_code=allows_remote_code(weights, remote_code), **kwargs
    )
    return model, tokenizer


def left_padded(rows: list[list[int]], pad_id: int) -> dict:
    """`input_ids` and `attention_mask` tensors of token rows padded on the left to one width, so that
    in a batch every prompt ends where generation starts."""
    import torch

    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention[i, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
