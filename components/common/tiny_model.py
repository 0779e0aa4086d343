"""Tiny Qwen2-architecture students made on the spot, for demos and tests where model hubs are unreachable.

    tiny://qwen2                                  defaults below
    tiny://qwen2?layers=2&hidden=128&warmup_steps=400&seed=0

The tokenizer is a real Hugging Face fast tokenizer: byte-level BPE with no merges (every UTF-8 byte is a
token) plus the ChatML special tokens, saved with a ChatML chat template, so the student goes through the
same chat-template and generation code paths as a Qwen model.

A random-init model cannot learn a new skill through LoRA (the loss stays near ln(vocab)). So the maker
warms the model up with a few hundred full fine-tuning steps on related string skills; LoRA distillation
of string reversal from the teacher then works, and the demo shows the student going from 0% to near 100%
exact match. Of those skills, naming the last letter of a word is learned outright (copying and
uppercasing whole words take far longer than a demo's warm-up): the student has it before distillation,
and the demo's forgetting gate watches it through the shipped lm-eval task demo_last_letter, whose
prompts are the warm-up's.
"""

from __future__ import annotations

import datetime
import logging
import math
import random
import string
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

from components.common.errors import InputError

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# The warm-up skills share the prompt shape of the demo's reversal task (pipelines/demo_teacher.py):
# "<instruction>: <word>". The last letter is drawn as often as the two others together: in a mix of
# equal shares the tiny model had not learned it after 400 steps; at half the draws it has after 300.
WARMUP_TASKS = {
    "Copy the letters of": lambda word: word,
    "Uppercase the letters of": lambda word: word.upper(),
    "Last letter of": lambda word: word[-1],
}
WARMUP_WEIGHTS = (1, 1, 2)


@dataclass(frozen=True)
class TinySpec:
    """Shape and warm-up of a tiny model, parsed from a `tiny://` source."""

    arch: str = "qwen2"
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    max_positions: int = 512
    warmup_steps: int = 400
    warmup_batch: int = 32
    warmup_lr: float = 1e-3
    seed: int = 0
    # BPE merges of the first `merges` pairs of PAIR_MERGES: another tokenizer over the same bytes, for
    # cross-tokenizer distillation between two tiny models.
    merges: int = 0

    @classmethod
    def parse(cls, source: str) -> TinySpec:
        parsed = urlparse(source)
        if parsed.scheme != "tiny" or parsed.netloc != "qwen2":
            raise InputError(f"tiny model source {source!r}: only tiny://qwen2[?key=value&...] exists")
        fields = cls.__dataclass_fields__
        values: dict[str, object] = {}
        for key, raw in parse_qsl(parsed.query, strict_parsing=False):
            if key not in fields or key == "arch":
                valid = ", ".join(f for f in fields if f != "arch")
                raise InputError(f"tiny model source {source!r}: unknown option {key!r}; valid: {valid}")
            kind = float if fields[key].type in ("float", float) else int
            try:
                values[key] = kind(raw)
            except ValueError:
                raise InputError(f"tiny model source {source!r}: {key} must be a number") from None
        return cls(**values)


# Digit pairs, then lowercase letter pairs: merges that change how numbers and words split.
PAIR_MERGES = [(a, b) for a in string.digits for b in string.digits] + [
    (a, b) for a in string.ascii_lowercase for b in string.ascii_lowercase
]


def build_tokenizer(merges: int = 0):
    """A byte-level BPE tokenizer with the first `merges` PAIR_MERGES, ChatML specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    pairs = PAIR_MERGES[:merges]
    vocab.update({a + b: len(alphabet) + i for i, (a, b) in enumerate(pairs)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_model(spec: TinySpec, vocab_size: int, eos_id: int, pad_id: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    torch.manual_seed(spec.seed)
    return Qwen2ForCausalLM(config)


def warmup_examples(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of the warm-up skills on random lowercase words of 3 to 6 letters."""
    examples = []
    for _ in range(count):
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))
        [task] = rng.choices(list(WARMUP_TASKS), weights=WARMUP_WEIGHTS)
        examples.append((f"{task}: {word}", WARMUP_TASKS[task](word)))
    return examples


def encode_example(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat and labels that score only the answer (prompt positions are -100)."""
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def warm_up(model, tokenizer, spec: TinySpec) -> float:
    """Full fine-tuning on the warm-up skills; returns the final loss."""
    import torch

    # One thread: a model this small gains nothing from a second one, and on a shared, busy CPU two
    # threads waiting on each other made every step several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_warm_up(model, tokenizer, spec)
    finally:
        torch.set_num_threads(threads)


def train_warm_up(model, tokenizer, spec: TinySpec) -> float:
    import torch

    rng = random.Random(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.warmup_lr)
    # Linear warm-up over the first 10% of steps, then cosine decay: without it the loss spikes.
    ramp = max(1, spec.warmup_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / ramp)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, step / max(1, spec.warmup_steps))))
        ),
    )
    model.train()
    loss_value = float("nan")
    started = time.monotonic()
    every = max(1, spec.warmup_steps // 10)
    for step in range(spec.warmup_steps):
        batch = [encode_example(tokenizer, p, a) for p, a in warmup_examples(rng, spec.warmup_batch)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        loss_value = loss.item()
        if (step + 1) % every == 0:
            log_warmup_progress(step + 1, spec.warmup_steps, loss_value, time.monotonic() - started)
    model.eval()
    return loss_value


def log_warmup_progress(done: int, total: int, loss: float, seconds: float) -> None:
    """One line a log pane shows: the warm-up takes minutes on a loaded CPU."""
    remaining = datetime.timedelta(seconds=round(seconds / done * (total - done)))
    log.info("tiny student warm-up step %d/%d loss %.4f eta %s", done, total, loss, remaining)


def make_tiny_model(source: str, output_dir: Path) -> dict[str, object]:
    """Create the model described by `source` in `output_dir`; returns facts for the artifact metadata."""

    spec = TinySpec.parse(source)
    tokenizer = build_tokenizer(spec.merges)
    model = build_model(spec, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    final_loss = warm_up(model, tokenizer, spec) if spec.warmup_steps else None
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "warmup_final_loss": final_loss,
    }
