"""On-policy distillation (GKD, Agarwal et al. 2024): the student learns on continuations it samples itself.

Of each micro-batch, every prompt is picked with probability `kd.on_policy.fraction` (lambda); the student
samples a continuation for each picked prompt with its current weights (batched, with the KV cache, at
`temperature`, at most `max_new_tokens`), and that continuation replaces the teacher's answer in the batch.
The teacher then scores the whole batch in one forward pass and the loss on sampled tokens is the chosen
divergence alone (no cross-entropy: the sample is not a target to imitate); teacher-written answers keep
the (1 - alpha) CE + alpha KD mix. This removes the train/inference mismatch of learning only on text the
student would not have written.

The picks and the samples are functions of (seed, optimizer step, micro-batch, rank) only, so a run resumed
from a checkpoint after a kill draws exactly the samples the uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from components.common.model_loading import left_padded
from components.train.data import IGNORE, Example, split_prompt
from components.train.modeling import padded_attention


def draw(seed: int, step: int, micro: int, rank: int) -> random.Random:
    """The random source of one micro-batch's picks and samples."""
    return random.Random(f"on-policy/{seed}/{step}/{micro}/{rank}")


def pick(count: int, fraction: float, rng: random.Random) -> list[int]:
    return [i for i in range(count) if rng.random() < fraction]


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[list[int]],
    *,
    pad_id: int,
    eos_id: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[int]]:
    """One continuation per prompt, generated together (left-padded) with the KV cache.

    Each ends with its first end-of-turn token, or after `max_new_tokens`. Temperature 0 is greedy.
    `model` is left in the mode it came in (training mode again if it was: dropout off while sampling).
    """
    device = next(model.parameters()).device
    batch = left_padded(list(prompts), pad_id)
    width = batch["input_ids"].shape[1]
    training = model.training
    model.eval()
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), padded_attention(model):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                use_cache=True,
                **(sampling if temperature > 0 else {"do_sample": False}),
            )
    finally:
        model.train(training)
    continuations = []
    for row in out[:, width:].tolist():
        end = row.index(eos_id) + 1 if eos_id in row else len(row)
        continuations.append(row[:end])
    return continuations


def sampled_example(example: Example, continuation: list[int]) -> Example:
    """The example with the student's continuation in place of the teacher's answer, all of it scored."""
    prompt, _ = split_prompt(example)
    return Example(
        input_ids=prompt + continuation,
        labels=[IGNORE] * len(prompt) + continuation,
        record_id=example.record_id,
        source=example.source,
        sampled=True,
    )


def with_samples(
    model,
    examples: list[Example],
    *,
    fraction: float,
    rng: random.Random,
    pad_id: int,
    eos_id: int,
    temperature: float,
    max_new_tokens: int,
    sampler: Callable[..., list[list[int]]] = sample,
) -> list[Example]:
    """`examples` with a `fraction` of them (drawn from `rng`) replaced by the student's own samples,
    drawn by `sampler` (HF generate, or vllm_sampling.VllmSampler)."""
    chosen = pick(len(examples), fraction, rng)
    if not chosen:
        return list(examples)
    continuations = sampler(
        model,
        [split_prompt(examples[i])[0] for i in chosen],
        pad_id=pad_id,
        eos_id=eos_id,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=rng.getrandbits(63),
    )
    out = list(examples)
    for i, continuation in zip(chosen, continuations, strict=True):
        if continuation:
            out[i] = sampled_example(examples[i], continuation)
    return out


def ce_targets(targets: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
    """`targets` (the batch's scored tokens, example by example) with IGNORE on sampled examples' tokens,
    so that cross-entropy skips them."""
    flags = torch.cat(
        [torch.full((e.num_scored,), e.sampled, dtype=torch.bool) for e in examples]
        or [torch.zeros(0, dtype=torch.bool)]
    )
    return torch.where(flags.to(targets.device), torch.full_like(targets, IGNORE), targets)
