"""A deterministic OpenAI-compatible teacher on loopback: the demo's teacher and the tests' fault injector.

    python -m pipelines.demo_teacher --port 8000 [--api-key K] [--latency 0.5] [--rate-limit-fraction 0.1]
                                     [--write-dataset data/demo_prompts.jsonl --count 200]

It speaks the chat completions API the way DeepSeek or DashScope do (`reasoning_content` beside
`content`, `usage`, `n`, `max_tokens`, `logprobs`/`top_logprobs`), so the teacher stage talks to it
with the real `openai` SDK. The demo task: a user message ending in "Reverse the letters of: <word>" is
answered with the reversed word, and a short chain of thought as `reasoning_content`. A judge prompt
holding "Reference answer:" and "Candidate answer:" is answered ACCEPT when both agree, else REJECT.
Any other prompt gets an answer derived from the prompt, the same every time.

From Python (the event loop runs in a background thread):

    with start_teacher_server(latency_s=0.05, faults=Faults(schedule={"Reverse the letters of: abc":
                                                                        ["429", "500", "drop"]})) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...
        server.requests_by_prompt["Reverse the letters of: abc"]   # 4: three faults, then the answer

A request counts (in `requests_by_prompt`, keyed by the last user message) when the server takes it up;
like a provider's queue, a request whose client went away while held by `stall_after` is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

REVERSE = re.compile(r"Reverse the letters of:\s*([a-z]+)\s*$")
JUDGE = re.compile(r"Reference answer:\s*(.*?)\s*Candidate answer:\s*(.*?)\s*(?:Reply with|$)", re.S)
TOKEN = re.compile(r"\w+|[^\w\s]")
FAULT_KINDS = ("429", "500", "401", "slow", "drop", "cut", "empty", "length", "html")


@dataclass
class Faults:
    """What goes wrong, and when.

    schedule: prompt -> faults for its first requests, in order (kinds: 429, 500, 401, slow, drop,
        cut, empty, length, html); once the list is used up the prompt is answered normally. "drop"
        closes the connection before any response, "cut" in the middle of a streamed one; "html" answers
        with a web page and status 200, as a login portal or a proxy in front of the API does.
    rate_limit_fraction / error_fraction: share of all other requests answered 429 / 500, decided by a
        hash of (prompt, attempt) so the same run gets the same faults whatever the request order.
    retry_after_s: the Retry-After sent with a 429 (also as retry-after-ms, as OpenAI does).
    slow_s: how long a "slow" response takes (set it beyond the client's timeout).
    stall_after: after this many requests, hold every further one until `release()` is called.
    """

    schedule: dict[str, list[str]] = field(default_factory=dict)
    rate_limit_fraction: float = 0.0
    error_fraction: float = 0.0
    retry_after_s: float = 1.0
    slow_s: float = 30.0
    stall_after: int | None = None

    def __post_init__(self) -> None:
        for prompt, kinds in self.schedule.items():
            unknown = [k for k in kinds if k not in FAULT_KINDS]
            if unknown:
                raise ValueError(f"faults.schedule[{prompt!r}]: {unknown[0]!r} is not one of {FAULT_KINDS}")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def demo_answer(prompt: str) -> tuple[str, str]:
    """(content, reasoning_content) for the last user message of a request."""
    match = REVERSE.search(prompt)
    if match:
        word = match.group(1)
        letters, backwards = ", ".join(word), ", ".join(word[::-1])
        return word[::-1], f"The letters are {letters}. Read backwards they are {backwards}."
    match = JUDGE.search(prompt)
    if match:
        agree = match.group(1).strip().lower() == match.group(2).strip().lower()
        return ("ACCEPT" if agree else "REJECT"), "I compared the candidate with the reference."
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    words = prompt.split()
    return f"Answer {digest}: {' '.join(words[:12])}", f"The prompt has {len(words)} words."


def _fraction(prompt: str, attempt: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}|{attempt}|{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return web.json_response(body, status=status, headers=headers)


class DemoTeacher:
    """The aiohttp application and its bookkeeping; `start_teacher_server` runs it in a thread."""

    def __init__(self, model: str, api_key: str | None, latency_s: float, faults: Faults | None):
        self.model = model
        self.api_key = api_key
        self.latency_s = latency_s
        self.faults = faults or Faults()
        self.requests_by_prompt: collections.Counter[str] = collections.Counter()
        self.total_requests = 0
        self.request_order: list[str] = []
        self.last_headers: dict[str, str] = {}
        self.held = 0
        self.faults_served: collections.Counter[str] = collections.Counter()
        self._attempts: collections.Counter[str] = collections.Counter()
        self._released: asyncio.Event | None = None

    def app(self) -> web.Application:
        self._released = asyncio.Event()
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        return app

    def release(self) -> None:
        """Let requests held by `faults.stall_after` through (call from the server's loop)."""
        self.faults.stall_after = None
        if self._released is not None:
            self._released.set()

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return _error(401, "Incorrect API key provided.", "invalid_api_key")

    async def models(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "demo"}
        return web.json_response({"object": "list", "data": [model]})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
            messages = body["messages"]
            prompt = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        except (ValueError, KeyError, TypeError, StopIteration):
            return _error(400, "Body must hold messages with at least one user message.", "invalid_request")
        if body.get("model") != self.model:
            return _error(404, f"The model {body.get('model')!r} does not exist.", "model_not_found")
        stall_after = self.faults.stall_after
        if stall_after is not None and self.total_requests >= stall_after:
            self.held += 1
            try:
                await self._released.wait()
            finally:
                self.held -= 1  # released, or cancelled because the client went away
        self.total_requests += 1
        self.requests_by_prompt[prompt] += 1
        self.request_order.append(prompt)
        self.last_headers = {name.lower(): value for name, value in request.headers.items()}
        attempt = self._attempts[prompt]
        self._attempts[prompt] += 1
        fault = self._fault_for(prompt, attempt)
        if fault:
            self.faults_served[fault] += 1
        if fault == "429":
            # Refused at the gateway, before any model work: a 429 comes back without the added latency.
            wait = self.faults.retry_after_s
            headers = {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))}
            return _error(429, "Rate limit reached, please retry later.", "rate_limit_exceeded", headers)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "401":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if fault == "500":
            return _error(500, "The server had an error while processing your request.", "server_error")
        if fault == "html":
            return web.Response(
                text="<html><body><h1>Please sign in</h1></body></html>", content_type="text/html"
            )
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_s)
        if fault == "drop":
            request.transport.abort()
            raise asyncio.CancelledError
        completion = self._completion(body, messages, prompt, fault)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await _stream(request, completion, include_usage, cut=fault == "cut")
        return web.json_response(completion)

    def _fault_for(self, prompt: str, attempt: int) -> str | None:
        scheduled = self.faults.schedule.get(prompt)
        if scheduled is not None:
            return scheduled[attempt] if attempt < len(scheduled) else None
        if _fraction(prompt, attempt, "429") < self.faults.rate_limit_fraction:
            return "429"
        if _fraction(prompt, attempt, "500") < self.faults.error_fraction:
            return "500"
        return None

    def _completion(self, body: dict, messages: list[dict], prompt: str, fault: str | None) -> dict:
        content, reasoning = demo_answer(prompt)
        if (
            body.get("enable_thinking") is False
        ):  # as DashScope's Qwen3: no chain of thought when asked not to
            reasoning = ""
        finish = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        room = None if max_tokens is None else max(0, int(max_tokens) - len(tokens(reasoning)))
        if fault == "empty":
            content = ""
        elif fault == "length":
            content, finish = content[: max(1, len(content) // 2)], "length"
        elif room is not None and len(tokens(content)) > room:
            content, finish = " ".join(tokens(content)[:room]), "length"
        prompt_tokens = sum(len(tokens(str(m.get("content", "")))) + 4 for m in messages)
        completion_tokens = len(tokens(content)) + len(tokens(reasoning))
        choices = []
        for index in range(int(body.get("n") or 1)):
            choice = {
                "index": index,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content, "reasoning_content": reasoning or None},
                "logprobs": None,
            }
            if body.get("logprobs"):
                choice["logprobs"] = {"content": _logprobs(content, int(body.get("top_logprobs") or 0))}
            choices.append(choice)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens * len(choices),
                "total_tokens": prompt_tokens + completion_tokens * len(choices),
            },
        }


async def _stream(
    request: web.Request, completion: dict, include_usage: bool, cut: bool
) -> web.StreamResponse:
    """The completion as server-sent events, as streaming providers send it: reasoning, then content, then
    the finish reason, then (when asked for) a usage chunk with no choices, then [DONE]."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    base = {key: completion[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    async def send(payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await response.write(f"data: {data}\n\n".encode())

    for choice in completion["choices"]:
        message, index = choice["message"], choice["index"]
        if message["reasoning_content"]:
            delta = {"role": "assistant", "reasoning_content": message["reasoning_content"]}
            await send({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        content = message["content"]
        for piece in [content[i : i + 4] for i in range(0, len(content), 4)] or [""]:
            chunk = {"index": index, "delta": {"content": piece}, "finish_reason": None}
            await send({**base, "choices": [chunk]})
            if cut:
                request.transport.abort()
                raise asyncio.CancelledError
        await send(
            {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]}
        )
    if include_usage:
        await send({**base, "choices": [], "usage": completion["usage"]})
    await send("[DONE]")
    await response.write_eof()
    return response


def _logprobs(content: str, top: int) -> list[dict]:
    """Made-up but deterministic log-probabilities: the chosen token always leads its alternatives."""
    entries = []
    for position, token in enumerate(tokens(content)):
        chosen = -0.01 * (1 + position % 5)
        alternatives = [{"token": token, "logprob": chosen, "bytes": list(token.encode())}]
        for rank in range(1, top):
            other = f"{token}{rank}"
            alternatives.append(
                {"token": other, "logprob": chosen - 2.0 * rank, "bytes": list(other.encode())}
            )
        entries.append({**alternatives[0], "top_logprobs": alternatives[:top]})
    return entries


class TeacherServer:
    """A running demo teacher: `.base_url`, `.port`, `.requests_by_prompt`, `.release()`, `.stop()`."""

    def __init__(self, teacher: DemoTeacher, host: str, port: int):
        self.teacher = teacher
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(port,), name="demo-teacher", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._startup_error is not None:
            raise self._startup_error

    def _serve(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            # handler_cancellation: a client that disconnects cancels its handler, as on a real server.
            self._runner = web.AppRunner(self.teacher.app(), access_log=None, handler_cancellation=True)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, port, backlog=1024)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
        except BaseException as error:  # reported to the starting thread, which raises it
            self._startup_error = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests_by_prompt(self) -> collections.Counter[str]:
        return self.teacher.requests_by_prompt

    @property
    def held(self) -> int:
        """Requests waiting behind `stall_after` whose clients are still connected."""
        return self.teacher.held

    @property
    def faults(self) -> Faults:
        return self.teacher.faults

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self.teacher.release)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> TeacherServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_teacher_server(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    model: str = "demo-teacher",
    latency_s: float = 0.0,
    faults: Faults | None = None,
) -> TeacherServer:
    """Serve the demo teacher on `host:port` (0 picks a free port) from a background thread."""
    return TeacherServer(DemoTeacher(model, api_key, latency_s, faults), host, port)


def demo_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct lowercase words of 3-6 letters, the same for the same seed."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        length = rng.randint(3, 6)
        words.setdefault("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length)))
    return list(words)


def write_demo_dataset(path: str | Path, count: int, seed: int = 0) -> Path:
    """Write a prompts JSONL of the demo task: one {"prompt": "Reverse the letters of: <word>"} a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": f"Reverse the letters of: {w}"}) for w in demo_words(count, seed)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo_teacher", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: none)")
    parser.add_argument("--model", default="demo-teacher")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument(
        "--rate-limit-fraction", type=float, default=0.0, help="share of requests answered 429"
    )
    parser.add_argument("--error-fraction", type=float, default=0.0, help="share of requests answered 500")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of a 429, in seconds")
    parser.add_argument("--write-dataset", metavar="PATH", help="first write a demo prompts JSONL here")
    parser.add_argument("--count", type=int, default=200, help="prompts in --write-dataset")
    args = parser.parse_args(argv)
    if args.write_dataset:
        write_demo_dataset(args.write_dataset, args.count)
    faults = Faults(
        rate_limit_fraction=args.rate_limit_fraction,
        error_fraction=args.error_fraction,
        retry_after_s=args.retry_after,
    )
    teacher = DemoTeacher(args.model, args.api_key, args.latency, faults)
    print(f"demo teacher serving {args.model} on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(
        teacher.app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()
