"""Configuration of the teacher-data stage: where prompts come from, which teacher answers, how safely.

Fields are grouped by concern; every one is checked when the YAML is loaded (components/common/config.py),
and rules that tie two fields together live in `__post_init__`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from components.common.errors import ConfigError
from components.common.runs import check_run_id

DatasetFormat = Literal["auto", "prompts", "alpaca", "sharegpt", "messages", "text"]
AnswerPolicy = Literal["retry", "keep", "drop"]


@dataclass
class ProviderConfig:
    """One teacher: an OpenAI-compatible API, or a local Hugging Face model (`name: local`).

    name: a provider from teacher_config.yaml (openai, deepseek, qwen, vllm, local, ...); it fills
        base_url, model and prices left unset here. Any other name needs `base_url`.
    base_url: the API root ending in /v1 (DeepSeek: https://api.deepseek.com/v1).
    model: the model id at that API, or for `local` a model folder (local path or s3://).
    api_key_env: the environment variable holding the key; the key itself never appears in configs.
    api_key_required: false for servers that take no key (vLLM, the demo); the variable is then optional.
    temperature, top_p, max_tokens, seed, n: generation parameters sent with every request (None: the
        provider's default). n > 1 makes n records per prompt.
    logprobs, top_logprobs: ask for token log-probabilities and store them beside the record.
    stream: receive the answer as server-sent events and join them (some reasoning models, e.g. Qwen3
        with thinking on DashScope, answer only in streaming mode). Usage comes from the final chunk.
    extra_headers, extra_body: sent as given (e.g. DashScope's {"enable_thinking": true}).
    price_input_per_m, price_output_per_m: price per million prompt / completion tokens, for the cost
        totals and `max_cost`.
    rpm, tpm: requests and tokens per minute allowed for this provider (divided between shards).
    timeout_s: per-request timeout; max_retries: attempts after the first on 429/5xx/timeouts/dropped
        connections; backoff_s, backoff_max_s: exponential backoff base and cap (with full jitter);
        a Retry-After from the server is honoured instead when it is given.
    adapter: (local) a PEFT adapter folder applied on top of `model`.
    quantization: (local) "8bit" or "4bit" through bitsandbytes; needs CUDA.
    batch_size: (local) prompts per generate() call.
    """

    name: str = "openai"
    base_url: str | None = None
    model: str = ""
    api_key_env: str = "TEACHER_API_KEY"
    api_key_required: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = 1024
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    price_input_per_m: float | None = None
    price_output_per_m: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    adapter: str | None = None
    quantization: Literal["none", "8bit", "4bit"] = "none"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n: {self.n} must be at least 1")
        if self.top_logprobs and not self.logprobs:
            raise ConfigError("top_logprobs: set logprobs: true as well, or top_logprobs: 0")
        if not 0 <= self.top_logprobs <= 20:
            raise ConfigError(f"top_logprobs: {self.top_logprobs} must be between 0 and 20")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s: {self.timeout_s} must be positive")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries: {self.max_retries} must be 0 or more")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: {value} must be positive, or left unset for no limit")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} must be at least 1")
        if self.quantization != "none" and self.name != "local":
            raise ConfigError("quantization: applies to the local teacher only (name: local)")

    @property
    def is_local(self) -> bool:
        return self.name == "local"

    def settings(self) -> dict[str, Any]:
        """What identifies this teacher's answers: part of every record id and cache key."""
        return {"provider": self.name, "model": self.model, "params": self.generation_params()}

    def generation_params(self) -> dict[str, Any]:
        """The parameters that change the answer: part of every record id and cache key."""
        params = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "n": self.n,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "extra_body": self.extra_body,
            "adapter": self.adapter,
        }
        # Unset values stay out, so adding a new option later keeps existing keys; 0 and 0.0 are real
        # settings (temperature 0 is not the provider's default) and stay in.
        return {k: v for k, v in params.items() if v is not None and v != {} and v is not False}


@dataclass
class TextConfig:
    """How raw text (dataset_format: text) becomes prompts.

    chunk_chars: target size of a chunk; chunks end on a sentence boundary (。！？.!? and newlines) when
        one lies within the chunk, so a chunk may be shorter. overlap_chars: text repeated from the end of
        one chunk at the start of the next (whole sentences). template: "qa" (questions and answers about
        the chunk), "continue" (continue in the same style), or the path of a Jinja file of your own that
        receives `chunk`.
    """

    chunk_chars: int = 1000
    overlap_chars: int = 0
    template: str = "qa"

    def __post_init__(self) -> None:
        if self.chunk_chars < 16:
            raise ConfigError(f"chunk_chars: {self.chunk_chars} is too small; use at least 16")
        if not 0 <= self.overlap_chars < self.chunk_chars:
            raise ConfigError(f"overlap_chars: {self.overlap_chars} must be in [0, chunk_chars)")


@dataclass
class JudgeConfig:
    """Verification of answers against the dataset's `reference` by a second model.

    enabled: judge every answer that has a reference; accepted ones are kept, rejected ones go to
        rejected.jsonl. provider: the judge model (same client; defaults to the teacher's provider).
    template: "judge" (the shipped template) or the path of a Jinja file receiving prompt, reference,
        answer; the judge's reply must contain ACCEPT or REJECT.
    """

    enabled: bool = False
    provider: ProviderConfig | None = None
    template: str = "judge"


@dataclass
class Config:
    """The teacher-data stage: read prompts, ask the teacher, keep every answer safe, filter and split.

    Source
      dataset: prompts file or folder, local path or s3://bucket/key. dataset_format: see readers.py;
        "auto" decides from the first record. bad_lines: "fail" on the first malformed line, or "skip"
        it and count it. max_samples: use only the first N prompts (after dedup and length filters).
      system_prompt: replaces any system message of the source. prompt_template: wraps every user
        prompt; "{prompt}" (str.format) or "{{ prompt }}" (Jinja), or the path of a file holding it.
    Teacher
      provider: see ProviderConfig. provider_config: a teacher_config.yaml of named providers (empty:
        the one shipped beside this file). concurrency: requests in flight (a refilling pool).
      think_in_answer: write the teacher's reasoning into the answer as <think>...</think>.
      on_empty / on_length: what to do with an empty answer / one cut off by max_tokens: "retry" asks
        again (at most provider.max_retries times, then drops it), "keep" or "drop".
    Money
      max_cost (in the providers' price unit), max_requests: stop cleanly once reached, keeping all
        answers so far; requests in flight finish. max_cost covers the whole run (a resumed run counts
        what it spent before), max_requests one invocation; with shards each gets 1/n of both.
        use_cache: reuse answers from any earlier run with the same prompt and settings.
    Storage
      output_dir: receives train.jsonl, test.jsonl, rejected.jsonl, summary.json (and logprobs.jsonl
        when provider.logprobs is on). store_uri: artifact
        store (local folder or s3://) for shards and the cache; empty: the folder `.store` beside
        output_dir. run_id: names the run-scoped prefix runs/<run_id>/teacher, so a restarted task
        resumes. checkpoint_records / checkpoint_seconds: answers are saved at least this often.
      log_every_s: a progress line in the log this often. progress_bar: a tqdm bar (None: only when
        stderr is a terminal).
    Quality
      dedup: drop exact duplicate prompts. near_dup_threshold: also drop prompts whose character
        5-gram Jaccard similarity to an earlier one reaches this (0-1; None: off; uses numpy).
        min/max_prompt_chars,
        min/max_answer_chars: length filters. test_ratio, seed: the split.
    """

    dataset: str
    output_dir: str
    dataset_format: DatasetFormat = "auto"
    bad_lines: Literal["fail", "skip"] = "fail"
    max_samples: int | None = None
    system_prompt: str | None = None
    prompt_template: str | None = None
    text: TextConfig = field(default_factory=TextConfig)

    provider: ProviderConfig = field(default_factory=ProviderConfig)
    provider_config: str = ""
    concurrency: int = 8
    think_in_answer: bool = False
    on_empty: AnswerPolicy = "retry"
    on_length: AnswerPolicy = "drop"
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    max_cost: float | None = None
    max_requests: int | None = None
    use_cache: bool = True

    store_uri: str = ""
    run_id: str = "local"
    checkpoint_records: int = 32
    checkpoint_seconds: float = 10.0
    log_every_s: float = 30.0
    progress_bar: bool | None = None

    dedup: bool = True
    near_dup_threshold: float | None = None
    min_prompt_chars: int = 1
    max_prompt_chars: int | None = None
    min_answer_chars: int = 0
    max_answer_chars: int | None = None
    test_ratio: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset: empty; give a prompts file or folder (local path or s3://)")
        if not self.output_dir:
            raise ConfigError("output_dir: empty; give the folder that receives train.jsonl and test.jsonl")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: {self.concurrency} must be at least 1")
        if not 0 <= self.test_ratio < 1:
            raise ConfigError(f"test_ratio: {self.test_ratio} must be in [0, 1)")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples: {self.max_samples} must be at least 1, or unset for all")
        if self.near_dup_threshold is not None and not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(f"near_dup_threshold: {self.near_dup_threshold} must be in (0, 1]")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ConfigError(f"max_cost: {self.max_cost} must be positive, or unset for no limit")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests: {self.max_requests} must be at least 1, or unset")
        if self.checkpoint_records < 1:
            raise ConfigError(f"checkpoint_records: {self.checkpoint_records} must be at least 1")
        check_run_id(self.run_id)
        if self.store_uri == "":
            self.store_uri = os.path.join(os.path.dirname(os.path.abspath(self.output_dir)), ".store")
