"""Running a model on the test prompts: batched generation, answer perplexity, speed and size.

tokens/s   = generated tokens (up to and including each row's end-of-turn) / seconds inside generate()
perplexity = exp(sum of -log p(answer token) / number of answer tokens), over every test record,
             where the answer is the teacher's reply placed after the prompt by the chat template
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from components.common.errors import ConfigError, InputError

TORCH_DTYPES = {"auto": "auto", "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass
class Generation:
    answers: list[str]  # final answers, reasoning removed
    raw: list[str]  # everything the model produced, special tokens removed
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(path: str | Path, dtype: str, device: torch.device, field: str):
    """(model, tokenizer) from a Hugging Face folder, tokenizer set up for left-padded batches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"{field}: {path} is not a Hugging Face model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype]).to(device).eval()
    return model, tokenizer


def size_on_disk(path: str | Path) -> int:
    """Bytes of the weight files (safetensors or PyTorch bins) in a model folder."""
    path = Path(path)
    return sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in path.glob(pattern))


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages) + "\n"


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply that may think in <think>…</think> before answering."""
    if "</think>" not in text:
        if text.lstrip().startswith("<think>"):  # cut off by max_new_tokens while still thinking: no answer
            return text.lstrip().removeprefix("<think>").strip(), ""
        return "", text.strip()
    head, _, answer = text.rpartition("</think>")
    found = _THINK.findall(head + "</think>")
    reasoning = found[-1] if found else head
    return reasoning.strip(), answer.strip()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict[str, str]]], settings) -> Generation:
    """Answers to each prompt in batches of `settings.batch_size`, greedy unless `settings.do_sample`."""
    torch.manual_seed(settings.seed)
    eos = tokenizer.eos_token_id
    sampling = {"do_sample": settings.do_sample}
    if settings.do_sample:
        sampling.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    specials = [t for t in tokenizer.all_special_tokens if t not in ("<think>", "</think>")]
    raw, new_tokens, seconds = [], 0, 0.0
    for start in range(0, len(prompts), settings.batch_size):
        texts = [prompt_text(tokenizer, m) for m in prompts[start : start + settings.batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        began = time.perf_counter()
        output = model.generate(
            **batch,
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        seconds += time.perf_counter() - began
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            if eos in row:
                row = row[: row.index(eos) + 1]
            new_tokens += len(row)
            text = tokenizer.decode(row, skip_special_tokens=False)
            for special in specials:
                text = text.replace(special, "")
            raw.append(text)
    answers = [split_reasoning(text)[1] for text in raw]
    return Generation(answers=answers, raw=raw, new_tokens=new_tokens, seconds=seconds)


@torch.no_grad()
def answer_perplexity(
    model, tokenizer, prompts: list[list[dict[str, str]]], answers: list[str], batch_size: int
) -> float:
    """Perplexity of `answers` (closed by the end-of-turn token) given their prompts."""
    rows = []
    for messages, answer in zip(prompts, answers, strict=True):
        prompt_ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + answer_ids, len(prompt_ids)))
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), -100)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, prompt_length) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
            attention[i, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        # Position t predicts token t+1: shift so each label lines up with the logits that predicted it.
        logits, labels = logits[:, :-1].float(), labels[:, 1:].to(model.device)
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += int((labels != -100).sum())
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")
