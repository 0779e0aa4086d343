"""The merge check: the written model must compute what base + adapter computed.

    reference = logits of base + adapter (unmerged PEFT model) on the probe prompts
    got       = logits of the merged model reloaded from the output folder
    max_logit_diff = max |got - reference| over every prompt, position and vocabulary entry

Comparing against the reloaded files (not the in-memory merged model) also catches what saving can break:
dropped tied weights, shards that miss tensors, a wrong dtype cast.
"""

from __future__ import annotations

import torch


def probe_batch(tokenizer, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Token ids of each prompt as a chat turn (plain text when the tokenizer has no chat template)."""
    texts = []
    for prompt in prompts:
        if tokenizer.chat_template:
            texts.append(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
                )
            )
        else:
            texts.append(prompt)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {
        name: tensor.to(device) for name, tensor in batch.items() if name in ("input_ids", "attention_mask")
    }


@torch.no_grad()
def probe_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 logits at the real (unpadded) positions, flattened to (tokens, vocab), on the CPU."""
    logits = model(**batch).logits.float()
    return logits[batch["attention_mask"].bool()].cpu()


def max_abs_diff(got: torch.Tensor, reference: torch.Tensor) -> float:
    if got.shape != reference.shape:
        raise ValueError(
            f"logit shapes differ: merged {tuple(got.shape)} vs reference {tuple(reference.shape)}"
        )
    return (got - reference).abs().max().item()
