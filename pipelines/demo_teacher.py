"""A deterministic OpenAI-compatible teacher on loopback: the demo's teacher.

    python -m pipelines.demo_teacher --port 8000 [--api-key K] [--latency 0.5] [--rate-limit-fraction 0.1]
                                     [--write-dataset data/demo_prompts.jsonl --count 1000]

It speaks the chat completions API the way DeepSeek or DashScope do (`reasoning_content` beside
`content`, `usage`, `n`, `max_tokens`, `logprobs`/`top_logprobs`, streaming), so the teacher stage talks
to it with the real `openai` SDK. The demo task: a user message ending in "Reverse the letters of: <word>"
is answered with the reversed word, and a short chain of thought as `reasoning_content`. A judge prompt
holding "Reference answer:" and "Candidate answer:" is answered ACCEPT when both agree, else REJECT. A
prompt given a hint by the teacher stage's hint template ("...the correct final answer: <answer>") is
answered with that answer, as a teacher following the hint would.
Any other prompt gets an answer derived from the prompt, the same every time. `rate_limit_fraction`
makes it a busy provider: that share of requests is answered 429 with a Retry-After.

From Python (the event loop runs in a background thread):

    with start_teacher_server(latency_s=0.05) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...
        server.requests_by_prompt["Reverse the letters of: abc"]   # how often it was asked

A request counts (in `requests_by_prompt`, keyed by the last user message) when the server takes it up.
The tests' fault-injecting teacher (tests/teacher/faulty_teacher.py) extends this one.
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
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from pipelines.loopback import ServerThread

REVERSE = re.compile(r"Reverse the letters of:\s*([a-z]+)\s*$")
JUDGE = re.compile(r"Reference answer:\s*(.*?)\s*Candidate answer:\s*(.*?)\s*(?:Reply with|$)", re.S)
HINT = re.compile(r"the correct final answer:\s*(.+?)\s*$", re.M)
TOKEN = re.compile(r"\w+|[^\w\s]")


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
    match = HINT.search(prompt)
    if match:
        return match.group(1), "Working it through again, I reach the answer step by step."
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    words = prompt.split()
    return f"Answer {digest}: {' '.join(words[:12])}", f"The prompt has {len(words)} words."


def fraction(prompt: str, attempt: int, salt: str) -> float:
    """A share in [0, 1) decided by (salt, attempt, prompt): the same run gets the same 429s in any order."""
    digest = hashlib.sha256(f"{salt}|{attempt}|{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def error_response(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return web.json_response(body, status=status, headers=headers)


class DemoTeacher:
    """The aiohttp application and what it counts; `start_teacher_server` serves it from a thread."""

    def __init__(
        self,
        model: str,
        api_key: str | None,
        latency_s: float = 0.0,
        rate_limit_fraction: float = 0.0,
        retry_after_s: float = 1.0,
        logprobs_of: Callable[[str, int], list[dict]] | None = None,
    ):
        self.model = model
        # (content, top_logprobs asked) -> the choice's logprobs.content
        self.logprobs_of = logprobs_of or made_up_logprobs
        self.api_key = api_key
        self.latency_s = latency_s
        self.rate_limit_fraction = rate_limit_fraction
        self.retry_after_s = retry_after_s
        self.requests_by_prompt: collections.Counter[str] = collections.Counter()
        self.total_requests = 0
        self.request_order: list[str] = []
        self.last_headers: dict[str, str] = {}
        self.attempts: collections.Counter[str] = collections.Counter()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        return app

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return error_response(401, "Incorrect API key provided.", "invalid_api_key")

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
            return error_response(
                400, "Body must hold messages with at least one user message.", "invalid_request"
            )
        if body.get("model") != self.model:
            return error_response(404, f"The model {body.get('model')!r} does not exist.", "model_not_found")
        await self.take_up(request, prompt)
        attempt = self.attempts[prompt]
        self.attempts[prompt] += 1
        return await self.respond(request, body, prompt, attempt)

    async def take_up(self, request: web.Request, prompt: str) -> None:
        """Count the request as received (the moment a provider's queue takes it)."""
        self.total_requests += 1
        self.requests_by_prompt[prompt] += 1
        self.request_order.append(prompt)
        self.last_headers = {name.lower(): value for name, value in request.headers.items()}

    async def respond(
        self, request: web.Request, body: dict, prompt: str, attempt: int
    ) -> web.StreamResponse:
        """The answer to attempt `attempt` at `prompt`: a 429 for the busy share, else the completion."""
        if fraction(prompt, attempt, "429") < self.rate_limit_fraction:
            return self.rate_limited()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return await self.send(request, body, self.completion(body, *self.answer(body, prompt)))

    def rate_limited(self) -> web.Response:
        # Refused at the gateway, before any model work: a 429 comes back without the added latency.
        wait = self.retry_after_s
        headers = {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))}
        return error_response(429, "Rate limit reached, please retry later.", "rate_limit_exceeded", headers)

    async def send(self, request: web.Request, body: dict, completion: dict) -> web.StreamResponse:
        if not body.get("stream"):
            return web.json_response(completion)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for event in stream_events(completion, include_usage):
            await response.write(event)
        await response.write_eof()
        return response

    def answer(self, body: dict, prompt: str) -> tuple[str, str, str]:
        """(content, reasoning_content, finish_reason), cut to the request's max_tokens."""
        content, reasoning = demo_answer(prompt)
        if (
            body.get("enable_thinking") is False
        ):  # as DashScope's Qwen3: no chain of thought when asked not to
            reasoning = ""
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        room = None if max_tokens is None else max(0, int(max_tokens) - len(tokens(reasoning)))
        if room is not None and len(tokens(content)) > room:
            return " ".join(tokens(content)[:room]), reasoning, "length"
        return content, reasoning, "stop"

    def completion(self, body: dict, content: str, reasoning: str, finish: str) -> dict:
        """The chat.completion object: `n` identical choices, usage counted the way providers bill it."""
        prompt_tokens = sum(len(tokens(str(m.get("content", "")))) + 4 for m in body["messages"])
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
                choice["logprobs"] = {
                    "content": self.logprobs_of(content, int(body.get("top_logprobs") or 0))
                }
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


async def stream_events(completion: dict, include_usage: bool) -> AsyncIterator[bytes]:
    """The completion as server-sent events, as streaming providers send it: reasoning, then content in
    pieces, then the finish reason, then (when asked for) a usage chunk with no choices, then [DONE]."""
    base = {key: completion[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def event(payload: dict | str) -> bytes:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        return f"data: {data}\n\n".encode()

    for choice in completion["choices"]:
        message, index = choice["message"], choice["index"]
        if message["reasoning_content"]:
            delta = {"role": "assistant", "reasoning_content": message["reasoning_content"]}
            yield event({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        content = message["content"]
        pieces = [content[i : i + 4] for i in range(0, len(content), 4)] or [""]
        for number, piece in enumerate(pieces, start=1):
            chunk = {"index": index, "delta": {"content": piece}, "finish_reason": None}
            if number == len(pieces) and choice["logprobs"]:
                chunk["logprobs"] = choice["logprobs"]  # the positions of all pieces, on the last one
            yield event({**base, "choices": [chunk]})
        yield event(
            {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]}
        )
    if include_usage:
        yield event({**base, "choices": [], "usage": completion["usage"]})
    yield event("[DONE]")


PIECE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def logprob_tokens(content: str) -> list[bytes]:
    """`content` cut into tokens the way a byte-level BPE vocabulary may cut it: words with their
    leading space, and non-ASCII words in two-byte pieces, so a Chinese character (three bytes) is split
    over two tokens and a token's bytes need not be text."""
    out = []
    for piece in PIECE.findall(content):
        data = piece.encode()
        out += [data] if data.isascii() else [data[i : i + 2] for i in range(0, len(data), 2)]
    return out


def made_up_logprobs(content: str, top: int) -> list[dict]:
    """Made-up but deterministic log-probabilities over tokens that spell `content` exactly: the chosen
    token leads, its alternatives share the rest of the mass (so the top ones add up to less than 1)."""
    entries = []
    for position, token in enumerate(logprob_tokens(content)):
        chosen = -0.01 * (1 + position % 5)
        rest = 1.0 - math.exp(chosen)
        alternatives = [token] + [token + str(rank).encode() for rank in range(1, top)]
        spelled = [
            {
                "token": text.decode("utf-8", errors="backslashreplace"),
                "logprob": chosen if rank == 0 else math.log(rest / 2**rank),
                "bytes": list(text),
            }
            for rank, text in enumerate(alternatives)
        ]
        entries.append({**spelled[0], "top_logprobs": spelled[:top]})
    return entries


class TeacherServer(ServerThread):
    """A running teacher: `.base_url`, `.port`, `.teacher`, `.requests_by_prompt`, `.stop()`."""

    def __init__(self, teacher: DemoTeacher, host: str = "127.0.0.1", port: int = 0):
        super().__init__(teacher.app(), host, port)
        self.teacher = teacher

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def requests_by_prompt(self) -> collections.Counter[str]:
        return self.teacher.requests_by_prompt


def start_teacher_server(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    model: str = "demo-teacher",
    latency_s: float = 0.0,
    logprobs_of: Callable[[str, int], list[dict]] | None = None,
) -> TeacherServer:
    """Serve the demo teacher on `host:port` (0 picks a free port) from a background thread."""
    server = TeacherServer(DemoTeacher(model, api_key, latency_s, logprobs_of=logprobs_of), host, port)
    return server.start()


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
        "--rate-limit-fraction",
        type=float,
        default=0.0,
        help="share of requests answered 429, as a busy provider",
    )
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of a 429, in seconds")
    parser.add_argument("--write-dataset", metavar="PATH", help="first write a demo prompts JSONL here")
    parser.add_argument("--count", type=int, default=200, help="prompts in --write-dataset")
    args = parser.parse_args(argv)
    if args.write_dataset:
        write_demo_dataset(args.write_dataset, args.count)
    teacher = DemoTeacher(args.model, args.api_key, args.latency, args.rate_limit_fraction, args.retry_after)
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
