"""Configuration of the teacher-data stage: where prompts come from, which teacher answers, how safely.

Fields are grouped by concern; every one is checked when the YAML is loaded (components/common/config.py),
and rules that tie two fields together live in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from components.common.chat_template import ChatTemplate
from components.common.config import exposed
from components.common.errors import ConfigError
from components.common.redact import digest_values, redact_config, redact_urls
from components.common.runs import check_run_id
from components.common.secrets import JUDGE_KEY_ENV, check_api_key_env, refuse_secret_path
from components.teacher.templates import render_file_template, render_prompt_template, template_variables

DatasetFormat = Literal["auto", "prompts", "alpaca", "sharegpt", "messages", "text"]
AnswerPolicy = Literal["retry", "keep", "drop"]
HF_DATASETS = "hf://datasets/"
# Seconds between SIGTERM and SIGKILL for the stage's pod: Kubernetes' default
# terminationGracePeriodSeconds. kfp-kubernetes 2.17 has no setting for it (its task settings are
# timeouts, node selectors, tolerations, volumes, secrets, labels ...), so every pipeline pod gets it.
POD_GRACE_S = 30
# What saving takes after the wait for answers in flight: a journal part and the spend ledger.
STOP_SAVE_S = 5


@dataclass(repr=False)
class ProviderConfig:
    """One teacher: an OpenAI-compatible API, or a local Hugging Face model (`name: local`).

    name: a provider from teacher_config.yaml (openai, deepseek, qwen, vllm, local, ...); it fills
        base_url, model and prices left unset here. Any other name needs `base_url`.
    base_url: the API root ending in /v1 (DeepSeek: https://api.deepseek.com/v1). https, or plain http
        to loopback or a cluster-local host (localhost, 127.x, ::1, a one-label Service name, *.svc,
        *.cluster.local); allow_insecure_http: true permits plain http anywhere else, set only on a provider
        of the image's teacher_config.yaml (a run's own value is refused). Never user:password@. The key
        goes only to an approved host (approved_hosts.py).
    model: the model id at that API, or for `local` a model folder (local path or s3://).
    api_key_env: the environment variable holding the key; the key itself never appears in configs.
        Only TEACHER_API_KEY, JUDGE_API_KEY (the pipeline's Secrets) or a name ending in _API_KEY.
    api_key_required: false for servers that take no key (vLLM, the demo); the variable is then optional.
    temperature, top_p, max_tokens, seed, n: generation parameters sent with every request (None: the
        provider's default). n > 1 makes n records per prompt.
    logprobs, top_logprobs: ask for token log-probabilities and store them beside the record.
    stream: receive the answer as server-sent events and join them (some reasoning models, e.g. Qwen3
        with thinking on DashScope, answer only in streaming mode). Usage comes from the final chunk.
    extra_headers, extra_body: sent as given (e.g. DashScope's {"enable_thinking": true}). Their values
        are never written or logged in clear: "***" in summaries and reprs, a digest in records.
    price_input_per_m, price_output_per_m: price per million prompt / completion tokens, for the cost
        totals and `max_cost`. batch_price_factor: what `mode: batch` pays, as a share of those prices
        (OpenAI and DashScope bill their Batch APIs at 0.5; 1.0 claims no discount).
    rpm, tpm: requests and tokens per minute allowed for this provider (divided between shards).
    timeout_s: per-request timeout; max_retries: attempts after the first on 429/5xx/timeouts/dropped
        connections; backoff_s, backoff_max_s: exponential backoff base and cap (with full jitter);
        a Retry-After from the server is honoured instead when it is given, up to max_retry_after_s;
        a longer one (or inf/nan) counts as a failed attempt, retried after the usual backoff.
    preflight_timeout_s: how long the check before the first paid request (GET /models, or a one-token
        request) waits for an answer: a server that never answers is reported at once, not after timeout_s.
    adapter: (local) a PEFT adapter folder applied on top of `model`.
    quantization: (local) "8bit" or "4bit" through bitsandbytes (on a CPU too, slowly).
    batch_size: (local) prompts per generate() call.
    chat_template: (local) a tokenizer without a chat template (Qwen v1, base models) is refused ("model")
        or given ChatML ("chatml").
    """

    name: str = field(
        default="openai",
        metadata=exposed(
            "teacher_provider",
            "deepseek, qwen, openai, vllm (teacher_config.yaml), or any name with teacher_base_url.",
        ),
    )
    base_url: str | None = field(
        default=None,
        metadata=exposed(
            "teacher_base_url", "OpenAI-compatible endpoint; empty uses the provider's default.", none_as=""
        ),
    )
    model: str = field(
        default="",
        metadata=exposed(
            "teacher_model",
            "model name at the provider, e.g. deepseek-chat; empty uses the provider's default.",
        ),
    )
    api_key_env: str = field(
        default="TEACHER_API_KEY",
        metadata=exposed(
            "teacher_api_key_env", "environment variable with the API key (from Secret distill-teacher)."
        ),
    )
    api_key_required: bool | None = None
    # 0 by default: greedy answers are reproducible, so the cross-run cache pays off; raise it with n > 1.
    temperature: float | None = field(
        default=0.0, metadata=exposed("teacher_temperature", "sampling temperature of the teacher.")
    )
    top_p: float | None = None
    max_tokens: int | None = field(
        default=1024, metadata=exposed("teacher_max_tokens", "max tokens per teacher answer.")
    )
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    allow_insecure_http: bool = False
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
    max_retry_after_s: float = 300.0
    preflight_timeout_s: float = 10.0
    adapter: str | None = None
    quantization: Literal["none", "8bit", "4bit"] = "none"
    batch_size: int = 8
    chat_template: ChatTemplate = "model"
    batch_price_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n: {self.n} must be at least 1")
        if self.top_logprobs and not self.logprobs:
            raise ConfigError("top_logprobs: set logprobs: true as well, or top_logprobs: 0")
        if not 0 <= self.top_logprobs <= 20:
            raise ConfigError(f"top_logprobs: {self.top_logprobs} must be between 0 and 20")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s: {self.timeout_s} must be positive")
        for name in ("max_retry_after_s", "preflight_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be positive")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries: {self.max_retries} must be 0 or more")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: {value} must be positive, or left unset for no limit")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} must be at least 1")
        if not 0 < self.batch_price_factor <= 1:
            raise ConfigError(f"batch_price_factor: {self.batch_price_factor} must be in (0, 1]")
        if self.quantization != "none" and self.name != "local":
            raise ConfigError("quantization: applies to the local teacher only (name: local)")
        check_api_key_env(self.api_key_env)
        if self.base_url:
            _check_base_url(self.base_url, self.allow_insecure_http)

    def __repr__(self) -> str:
        shown = redact_config(dataclasses.asdict(self))
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def is_local(self) -> bool:
        return self.name == "local"

    @property
    def answers_from_dataset(self) -> bool:
        """`name: dataset`: each prompt's gold answer is its answer, no teacher is asked (gold.py)."""
        return self.name == "dataset"

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
            # A digest, not the values: this dict is written into every record and the store's journal.
            "extra_body": digest_values(self.extra_body),
            "adapter": self.adapter,
        }
        # Unset values stay out, so adding a new option later keeps existing keys; 0 and 0.0 are real
        # settings (temperature 0 is not the provider's default) and stay in.
        return {k: v for k, v in params.items() if v is not None and v != {} and v is not False}


@dataclass(repr=False)
class JudgeProviderConfig(ProviderConfig):
    """A judge's provider: the fields of ProviderConfig, with the key read from JUDGE_API_KEY unless
    api_key_env names another variable, so the teacher's key never goes to the judge by default."""

    api_key_env: str = JUDGE_KEY_ENV


def _check_base_url(url: str, allow_insecure_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"base_url: {redact_urls(url)!r} is not an http(s) URL; write it like https://host/v1"
        )
    if parts.username is not None or parts.password is not None:
        # The SDK cannot send it next to the bearer key, and a URL is shown in logs and summaries.
        raise ConfigError(
            f"base_url: {redact_urls(url)} holds user:password@; credentials never go in a URL: put the key "
            "in the environment variable that api_key_env names"
        )
    if parts.scheme == "http" and not allow_insecure_http and not _is_cluster_local(parts.hostname):
        raise ConfigError(
            f"base_url: {redact_urls(url)} is plain http to {parts.hostname}, outside loopback and the "
            "cluster, so the API key and prompts would cross the network unencrypted; use https "
            "(only an administrator sets allow_insecure_http: true, on a provider of the image's "
            "teacher_config.yaml)"
        )


def refuse_run_insecure_http(provider: ProviderConfig, field: str) -> None:
    """allow_insecure_http sends a key and prompts in clear over the network: an administrator's choice,
    made on a provider in the image's teacher_config.yaml, never a run's (parameters and overrides)."""
    if provider.allow_insecure_http:
        raise ConfigError(
            f"{field}.allow_insecure_http: may not come from a run's parameters or overrides; use https, "
            "or ask an administrator to add the provider to the image's teacher_config.yaml"
        )


def _is_cluster_local(host: str) -> bool:
    """Loopback, or a name only the cluster's DNS resolves: a Service in the pod's namespace (one label),
    <service>.<namespace>.svc, or anything under cluster.local."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    host = host.lower().rstrip(".")
    return host == "localhost" or "." not in host or host.endswith((".localhost", ".svc", ".cluster.local"))


@dataclass
class TextConfig:
    """How raw text (dataset_format: text) becomes prompts.

    chunk_chars: target size of a chunk; chunks end on a sentence boundary (。！？.!? and newlines) when
        one lies within the chunk, so a chunk may be shorter. overlap_chars: text repeated from the end of
        one chunk at the start of the next (whole sentences). template: "qa" (questions and answers about
        the chunk), "continue" (continue in the same style), or the path of a Jinja file of your own that
        receives `chunk`.
    kinds: mix several templates in one run, template -> share, e.g. {qa: 0.6, continue: 0.4}: each chunk
        gets one template, drawn from a hash of (seed, chunk) so a rerun makes the same prompts; the
        record keeps the chunk id and the template as extra.chunk and extra.prompt_kind. Empty: `template`
        for every chunk.
    """

    chunk_chars: int = 1000
    overlap_chars: int = 0
    template: str = "qa"
    kinds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(share < 0 for share in self.kinds.values()) or (self.kinds and not sum(self.kinds.values())):
            raise ConfigError("text.kinds: shares must be >= 0 and not all 0, e.g. {qa: 0.6, continue: 0.4}")
        if self.chunk_chars < 16:
            raise ConfigError(f"chunk_chars: {self.chunk_chars} is too small; use at least 16")
        if not 0 <= self.overlap_chars < self.chunk_chars:
            raise ConfigError(f"overlap_chars: {self.overlap_chars} must be in [0, chunk_chars)")


@dataclass
class FieldMap:
    """Which fields of arbitrary JSON, parquet or Hugging Face rows hold what; a dotted path reaches into
    nested values (`solutions.0`). question: the user prompt (may be left out when prompt_template builds
    it from the row's fields). answer: the gold answer, kept as the record's reference. system: a
    per-row system prompt."""

    question: str | None = None
    answer: str | None = None
    system: str | None = None

    @property
    def enabled(self) -> bool:
        return any((self.question, self.answer, self.system))


@dataclass
class BatchConfig:
    """How `mode: batch` uses the provider's Batch API (batch.py).

    max_requests_per_file, max_bytes_per_file: the prompts are split into batch input files within
        these (OpenAI: 50,000 requests and 200 MB a file; DashScope: 50,000 and 500 MB).
    completion_window: the window asked of the provider ("24h"); items it leaves unanswered come back
        expired.
    poll_s, poll_max_s: the first wait between status polls, growing by half each poll up to the cap.
    on_failure: what happens to items a batch did not answer (failed, expired, cancelled, or an answer
        the on_empty/on_length policy retries): "sync" asks them one request each at the full price,
        "batch" submits them again in a new batch (at most max_resubmits times, then they count as
        failed), "drop" leaves them unanswered.
    """

    max_requests_per_file: int = 50_000
    max_bytes_per_file: int = 100_000_000
    completion_window: str = "24h"
    poll_s: float = 30.0
    poll_max_s: float = 600.0
    on_failure: Literal["sync", "batch", "drop"] = "sync"
    max_resubmits: int = 2

    def __post_init__(self) -> None:
        if self.max_requests_per_file < 1:
            raise ConfigError(f"batch.max_requests_per_file: {self.max_requests_per_file} must be at least 1")
        if self.max_bytes_per_file < 1024:
            raise ConfigError(
                f"batch.max_bytes_per_file: {self.max_bytes_per_file} is too small; use at least 1024"
            )
        if not 0 < self.poll_s <= self.poll_max_s:
            raise ConfigError(
                f"batch.poll_s: {self.poll_s} must be positive and at most poll_max_s={self.poll_max_s}"
            )
        if self.max_resubmits < 0:
            raise ConfigError(f"batch.max_resubmits: {self.max_resubmits} must be 0 or more")


@dataclass
class JudgeConfig:
    """Verification of answers against the dataset's `reference` by a second model.

    enabled: judge every answer that has a reference; accepted ones are kept, rejected ones go to
        rejected.jsonl. provider: the judge model (same client; defaults to the teacher's provider). Its
        key comes from JUDGE_API_KEY unless provider.api_key_env says otherwise, also when the judge is
        the teacher's provider: to judge with the teacher's key, name TEACHER_API_KEY there.
    template: "judge" (the shipped template) or the path of a Jinja file receiving prompt, reference,
        answer; the judge's reply must contain ACCEPT or REJECT.
    """

    enabled: bool = False
    provider: JudgeProviderConfig | None = None
    template: str = "judge"


@dataclass
class Config:
    """The teacher-data stage: read prompts, ask the teacher, keep every answer safe, filter and split.

    Source
      dataset: prompts file or folder, local path or s3://bucket/key, or a Hugging Face dataset
        hf://datasets/org/name[@revision] read with the `datasets` library (dataset_split, dataset_config
        pick its split and configuration). .parquet files are read in row batches. dataset_format: see
        readers.py; "auto" decides from the first record. fields: read arbitrary rows through a mapping
        (see FieldMap); prompt_template (Jinja) then sees every field of the row. bad_lines: "fail" on the first malformed line, or "skip"
        it and count it. max_samples: use only the first N prompts (after dedup and length filters).
      system_prompt: replaces any system message of the source. prompt_template: wraps every user
        prompt; "{prompt}" (str.format) or "{{ prompt }}" (Jinja), or the path of a file holding it.
    Teacher
      provider: see ProviderConfig. provider_config: a teacher_config.yaml of named providers (empty:
        the one shipped beside this file). concurrency: requests in flight (a refilling pool).
      mode: "sync" asks one request per prompt; "batch" submits the prompts to the provider's Batch
        API (OpenAI-compatible /v1/batches: OpenAI, DashScope), at its batch prices, answered within its
        completion window; see BatchConfig and batch.py.
      think_in_answer: write the teacher's reasoning into the answer as <think>...</think>.
      on_empty / on_length: what to do with an empty answer / one cut off by max_tokens: "retry" asks
        again (at most provider.max_retries times, then drops it), "keep" or "drop".
    Money
      max_cost (in the providers' price unit), max_requests: never exceeded, for the whole run (every
        attempt of every invocation, a resumed or retried one counting what the run spent before): a
        request is reserved at its worst-case cost before it leaves, and the run stops cleanly, keeping
        all answers so far, once the next request might not fit. max_cost needs the teacher's (and the
        judge's) prices and provider.max_tokens. With shards each gets its share of both.
        use_cache: reuse answers from any earlier run with the same prompt and settings.
      min_answered_ratio: below this share of the planned prompts answered, the stage saves what it
        has and fails with the count of each cause, so that a retry of the task resumes (a budget stop
        is not a failure).
    Storage
      output_dir: receives train.jsonl, test.jsonl, rejected.jsonl, summary.json (and logprobs.jsonl
        when provider.logprobs is on). store_uri: artifact
        store (local folder or s3://) for shards and the cache; empty: the folder `.store` beside
        output_dir. run_id: names the run-scoped prefix runs/<run_id>/teacher, so a restarted task
        resumes. checkpoint_records / checkpoint_seconds: answers are saved at least this often.
      stop_wait_s: on SIGTERM, how long the answers in flight may still land before the stage stops
        without them (they count at their worst-case cost; a restart asks them again); at most
        POD_GRACE_S - STOP_SAVE_S, so the pod saves everything before Kubernetes kills it.
      log_every_s: a progress line in the log this often. progress_bar: a tqdm bar (None: only when
        stderr is a terminal).
    Quality
      dedup: drop exact duplicate prompts (a 32-byte digest per prompt: fine at a million).
        near_dup_threshold: also drop prompts whose character 5-gram Jaccard similarity to an earlier
        one reaches this (0-1; None: off; uses numpy). It keeps every kept prompt's 5-grams in memory,
        about 100 bytes per character of prompt (30 KB for a 260-character prompt): within a 1 GB pod
        that is some tens of thousands of prompts; for more, leave it off or give the pod the memory.
        min/max_prompt_chars,
        min/max_answer_chars: length filters. test_ratio, seed: the split.
    """

    dataset: str = field(
        metadata=exposed(
            "teacher_dataset",
            "prompts file or folder (local path in the image, or s3://).",
            pipeline_default="s3://distill/datasets/prompts.jsonl",
        )
    )
    output_dir: str
    dataset_format: DatasetFormat = field(
        default="auto",
        metadata=exposed("teacher_dataset_format", "auto, prompts, alpaca, sharegpt, messages or text."),
    )
    dataset_split: str = "train"
    dataset_config: str | None = None
    fields: FieldMap = field(default_factory=FieldMap)
    bad_lines: Literal["fail", "skip"] = "fail"
    max_samples: int | None = None
    # Several datasets mixed into one, location -> the share of its own rows taken (a seeded sample of
    # int(rows x share)), as seed 004 mixes {grpo_data.json: 0.7, sft_data.json: 0.3}; `dataset` is one
    # of the locations. Each is read like `dataset` (format, fields, templates). Empty: `dataset` alone.
    mix: dict[str, float] = field(default_factory=dict)
    system_prompt: str | None = field(
        default=None,
        metadata=exposed(
            "teacher_system_prompt", "system prompt added to every request (empty: none).", none_as=""
        ),
    )
    prompt_template: str | None = None
    text: TextConfig = field(default_factory=TextConfig)

    provider: ProviderConfig = field(default_factory=ProviderConfig)
    provider_config: str = ""
    concurrency: int = field(
        default=16, metadata=exposed("teacher_concurrency", "requests in flight at once.")
    )
    mode: Literal["sync", "batch"] = field(
        default="sync",
        metadata=exposed(
            "teacher_mode",
            "sync (a request per prompt) or batch (the provider's Batch API, cheaper, slower).",
        ),
    )
    batch: BatchConfig = field(default_factory=BatchConfig)
    think_in_answer: bool = False
    on_empty: AnswerPolicy = "retry"
    on_length: AnswerPolicy = "drop"
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    max_cost: float | None = None
    max_requests: int | None = None
    use_cache: bool = True
    min_answered_ratio: float = 0.95
    # Extra copies of the kept train records for other trainers: sharegpt (+ dataset_info.json, the
    # layout LLaMA-Factory reads); alpaca (instruction/input/output, with chunk_id and category for raw
    # text, as the published raw-text recipe writes them); dpo (preference pairs from the judge's rejected
    # answers, the gold answer as the chosen one, for a later preference stage as seed 001 plans).
    export: list[Literal["sharegpt", "alpaca", "dpo"]] = field(default_factory=list)

    store_uri: str = ""
    run_id: str = "local"
    checkpoint_records: int = 32
    checkpoint_seconds: float = 10.0
    stop_wait_s: float = 20.0
    log_every_s: float = 30.0
    progress_bar: bool | None = None

    dedup: bool = True
    near_dup_threshold: float | None = None
    min_prompt_chars: int = 1
    max_prompt_chars: int | None = None
    min_answer_chars: int = 0
    max_answer_chars: int | None = None
    test_ratio: float = field(
        default=0.1, metadata=exposed("teacher_test_ratio", "share of records held out for evaluation.")
    )
    seed: int = field(
        default=0, metadata=exposed("seed", "seed of the teacher data's split and of training.")
    )

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset: empty; give a prompts file or folder (local path or s3://)")
        if not self.output_dir:
            raise ConfigError("output_dir: empty; give the folder that receives train.jsonl and test.jsonl")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: {self.concurrency} must be at least 1")
        if not 0 <= self.test_ratio < 1:
            raise ConfigError(f"test_ratio: {self.test_ratio} must be in [0, 1)")
        if self.mix and self.dataset not in self.mix:
            raise ConfigError(
                f"mix: the dataset {self.dataset} must be one of its locations, e.g. mix: {{{self.dataset}: 0.7, "
                "<another dataset>: 0.3}"
            )
        if any(not 0 < share <= 1 for share in self.mix.values()):
            raise ConfigError(f"mix: each share of a dataset's rows must be in (0, 1], got {self.mix}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples: {self.max_samples} must be at least 1, or unset for all")
        if self.near_dup_threshold is not None and not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(f"near_dup_threshold: {self.near_dup_threshold} must be in (0, 1]")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ConfigError(f"max_cost: {self.max_cost} must be positive, or unset for no limit")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests: {self.max_requests} must be at least 1, or unset")
        if not 0 <= self.min_answered_ratio <= 1:
            raise ConfigError(f"min_answered_ratio: {self.min_answered_ratio} must be in [0, 1]")
        if self.checkpoint_records < 1:
            raise ConfigError(f"checkpoint_records: {self.checkpoint_records} must be at least 1")
        if not 0 <= self.stop_wait_s <= POD_GRACE_S - STOP_SAVE_S:
            raise ConfigError(
                f"stop_wait_s: {self.stop_wait_s} must be in [0, {POD_GRACE_S - STOP_SAVE_S}]: the pod has "
                f"{POD_GRACE_S} s after SIGTERM, and saving takes up to {STOP_SAVE_S} s after the wait"
            )
        check_run_id(self.run_id)
        refuse_run_insecure_http(self.provider, "provider")
        if self.judge.provider is not None:
            refuse_run_insecure_http(self.judge.provider, "judge.provider")
        if self.mode == "batch" and (self.provider.is_local or self.provider.answers_from_dataset):
            raise ConfigError("mode: batch needs an API provider; the local teacher generates in-process")
        self._check_source()
        if not self.dataset.startswith(("s3://", HF_DATASETS)):
            refuse_secret_path(self.dataset, "dataset")
        # Judging on the teacher's own provider still takes the judge's key variable: the teacher's key
        # reaches a judge only where a config names it.
        if self.judge.enabled and self.judge.provider is None:
            fields = {**dataclasses.asdict(self.provider), "api_key_env": JUDGE_KEY_ENV}
            self.judge.provider = JudgeProviderConfig(**fields)
        self._check_templates()
        if self.store_uri == "":
            self.store_uri = os.path.join(os.path.dirname(os.path.abspath(self.output_dir)), ".store")

    def _check_source(self) -> None:
        if self.dataset.startswith("hf://") and not self.dataset.startswith(HF_DATASETS):
            raise ConfigError(
                f"dataset: {self.dataset!r}: a Hugging Face dataset is written hf://datasets/org/name[@revision]"
            )
        if self.dataset.startswith(HF_DATASETS):
            repo = self.dataset[len(HF_DATASETS) :].partition("@")[0]
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise ConfigError(f"dataset: {self.dataset!r}: expected hf://datasets/org/name[@revision]")
        if self.fields.enabled:
            if self.dataset_format not in ("auto", "prompts"):
                raise ConfigError(
                    f"fields: rows are read through the mapping, which dataset_format {self.dataset_format!r} "
                    "contradicts; leave dataset_format auto"
                )
            if not self.fields.question and not self.prompt_template:
                raise ConfigError(
                    "fields.question: name the field holding the prompt, or give a Jinja prompt_template "
                    "over the row's fields (e.g. {{ title }})"
                )

    def _check_templates(self) -> None:
        """Render every template once with sample values, so an unsafe or broken one stops the run at
        load, before any request."""
        if self.prompt_template and self.fields.enabled:
            sample = {name: "A sample value." for name in template_variables(self.prompt_template)}
            question = "A sample prompt." if self.fields.question else None
            render_prompt_template(self.prompt_template, question, sample)
        elif self.prompt_template:
            render_prompt_template(self.prompt_template, "A sample prompt.")
        render_file_template(self.text.template, field="text.template", chunk="A sample passage.")
        for kind in self.text.kinds:
            render_file_template(kind, field="text.kinds", chunk="A sample passage.")
        if self.judge.enabled:
            sample = {"prompt": "A sample question?", "reference": "A reference.", "answer": "An answer."}
            render_file_template(self.judge.template, field="judge.template", **sample)
