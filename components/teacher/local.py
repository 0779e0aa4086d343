"""The local Hugging Face teacher: a model folder generating in this process, in batches.

    provider:
      name: local
      model: /models/qwen2.5-7b-instruct      # or s3://bucket/models/teacher (downloaded first)
      adapter: /models/teacher-lora          # optional PEFT adapter on top (or give an adapter folder as
                                             # model: its adapter_config.json names the base)
      quantization: 4bit                     # optional, "8bit" or "4bit" through bitsandbytes (slow on CPU)
      batch_size: 8
      max_tokens: 512

It writes the same entries as the API teacher (so resume, cache, judge and split work the same), and is
the teacher for offline pseudo-labels. A chain of thought written as <think>...</think> by the model is
moved into the record's `reasoning`. On CPU it runs in float32; on CUDA in bfloat16.

Engines: with CUDA, `vllm` importable (the GPU image option) and no quantization, it generates with
vLLM's offline engine (continuous batching over up to VLLM_BATCH prompts a call, the adapter as a LoRA
request, top-k logprobs when asked); otherwise with Hugging Face `generate`, batch_size prompts a call.
Both give the same Answer for a prompt: text decoded with special tokens and then stripped of the chat
end markers, finish "stop" at the end-of-sequence token else "length", the end token counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from components.common.chat_template import ensure_chat_template
from components.common.devices import note_slow_on_cpu
from components.common.errors import ConfigError
from components.common.logprobs import TokenLogprob, usable
from components.common.model_loading import load_for_generation, quantization_config
from components.common.openai_api import Answer, Choice
from components.common.provider_config import ProviderConfig
from components.common.records import stable_hash
from components.common.store import open_store
from components.common.token_bytes import TokenBytes, token_bytes

log = logging.getLogger(__name__)
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)
VLLM_BATCH = 1024  # prompts handed to vLLM at once; it schedules them itself


def vllm_usable(provider: ProviderConfig) -> bool:
    """vLLM generates when it is installed, a GPU is there and no bitsandbytes quantization is asked."""
    import importlib.util

    import torch

    return (
        provider.quantization == "none"
        and torch.cuda.is_available()
        and importlib.util.find_spec("vllm") is not None
    )


class LocalTeacher:
    def __init__(self, provider: ProviderConfig):

        if provider.n > 1 and not provider.temperature:
            raise ConfigError(
                f"provider.n: {provider.n} answers per prompt from the local teacher need sampling; "
                "set provider.temperature above 0 (greedy decoding gives one answer)"
            )
        self.provider = provider
        self.engine = "vllm" if vllm_usable(provider) else "hf"
        self._llm = None
        self._model = None
        self._tokenizer = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    @property
    def settings(self) -> dict[str, Any]:
        return self.provider.settings()

    def _folder(self, location: str) -> str:
        """A local folder for `location`; an s3:// folder is downloaded once into a scratch folder."""
        if not location.startswith("s3://"):
            return location
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="local-teacher-")
        target = Path(self._scratch.name) / stable_hash(location, 16)
        if not target.is_dir():
            bucket, _, prefix = location[len("s3://") :].partition("/")
            open_store(f"s3://{bucket}").download_dir(prefix, target)
        return str(target)

    def load(self) -> None:
        import torch

        provider = self.provider
        cuda = torch.cuda.is_available()
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if provider.quantization != "none":
            note_slow_on_cpu(
                f"provider.quantization: {provider.quantization}", torch.device("cuda" if cuda else "cpu")
            )
            kwargs["quantization_config"] = quantization_config(provider.quantization)
            kwargs["device_map"] = "auto" if cuda else {"": "cpu"}
        folder, adapter = self._base_and_adapter()
        # An adapter folder from the train stage carries the tokenizer it was trained with: prefer it.
        tokenizer_folder = (
            adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else folder
        )
        model, tokenizer = load_for_generation(folder, tokenizer_folder, **kwargs)
        ensure_chat_template(tokenizer, tokenizer_folder, provider.chat_template, "provider.chat_template")
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        if cuda and provider.quantization == "none":
            model = model.to("cuda")
        model.eval()
        self._model, self._tokenizer = model, tokenizer
        log.info(
            "local teacher %s loaded (%s%s)",
            provider.model,
            "cuda" if cuda else "cpu",
            f", adapter {provider.adapter}" if provider.adapter else "",
        )

    def _base_and_adapter(self) -> tuple[str, str | None]:
        """(base model folder, adapter folder or None). `model` may itself be a PEFT adapter folder, such
        as the train stage's output: its adapter_config.json names the base."""
        provider = self.provider
        folder = self._folder(provider.model)
        adapter_config = Path(folder) / "adapter_config.json"
        if not (Path(folder) / "config.json").is_file() and adapter_config.is_file():
            if provider.adapter:
                raise ConfigError(
                    f"provider.adapter: {provider.model} is already an adapter; give its base as model"
                )
            base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
            return self._folder(base), folder
        return folder, self._folder(provider.adapter) if provider.adapter else None

    async def preflight(self) -> None:
        """Load the model before the first batch, so a bad folder fails before any work is done."""
        if self.engine == "vllm" and self._llm is None:
            await asyncio.to_thread(self.load_vllm)
        elif self.engine == "hf" and self._model is None:
            await asyncio.to_thread(self.load)

    def load_vllm(self) -> None:
        from vllm import LLM

        folder, adapter = self._base_and_adapter()
        self._llm = LLM(
            model=folder, dtype="bfloat16", seed=self.provider.seed or 0, enable_lora=bool(adapter)
        )
        log.info(
            "local teacher %s loaded in vLLM%s",
            self.provider.model,
            f", adapter {adapter}" if adapter else "",
        )

    def generate_vllm(self, conversations: list[list[dict[str, str]]]) -> list[Answer]:
        """The same Answers as `generate`, from vLLM's offline engine."""
        from vllm import SamplingParams

        if self._llm is None:
            self.load_vllm()
        provider = self.provider
        _, adapter = self._base_and_adapter()
        lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, adapter)
        params = SamplingParams(
            n=provider.n,
            temperature=provider.temperature or 0.0,
            top_p=provider.top_p or 1.0,
            max_tokens=provider.max_tokens or 512,
            seed=provider.seed,
            logprobs=(provider.top_logprobs or 1) if provider.logprobs else None,
            skip_special_tokens=False,
        )
        outputs = self._llm.chat(conversations, params, lora_request=lora, use_tqdm=False)
        eos = self._llm.get_tokenizer().eos_token_id
        answers = []
        for output in outputs:
            choices, completion_tokens = [], 0
            for sample in output.outputs:
                ids = list(sample.token_ids)
                ended = sample.finish_reason == "stop"
                # vLLM keeps the end token in token_ids and text; HF's path counts it and drops it.
                text_ids = ids[: ids.index(eos)] if eos in ids else ids
                completion_tokens += len(text_ids) + int(ended)
                text = self._llm.get_tokenizer().decode(text_ids, skip_special_tokens=False)
                choice = _choice(text, ended)
                if provider.logprobs and sample.logprobs:
                    table = token_bytes(self._llm.get_tokenizer())
                    positions = [
                        _vllm_position(table, step, token, provider.top_logprobs)
                        # the end token has log-probabilities too; the text stops before it
                        for step, token in zip(sample.logprobs, text_ids, strict=False)
                    ]
                    choice.logprobs = answer_positions(positions, choice.content)
                choices.append(choice)
            answers.append(Answer(choices, len(output.prompt_token_ids), completion_tokens))
        return answers

    def generate(self, conversations: list[list[dict[str, str]]]) -> list[Answer]:
        """One batched generate() over `conversations`; one Answer with `n` choices each."""
        import torch

        if self._model is None:
            self.load()
        provider, tokenizer, model = self.provider, self._tokenizer, self._model
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sample = bool(provider.temperature)
        options: dict[str, Any] = {
            "max_new_tokens": provider.max_tokens or 512,
            "do_sample": sample,
            "num_return_sequences": provider.n,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if sample:
            options.update(temperature=provider.temperature, top_p=provider.top_p or 1.0)
        torch.manual_seed(provider.seed or 0)
        with torch.no_grad():
            output = model.generate(
                **batch, **options, output_logits=provider.logprobs, return_dict_in_generate=True
            )
        new = output.sequences[:, batch["input_ids"].shape[1] :]
        # The model's own distribution at each step (the logits before temperature and top_p), as an
        # OpenAI-compatible server reports it.
        steps = torch.stack(output.logits, 1).float().log_softmax(-1) if provider.logprobs else None
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        answers = []
        for i, prompt_tokens in enumerate(prompt_lengths):
            choices, completion_tokens = [], 0
            for r in range(i * provider.n, (i + 1) * provider.n):
                ids = new[r].tolist()
                ended = tokenizer.eos_token_id in ids
                if ended:
                    ids = ids[: ids.index(tokenizer.eos_token_id)]
                ids = [t for t in ids if t != tokenizer.pad_token_id]
                completion_tokens += len(ids) + int(ended)
                choice = _choice(tokenizer.decode(ids, skip_special_tokens=False), ended)
                if steps is not None:
                    positions = _hf_positions(token_bytes(tokenizer), steps[r], ids, provider.top_logprobs)
                    choice.logprobs = answer_positions(positions, choice.content)
                choices.append(choice)
            answers.append(Answer(choices, int(prompt_tokens), completion_tokens))
        return answers

    async def generate_all(self, generator, jobs: list) -> Any:
        """Run `jobs` through the generator's cache, policies and journal, `batch_size` prompts at a time."""
        waiting = []
        for job in jobs:
            cached = await generator.lookup_cache(job)
            if cached is not None:
                await generator.finish(job, cached, new_answer=False)
            else:
                waiting.append(job)
        with generator.stopping_on_signals():
            await self._batches(generator, waiting)
        await asyncio.to_thread(generator.journal.flush)
        generator.raise_if_interrupted()
        await asyncio.to_thread(generator.journal.compact)
        return generator.tally

    async def _batches(self, generator, waiting: list) -> None:
        size = VLLM_BATCH if self.engine == "vllm" else self.provider.batch_size
        generate = self.generate_vllm if self.engine == "vllm" else self.generate
        while waiting:
            batch, waiting = waiting[:size], waiting[size:]
            allowed = []
            for job in batch:
                if generator.budget.reserve_now(0.0):
                    job.spent.requests += 1
                    allowed.append(job)
                else:
                    generator.tally.lost("unfinished", generator.budget.stopped)
            if not allowed:
                continue
            await generator.ensure_ready()
            await generator.spend.record(generator.budget)
            answers = await asyncio.to_thread(generate, [job.prompt.messages for job in allowed])
            for job, answer in zip(allowed, answers, strict=True):
                generator.budget.settle(0.0, answer.prompt_tokens, answer.completion_tokens, (0.0, 0.0))
                if await generator.answered(job, answer) is not None:
                    waiting.append(job)  # the policy asked for another try


def _vllm_position(table: TokenBytes, step: dict, token: int, k: int) -> TokenLogprob:
    """One position from vLLM's {id: Logprob} of a step: the chosen token, then its top k."""
    ranked = sorted(step.items(), key=lambda item: -item[1].logprob)[:k]
    return table.position(token, step[token].logprob, [(i, value.logprob) for i, value in ranked])


def _hf_positions(table: TokenBytes, steps, ids: list[int], k: int) -> list[TokenLogprob]:
    """The positions of answer `ids` from the (steps, vocab) log-probabilities that generated them."""
    steps = steps[: len(ids)]
    own = steps.gather(-1, steps.new_tensor(ids).long()[:, None])[:, 0].tolist()
    top = steps.topk(k, dim=-1) if k else None
    return [
        table.position(
            token,
            own[t],
            list(zip(top.indices[t].tolist(), top.values[t].tolist(), strict=True))
            if top is not None
            else [],
        )
        for t, token in enumerate(ids)
    ]


def answer_positions(positions: list[TokenLogprob], answer: str) -> list[dict[str, Any]] | None:
    """The positions that spell `answer` exactly (the text kept once end markers, whitespace and a think
    block are stripped), as stored; None when the answer does not start and end on token boundaries or
    a position is unusable, so that stored logprobs always spell the record's answer."""
    target = answer.encode()
    pieces = [bytes(position.bytes or b"") for position in positions]
    start = b"".join(pieces).rfind(target) if target else -1
    if start < 0:
        return None
    kept, offset = [], 0
    for position, piece in zip(positions, pieces, strict=True):
        if offset >= start and offset + len(piece) <= start + len(target):
            kept.append(position)
        offset += len(piece)
    if b"".join(bytes(p.bytes or b"") for p in kept) != target or not all(usable(p) for p in kept):
        return None
    return [position.to_dict() for position in kept]


def _choice(text: str, ended: bool) -> Choice:
    special = ("<|im_end|>", "<|endoftext|>")
    for token in special:
        text = text.replace(token, "")
    reasoning = None
    match = _THINK.match(text)
    if match:
        reasoning, text = match.group(1).strip(), text[match.end() :]
    return Choice(text.strip(), reasoning, "stop" if ended else "length")
