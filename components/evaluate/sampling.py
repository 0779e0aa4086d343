"""Running a model on the test prompts: batched generation, answer perplexity, speed and size.

tokens/s   = generated tokens (up to and including each row's end-of-turn) / seconds inside generate()
perplexity = exp(sum of -log p(answer token) / number of answer tokens), over every test record,
             where the answer is the teacher's reply placed after the prompt by the chat template

A prompt longer than the model's context (max_position_embeddings) less max_new_tokens loses its
beginning, keeping the question at its end; the log counts such prompts.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from components.common.devices import note_slow_on_cpu
from components.common.errors import InputError
from components.common.model_loading import left_padded, load_for_generation, quantization_config

log = logging.getLogger(__name__)

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


def load_model(
    path: str | Path,
    dtype: str,
    device: torch.device,
    field: str,
    base_dir: str | Path = "",
    quantization: str = "none",
    remote_code: bool = False,
):
    """(model, tokenizer) from a Hugging Face folder, tokenizer set up for left-padded batches; the
    folder's own code runs only with `remote_code` (the run's opt-in) and its download marker.

    A PEFT adapter folder (adapter_config.json, e.g. the train output when merging is skipped) is applied
    unmerged on top of the model in `base_dir`. `quantization` "8bit" or "4bit" (NF4) loads the weights
    through bitsandbytes, as a quantized deployment would serve them.
    """

    kwargs: dict = {"dtype": TORCH_DTYPES[dtype], "device_map": {"": device}}
    if quantization != "none":
        note_slow_on_cpu(f"quantization: {quantization} (bitsandbytes)", device)
        kwargs["quantization_config"] = quantization_config(quantization)

    path = Path(path)
    is_adapter = (path / "adapter_config.json").is_file()
    weights = Path(base_dir) if is_adapter else path
    if not (weights / "config.json").is_file():
        what = f"the adapter's base {weights}" if is_adapter else str(path)
        raise InputError(f"{field}: {what} is not a Hugging Face model folder (no config.json)")
    tokenizer_folder = path if (path / "tokenizer_config.json").is_file() else weights
    model, tokenizer = load_for_generation(weights, tokenizer_folder, remote_code, **kwargs)
    if is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path))
    return model.eval(), tokenizer


def size_on_disk(path: str | Path, base_dir: str | Path = "") -> int:
    """Bytes of the weight files (safetensors or PyTorch bins) in a model folder; for an adapter folder,
    the adapter's plus its base's, which it cannot run without."""
    path = Path(path)
    own = sum(p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in path.glob(pattern))
    return own + size_on_disk(base_dir) if (path / "adapter_config.json").is_file() else own


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


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's end of sequence plus the model's generation config
    ones (chat models often list several, e.g. Llama 3's <|eot_id|> and <|end_of_text|>)."""
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in [tokenizer.eos_token_id, *configured] if i is not None))


def context_length(model) -> int | None:
    """Positions the model can attend over (max_position_embeddings; GPT-2 calls it n_positions)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_prompts(prompt_ids: list[list[int]], context: int | None, max_new_tokens: int) -> list[list[int]]:
    """Each prompt cut to its last (context - max_new_tokens) tokens, at least half the context, so that
    prompt and answer fit; the end of a prompt (the question and the assistant turn marker) is kept."""
    if context is None:
        return prompt_ids
    limit = max(context - max_new_tokens, context // 2)
    cut = sum(len(ids) > limit for ids in prompt_ids)
    if cut:
        log.warning(
            "eval: %d of %d prompts are longer than %d tokens (the model's context %d less max_new_tokens "
            "%d) and lose their beginning",
            cut,
            len(prompt_ids),
            limit,
            context,
            max_new_tokens,
        )
    return [ids[-limit:] for ids in prompt_ids]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict[str, str]]], settings) -> Generation:
    """Answers to each prompt in batches of `settings.batch_size`, greedy unless `settings.do_sample`."""
    torch.manual_seed(settings.seed)
    stops = stop_ids(model, tokenizer)
    sampling = {"do_sample": settings.do_sample}
    if settings.do_sample:
        sampling.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    specials = special_tokens(tokenizer)
    context = context_length(model)
    prompt_ids = [
        tokenizer(prompt_text(tokenizer, m), add_special_tokens=False)["input_ids"] for m in prompts
    ]
    prompt_ids = fit_prompts(prompt_ids, context, settings.max_new_tokens)
    # Prompts of similar length share a batch (less padding to compute); answers go back in input order.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    raw, new_tokens, seconds = [""] * len(prompt_ids), 0, 0.0
    for start in range(0, len(order), settings.batch_size):
        rows = order[start : start + settings.batch_size]
        batch = left_padded([prompt_ids[i] for i in rows], tokenizer.pad_token_id)
        batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
        width = batch["input_ids"].shape[1]
        began = time.perf_counter()
        output = model.generate(
            **batch,
            max_new_tokens=min(settings.max_new_tokens, context - width)
            if context
            else settings.max_new_tokens,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        if output.is_cuda:
            torch.cuda.synchronize()  # kernels run asynchronously: stop the clock when they are done
        seconds += time.perf_counter() - began
        for index, row in zip(rows, output[:, width:].tolist(), strict=True):
            raw[index], count = decode_output(row, stops, tokenizer, specials)
            new_tokens += count
    answers = [split_reasoning(text)[1] for text in raw]
    return Generation(answers=answers, raw=raw, new_tokens=new_tokens, seconds=seconds)


def special_tokens(tokenizer) -> list[str]:
    """The special tokens removed from outputs; <think> and </think> stay, split_reasoning reads them."""
    return [t for t in tokenizer.all_special_tokens if t not in ("<think>", "</think>")]


def decode_output(row: list[int], stops: list[int], tokenizer, specials: list[str]) -> tuple[str, int]:
    """(text, generated tokens) of one output: cut after its first stop token, special tokens removed."""
    end = next((i for i, token in enumerate(row) if token in stops), None)
    if end is not None:
        row = row[: end + 1]
    text = tokenizer.decode(row, skip_special_tokens=False)
    for special in specials:
        text = text.replace(special, "")
    return text, len(row)


@torch.no_grad()
def answer_perplexity(
    model, tokenizer, prompts: list[list[dict[str, str]]], answers: list[str], batch_size: int
) -> float:
    """Perplexity of `answers` (closed by the end-of-turn token) given their prompts.

    Rows are left-padded so that every answer ends at the last position; the model then computes logits
    only for the last K = longest answer + 1 positions (`logits_to_keep`). Full logits would not fit: with
    a 151,936-token vocabulary, 16 rows of 1,024 positions take 16·1024·151936·4 B ≈ 10 GB in fp32.
    """
    # The end-of-turn token is part of the answer: a student that cannot stop has not learned it.
    end_of_turn = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    context = context_length(model)
    rows = []
    for messages, answer in zip(prompts, answers, strict=True):
        prompt_ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + end_of_turn
        if context is not None and len(prompt_ids) + len(answer_ids) > context:
            # Over-long: keep the answer's start (scored given at least one prompt token) and the
            # prompt's end, as generation does.
            answer_ids = answer_ids[: context - 1]
            prompt_ids = prompt_ids[-(context - len(answer_ids)) :]
        rows.append((prompt_ids, answer_ids))
    rows.sort(key=lambda row: len(row[0]) + len(row[1]))  # similar lengths share a batch: less padding
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        keep = max(len(a) for _, a in chunk) + 1
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), -100)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (prompt_ids, answer_ids) in enumerate(chunk):
            ids = prompt_ids + answer_ids
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            labels[i, width - len(answer_ids) :] = torch.tensor(answer_ids)
            attention[i, width - len(ids) :] = 1
        # Left padding would shift positions; count them from each row's first real token instead.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions}
        inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
        logits = model(**inputs, logits_to_keep=keep).logits if keeps_logits else model(**inputs).logits
        # logits[:, j] sits at position width - keep + j and predicts the token after it.
        logits, targets = logits[:, -keep:-1].float(), labels[:, width - keep + 1 :].to(model.device)
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += int((targets != -100).sum())
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")
