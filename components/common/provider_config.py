"""The provider of an OpenAI-compatible API or a local Hugging Face model: the teacher's, and the LLM
judges' of the teacher and eval stages. Checked field by field when loaded (components/common/config.py)."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from components.common.chat_template import ChatTemplate
from components.common.config import exposed
from components.common.errors import ConfigError
from components.common.redact import digest_values, redact_config, redact_urls
from components.common.secrets import JUDGE_KEY_ENV, check_api_key_env


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
