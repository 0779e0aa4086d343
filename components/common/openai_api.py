"""The OpenAI-compatible teacher: one `openai.AsyncOpenAI` client, one request per call, errors classified.

The SDK's own retries are off (max_retries=0): the worker pool (teacher/worker_pool.py) decides when to retry, so that a
prompt waiting out a Retry-After gives its slot to another prompt, and so that every request is counted.

    teacher = ApiTeacher(provider)           # provider resolved through providers.resolve_provider
    await teacher.preflight()                # reachable, key accepted, model exists: before any paid call
    outcome = await teacher.ask(messages)    # Answer, or Retry(after_s) / Failure

Every Retry and Failure names its `cause`, a short stable word for counting failures by cause ("429",
"500", "timeout", "refused", "dns", "tls", "reset", "closed", "stream", "malformed", "401", ...), and a
`reason`, the cause with its details for the log.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components.common.approved_hosts import APPROVED_HOSTS_ENV, key_may_go_to
from components.common.backoff import retry_after
from components.common.errors import InputError
from components.common.logprobs import valid_prefix
from components.common.provider_config import ProviderConfig
from components.common.redact import redact_urls
from components.common.secrets import optional_env, require_env

if TYPE_CHECKING:
    import openai

# The SDK (the teacher extra) is imported where a request is made: every image imports components.common,
# and only the teacher and eval images install openai.
log = logging.getLogger(__name__)
# httpx2 (under openai) logs every request URL at INFO; the stage reports its own progress instead.
logging.getLogger("httpx2").setLevel(logging.WARNING)


# Token counts beyond this are no provider's real usage, and would overflow a float cost.
MAX_TOKEN_COUNT = 2**53


def valid_count(value: object) -> bool:
    """A token count as a provider may report it: a whole number (not a bool) in [0, MAX_TOKEN_COUNT]."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT


@dataclass
class Choice:
    content: str
    reasoning: str | None = None
    finish_reason: str | None = None
    # Per answer token, in the record contract's shape (components/common/logprobs.py), all valid.
    logprobs: list[dict[str, Any]] | None = None
    # Positions of the reply's logprobs left out from the first unusable one on (counted in the summary).
    logprobs_dropped: int = 0


@dataclass
class Answer:
    """A paid response: its choices and what it cost in tokens."""

    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = True  # False: the reply's usage was missing or invalid (the counts are 0)


@dataclass
class Retry:
    """A transient failure (429, 5xx, timeout, dropped connection): try again, not before `after_s`."""

    reason: str
    after_s: float | None = None
    cause: str = "transient"


@dataclass
class Failure:
    """A failure that retrying cannot fix (400, 401, 404 ...)."""

    reason: str
    status: int | None = None

    @property
    def cause(self) -> str:
        return str(self.status) if self.status is not None else "error"

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
        import openai

        if self._client is None:
            provider = self.provider
            approved = key_may_go_to(provider.base_url)
            if provider.api_key_required:
                if not approved:
                    raise InputError(
                        f"provider.base_url: {redact_urls(provider.base_url or '')} is not a host approved "
                        f"for the key in ${provider.api_key_env}: keys go only to the providers of the "
                        f"image's teacher_config.yaml and the origins an administrator lists in "
                        f"{APPROVED_HOSTS_ENV} (ConfigMap distill-approved-hosts)"
                    )
                key = require_env(provider.api_key_env, f"API key of the teacher at {provider.base_url}")
            else:
                # Servers that take no key still need a non-empty string in the Authorization header;
                # one at an unapproved host never gets the key, even when the variable is set.
                key = (optional_env(provider.api_key_env) if approved else None) or "EMPTY"
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
        """Fail with one clear error unless the endpoint answers, accepts the key and serves the model.

        Each check waits at most preflight_timeout_s: a server that accepts connections and never answers
        is reported within seconds, naming the request it did not answer."""
        import openai

        provider = self.provider
        where = f"teacher at {provider.base_url}"
        timeout_s = provider.preflight_timeout_s
        try:
            listed = await self.client.models.list(timeout=timeout_s)
            names = [m.id for m in listed.data]
        except openai.AuthenticationError:
            raise InputError(
                f"{where} rejected the API key in ${provider.api_key_env}; check the key and the provider"
            ) from None
        except openai.APIConnectionError as error:
            cause, reason = connection_failure(error, timeout_s, "preflight_timeout_s")
            waited = "did not answer GET /models" if cause == "timeout" else "is unreachable"
            raise InputError(
                f"{where} {waited}: {reason}; check provider.base_url and that the server runs and is not "
                "overloaded"
            ) from None
        except openai.APIStatusError:
            names = None  # some compatible servers have no /models: ask for one token instead
        if names is None:
            ping = [{"role": "user", "content": "ping"}]
            outcome = await self.ask(ping, max_tokens=1, timeout_s=timeout_s)
            if isinstance(outcome, Retry) and outcome.cause == "timeout":
                raise InputError(
                    f"{where} did not answer a one-token chat completion within preflight_timeout_s="
                    f"{timeout_s:g}; check that the server runs and is not overloaded"
                )
            if isinstance(outcome, Failure):
                raise InputError(f"{where}: a one-token test request failed: {outcome.reason}")
        elif provider.model not in names:
            raise InputError(
                f"{where} does not serve model {provider.model!r}; it lists {', '.join(names[:20])}. "
                "Fix provider.model"
            )

    async def ask(
        self, messages: list[dict[str, str]], max_tokens: int | None = None, timeout_s: float | None = None
    ) -> Answer | Retry | Failure:
        import httpx2
        import openai

        body = self.request_body(messages, max_tokens)
        timeout_s = timeout_s or self.provider.timeout_s
        try:
            # client.post is the SDK's documented way to send a body as is: same auth, base_url, timeouts
            # and error classes as chat.completions.create, without its per-request typed transform and
            # pydantic parsing, which cost about 2 ms of CPU each and capped a 2-core machine near 100/s.
            if self.provider.stream:
                response = await self._streamed(body, timeout_s)
            else:
                response = await self.client.post(
                    "/chat/completions", body=body, cast_to=object, options={"timeout": timeout_s}
                )
        except httpx2.TransportError as error:  # a stream cut off after its first chunk
            return Retry(f"stream interrupted ({type(error).__name__}: {error})", cause="stream")
        except openai.RateLimitError as error:
            return self._server_retry("429", "429 rate limited", error.response.headers)
        except openai.InternalServerError as error:
            code = str(error.status_code)
            return self._server_retry(code, f"{code} server error", error.response.headers)
        except openai.APIConnectionError as error:
            cause, reason = connection_failure(error, timeout_s)
            return Retry(reason, cause=cause)
        except openai.APIStatusError as error:
            if error.status_code in (408, 409):
                return self._server_retry(
                    str(error.status_code), _status_reason(error), error.response.headers
                )
            return Failure(_status_reason(error), error.status_code)
        try:
            return parse_completion(response, self.provider.top_logprobs)
        except (KeyError, TypeError, AttributeError) as error:
            return Retry(f"malformed response ({type(error).__name__}: {error})", cause="malformed")

    def _server_retry(self, cause: str, reason: str, headers: Any) -> Retry:
        """Retry after the server's Retry-After, when it is a wait worth parking the prompt for: beyond
        max_retry_after_s (or inf/nan) it counts as a plain failed attempt, retried after the backoff."""
        after_s = retry_after(headers)
        cap_s = self.provider.max_retry_after_s
        if after_s is not None and not after_s <= cap_s:
            return Retry(
                f"{reason}; its Retry-After {after_s:g} s is beyond max_retry_after_s={cap_s:g}", cause=cause
            )
        return Retry(reason, after_s, cause)

    async def _streamed(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Stream the answer and join its chunks into the shape of a non-streamed chat.completion."""
        import openai

        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        stream = await self.client.post(
            "/chat/completions",
            body=body,
            cast_to=object,
            options={"timeout": timeout_s},
            stream=True,
            stream_cls=openai.AsyncStream[object],
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
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        import aiohttp  # noqa: F401  (only to know whether openai's aiohttp transport can run)
    except ImportError:
        log.warning(
            "aiohttp is not installed: using httpx, slower at high concurrency (pip install openai[aiohttp])"
        )
        return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout_s)
    return openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s)


def parse_completion(response: dict[str, Any], top_logprobs: int = 0) -> Answer:
    """The choices and usage of a chat.completion object (as JSON); `top_logprobs` is how many
    alternatives per token were asked for."""
    choices = []
    for choice in response["choices"]:
        message = choice.get("message") or {}
        # DeepSeek and DashScope put the chain of thought in reasoning_content; vLLM in reasoning.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        parsed = Choice(message.get("content") or "", reasoning, choice.get("finish_reason"))
        content_logprobs = (choice.get("logprobs") or {}).get("content")
        if content_logprobs is not None:
            positions, parsed.logprobs_dropped, problem = valid_prefix(content_logprobs, top_logprobs)
            parsed.logprobs = [position.to_dict() for position in positions]
            if parsed.logprobs_dropped:
                log.warning(
                    "the teacher's logprobs: %s; kept the %d positions before it, left out %d",
                    problem,
                    len(positions),
                    parsed.logprobs_dropped,
                )
        choices.append(parsed)
    counts = reported_usage(response.get("usage"))
    if counts is None:
        return Answer(choices, 0, 0, usage_reported=False)
    return Answer(choices, *counts)


def reported_usage(usage: Any) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of a reply's `usage`, or None when either is missing or is no
    token count (negative, NaN, a string): the request is then paid at its worst case (Budget.settle)."""
    if not isinstance(usage, dict):
        return None
    counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    return counts if all(valid_count(c) for c in counts) else None


def _status_reason(error: openai.APIStatusError) -> str:
    """'401 Incorrect API key provided.': the status and the server's own message from the error body."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return f"{error.status_code} {message or error.message}"


# The first of these found along an error's chain names the cause. openai's aiohttp transport reports every
# connection failure as a timeout (ConnectTimeout), so the SDK's error class alone cannot be trusted.
@functools.cache
def _connection_causes() -> list[tuple[tuple[type[BaseException], ...], str, str]]:
    import httpx2

    causes: list[tuple[tuple[type[BaseException], ...], str, str]] = [
        ((socket.gaierror,), "dns", "DNS lookup of the host failed"),
        ((ssl.SSLError,), "tls", "TLS handshake failed"),
        ((ConnectionRefusedError,), "refused", "connection refused"),
        ((ConnectionResetError, ConnectionAbortedError, BrokenPipeError), "reset", "connection reset"),
        ((httpx2.RemoteProtocolError,), "closed", "connection closed without an answer"),
        ((TimeoutError, httpx2.TimeoutException), "timeout", ""),
    ]
    try:
        import aiohttp

        causes.insert(
            -1, ((aiohttp.ServerDisconnectedError,), "closed", "connection closed without an answer")
        )
    except ImportError:
        pass
    return causes


def connection_failure(error: BaseException, timeout_s: float, field: str = "timeout_s") -> tuple[str, str]:
    """(cause, reason) of a failed connection: its root cause, e.g. ("refused", "connection refused
    (ConnectionRefusedError: [Errno 111] ...)"), or ("timeout", "no answer within timeout_s=120")."""
    chain = _chain(error)
    for kinds, cause, what in _connection_causes():
        found = next((link for link in chain if isinstance(link, kinds)), None)
        if found is None:
            continue
        if cause == "timeout":
            return cause, f"no answer within {field}={timeout_s:g}"
        return cause, f"{what} ({_describe(found)})"
    return "connection", f"connection error ({_describe(chain[-1])})"


def _chain(error: BaseException) -> list[BaseException]:
    """The error and those it was raised from or during, outermost first."""
    chain = [error]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
