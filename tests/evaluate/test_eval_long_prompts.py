"""Prompts longer than the model's context are cut to fit it, keeping their end, in generation and in
perplexity: no position beyond max_position_embeddings is ever computed."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from components.common.tiny_model import make_tiny_model
from components.evaluate import Config
from components.evaluate.sampling import answer_perplexity, generate, load_model

CPU = torch.device("cpu")
CONTEXT = 64


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-64-positions")
    make_tiny_model(f"tiny://qwen2?warmup_steps=0&max_positions={CONTEXT}", path)
    model, tokenizer = load_model(path, "fp32", CPU, "trained_dir")
    assert model.config.max_position_embeddings == CONTEXT
    return model, tokenizer


def positions_seen(model) -> list[int]:
    """The largest position id of every forward pass of `model` from now on."""
    seen: list[int] = []

    def record(_module, args, kwargs):
        seen.append(int(kwargs["position_ids"].max()))

    model.register_forward_pre_hook(record, with_kwargs=True)
    return seen


PROMPTS = [
    [{"role": "user", "content": "Reverse the letters of: " + "abcdef " * 40 + "END"}],
    [{"role": "user", "content": "Reverse the letters of: sun"}],
]


def test_generation_cuts_an_over_long_prompt_to_the_context_keeping_its_end(short_context_model, caplog):
    model, tokenizer = short_context_model
    seen = positions_seen(model)
    settings = Config(student_dir="b", trained_dir="m", data_dir="d", output_dir="o", max_new_tokens=8)
    with caplog.at_level(logging.WARNING, logger="components.evaluate.sampling"):
        generation = generate(model, tokenizer, PROMPTS, settings)
    model._forward_pre_hooks.clear()

    assert seen and max(seen) < CONTEXT
    assert len(generation.raw) == 2 and generation.new_tokens > 0
    assert caplog.messages == [
        "eval: 1 of 2 prompts are longer than 56 tokens (the model's context 64 less max_new_tokens 8) and "
        "lose their beginning"
    ]


def test_perplexity_of_an_over_long_prompt_and_answer_stays_within_the_context(short_context_model):
    model, tokenizer = short_context_model
    seen = positions_seen(model)
    perplexity = answer_perplexity(model, tokenizer, PROMPTS, ["x" * 80, "nus"], batch_size=2)
    model._forward_pre_hooks.clear()

    assert seen and max(seen) < CONTEXT
    assert math.isfinite(perplexity)
