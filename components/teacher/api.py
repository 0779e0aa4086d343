"""The OpenAI-compatible teacher: one `openai.AsyncOpenAI` client, one request per call, errors classified.

The SDK's own retries are off (max_retries=0): the worker pool (generate.py) decides when to retry, so that a
prompt waiting out a Retry-After gives its slot to another prompt, and so that every request is counted.

    teacher = ApiTeacher(provider)           # provider resolved through providers.resolve_provider
    await teacher.preflight()                # reachable, key accepted, model exists: before any paid call
    outcome = await teacher.ask(messages)    # Answer, or Retry(after_s) / Failure
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from components.common.errors import InputError
from components.common.secrets import optional_env, require_env
from components.teacher.config import ProviderConfig

log = logging.getLogger(__name__)
# httpx2 (under openai) logs every request URL at INFO; the stage reports its own progress instead.
logging.getLogger("httpx2").setLevel(logging.WARNING)


@dataclass
class Choice:
    content: str
    reasoning: str | None = None
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Answer:
    """A paid response: its choices and what it cost in tokens."""

    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Retry:
    """A transient failure (429, 5xx, timeout, dropped connection): try again, not before `after_s`."""

    reason: str
    after_s: float | None = None


@dataclass
class Failure:
    """A failure that retrying cannot fix (400, 401, 404 ...)."""

    reason: str
    status: int | None = None

    @property
    def fatal(self) -> bool:
        """True when no other prompt can succeed either (key revoked, model gone): stop the run."""
        return self.status in (401, 403, 404)


@dataclass
class ApiTeacher:
    provider: ProviderConfig
    concurrency: int = 8
    _client: openai.AsyncOpenAI | None = field(default=None, init=False, repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        return self.provider.settings()

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            provider = self.provider
            if provider.api_key_required:
                key = require_env(provider.api_key_env, f"API key of the teacher at {provider.base_url}")
            else:
                # Servers that take no key still need a non-empty string in the Authorization header.
                key = optional_env(provider.api_key_env) or "EMPTY"
            self._client = openai.AsyncOpenAI(
                api_key=key,
                base_url=provider.base_url,
                timeout=provider.timeout_s,
                max_retries=0,
                default_headers=provider.extra_headers or None,
                http_client=_http_client(self.concurrency, provider.timeout_s),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> ApiTeacher:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def preflight(self) -> None:
        """Fail with one clear error unless the endpoint answers, accepts the key and serves the model."""
        provider = self.provider
        where = f"teacher at {provider.base_url}"
        try:
            listed = await self.client.models.list()
            names = [m.id for m in listed.data]
        except openai.AuthenticationError:
            raise InputError(
                f"{where} rejected the API key in ${provider.api_key_env}; check the key and the provider"
            ) from None
        except openai.APIConnectionError as error:
            raise InputError(
                f"{where} is unreachable ({_cause(error)}); check provider.base_url and that the server runs"
            ) from None
        except openai.APIStatusError:
            names = None  # some compatible servers have no /models: ask for one token instead
        if names is None:
            outcome = await self.ask([{"role": "user", "content": "ping"}], max_tokens=1)
            if isinstance(outcome, Failure):
                raise InputError(f"{where}: a one-token test request failed: {outcome.reason}")
        elif provider.model not in names:
            raise InputError(
                f"{where} does not serve model {provider.model!r}; it lists {', '.join(names[:20])}. "
                "Fix provider.model"
            )

    async def ask(
        self, messages: list[dict[str, str]], max_tokens: int | None = None
    ) -> Answer | Retry | Failure:
        body = self.request_body(messages, max_tokens)
        try:
            # client.post is the SDK's documented way to send a body as is: same auth, base_url, timeouts
            # and error classes as chat.completions.create, without its per-request typed transform and
            # pydantic parsing, which cost about 2 ms of CPU each and capped a 2-core machine near 100/s.
            if self.provider.stream:
                response = await self._streamed(body)
            else:
                response = await self.client.post("/chat/completions", body=body, cast_to=object)
        except httpx2.TransportError as error:  # a stream cut off after its first chunk
            return Retry(f"stream interrupted ({type(error).__name__}: {error})")
        except openai.RateLimitError as error:
            return Retry("429 rate limited", retry_after(error.response.headers))
        except openai.InternalServerError as error:
            return Retry(f"{error.status_code} server error", retry_after(error.response.headers))
        except openai.APITimeoutError:
            return Retry(f"no answer within timeout_s={self.provider.timeout_s}")
        except openai.APIConnectionError as error:
            return Retry(f"connection error ({_cause(error)})")
        except openai.APIStatusError as error:
            if error.status_code in (408, 409):
                return Retry(_status_reason(error), retry_after(error.response.headers))
            return Failure(_status_reason(error), error.status_code)
        try:
            return parse_completion(response)
        except (KeyError, TypeError, AttributeError) as error:
            return Retry(f"malformed response ({type(error).__name__}: {error})")

    async def _streamed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stream the answer and join its chunks into the shape of a non-streamed chat.completion."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        stream = await self.client.post(
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
        )
        choices: dict[int, dict[str, Any]] = {}
        usage = None
        async for chunk in stream:
            usage = chunk.get("usage") or usage
            for part in chunk.get("choices") or []:
                choice = choices.setdefault(
                    part["index"],
                    {
                        "message": {"content": "", "reasoning_content": ""},
                        "finish_reason": None,
                        "logprobs": None,
                    },
                )
                delta = part.get("delta") or {}
                choice["message"]["content"] += delta.get("content") or ""
                choice["message"]["reasoning_content"] += (
                    delta.get("reasoning_content") or delta.get("reasoning") or ""
                )
                choice["finish_reason"] = part.get("finish_reason") or choice["finish_reason"]
                if (part.get("logprobs") or {}).get("content"):
                    choice["logprobs"] = choice["logprobs"] or {"content": []}
                    choice["logprobs"]["content"].extend(part["logprobs"]["content"])
        return {"choices": [choices[i] for i in sorted(choices)], "usage": usage}

    def request_body(self, messages: list[dict[str, str]], max_tokens: int | None = None) -> dict[str, Any]:
        provider = self.provider
        body: dict[str, Any] = {"model": provider.model, "messages": messages}
        for name in ("temperature", "top_p", "seed"):
            if getattr(provider, name) is not None:
                body[name] = getattr(provider, name)
        if provider.n > 1:
            body["n"] = provider.n
        limit = max_tokens if max_tokens is not None else provider.max_tokens
        if limit is not None:
            body["max_tokens"] = limit
        if provider.logprobs:
            body["logprobs"] = True
            if provider.top_logprobs:
                body["top_logprobs"] = provider.top_logprobs
        return {**body, **provider.extra_body}


def _http_client(connections: int, timeout_s: float):
    """The SDK's aiohttp transport (openai[aiohttp]): with 256 requests in flight on a loaded 2-core
    machine, httpx's connection pool reached 0.32 of the throughput bound and aiohttp 0.65
    (bench/teacher_throughput.py). Without aiohttp, httpx still works, only slower at high concurrency."""
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        import aiohttp  # noqa: F401  (only to know whether openai's aiohttp transport can run)
    except ImportError:
        log.warning(
            "aiohttp is not installed: using httpx, slower at high concurrency (pip install openai[aiohttp])"
        )
        return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout_s)
    return openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s)


def parse_completion(response: dict[str, Any]) -> Answer:
    """The choices and usage of a chat.completion object (as JSON)."""
    choices = []
    for choice in response["choices"]:
        message = choice.get("message") or {}
        # DeepSeek and DashScope put the chain of thought in reasoning_content; vLLM in reasoning.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        logprobs = None
        content_logprobs = (choice.get("logprobs") or {}).get("content")
        if content_logprobs is not None:
            logprobs = [
                {
                    "token": t["token"],
                    "logprob": t["logprob"],
                    "top": [
                        {"token": a["token"], "logprob": a["logprob"]} for a in t.get("top_logprobs") or []
                    ],
                }
                for t in content_logprobs
            ]
        choices.append(Choice(message.get("content") or "", reasoning, choice.get("finish_reason"), logprobs))
    usage = response.get("usage") or {}
    return Answer(choices, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)


def backoff(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None = None) -> float:
    """Seconds before retry number `attempt` (1-based): the server's Retry-After when given, else
    exponential backoff with full jitter, uniform(0, min(cap, base * 2**(attempt-1)))."""
    if retry_after_s is not None:
        # A little jitter on top, so clients told the same Retry-After do not return in one burst.
        return retry_after_s + random.uniform(0, 0.1 * max(retry_after_s, 0.1))
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from retry-after-ms (OpenAI) or Retry-After (seconds or an HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    try:
        if millis is not None:
            return max(0.0, float(millis) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _status_reason(error: openai.APIStatusError) -> str:
    """'401 Incorrect API key provided.': the status and the server's own message from the error body."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return f"{error.status_code} {message or error.message}"


def _cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
