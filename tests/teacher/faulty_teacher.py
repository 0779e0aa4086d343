"""The demo teacher with faults injected, for the teacher tests: what goes wrong with a real provider.

    with start_faulty_teacher(latency_s=0.05, faults=Faults(schedule={"Reverse the letters of: abc":
                                                                        ["429", "500", "drop"]})) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...
        server.requests_by_prompt["Reverse the letters of: abc"]   # 4: three faults, then the answer

Like a provider's queue, a request whose client went away while held by `stall_after` is not counted.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from pipelines.demo_teacher import DemoTeacher, TeacherServer, error_response, fraction, stream_events

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
    usage: the usage every answer reports, made from the real one (None: no usage at all), as a
        provider that reports none, or a negative or NaN count, does.
    """

    schedule: dict[str, list[str]] = field(default_factory=dict)
    rate_limit_fraction: float = 0.0
    error_fraction: float = 0.0
    retry_after_s: float = 1.0
    slow_s: float = 30.0
    stall_after: int | None = None
    usage: Callable[[dict], dict | None] | None = None

    def __post_init__(self) -> None:
        for prompt, kinds in self.schedule.items():
            unknown = [k for k in kinds if k not in FAULT_KINDS]
            if unknown:
                raise ValueError(f"faults.schedule[{prompt!r}]: {unknown[0]!r} is not one of {FAULT_KINDS}")


class FaultyTeacher(DemoTeacher):
    def __init__(self, model: str, api_key: str | None, latency_s: float, faults: Faults):
        super().__init__(model, api_key, latency_s, retry_after_s=faults.retry_after_s)
        self.faults = faults
        self.held = 0
        self.faults_served: collections.Counter[str] = collections.Counter()
        self._released = asyncio.Event()

    def release(self) -> None:
        """Let requests held by `faults.stall_after` through (call on the server's loop)."""
        self.faults.stall_after = None
        self._released.set()

    async def take_up(self, request: web.Request, prompt: str) -> None:
        stall_after = self.faults.stall_after
        if stall_after is not None and self.total_requests >= stall_after:
            self.held += 1
            try:
                await self._released.wait()
            finally:
                self.held -= 1  # released, or cancelled because the client went away
        await super().take_up(request, prompt)

    def completion(self, body: dict, content: str, reasoning: str, finish: str) -> dict:
        completion = super().completion(body, content, reasoning, finish)
        if self.faults.usage is not None:
            completion["usage"] = self.faults.usage(completion["usage"])
        return completion

    def fault_for(self, prompt: str, attempt: int) -> str | None:
        scheduled = self.faults.schedule.get(prompt)
        if scheduled is not None:
            return scheduled[attempt] if attempt < len(scheduled) else None
        if fraction(prompt, attempt, "429") < self.faults.rate_limit_fraction:
            return "429"
        if fraction(prompt, attempt, "500") < self.faults.error_fraction:
            return "500"
        return None

    async def respond(
        self, request: web.Request, body: dict, prompt: str, attempt: int
    ) -> web.StreamResponse:
        fault = self.fault_for(prompt, attempt)
        if fault is None:
            return await super().respond(request, body, prompt, attempt)
        self.faults_served[fault] += 1
        if fault == "429":
            return self.rate_limited()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "401":
            return error_response(401, "Incorrect API key provided.", "invalid_api_key")
        if fault == "500":
            return error_response(
                500, "The server had an error while processing your request.", "server_error"
            )
        if fault == "html":
            return web.Response(
                text="<html><body><h1>Please sign in</h1></body></html>", content_type="text/html"
            )
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_s)
        if fault == "drop":
            request.transport.abort()
            raise asyncio.CancelledError
        content, reasoning, finish = self.answer(body, prompt)
        if fault == "empty":
            content, finish = "", "stop"
        elif fault == "length":
            content, finish = content[: max(1, len(content) // 2)], "length"
        completion = self.completion(body, content, reasoning, finish)
        if fault == "cut" and body.get("stream"):
            return await self.cut_stream(request, completion)
        return await self.send(request, body, completion)

    async def cut_stream(self, request: web.Request, completion: dict) -> web.StreamResponse:
        """Stream until the first piece of content, then drop the connection."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for event in stream_events(completion, include_usage=True):
            await response.write(event)
            if b'"content"' in event:
                request.transport.abort()
                raise asyncio.CancelledError
        raise AssertionError("the completion streamed no content to cut")


class FaultyServer(TeacherServer):
    teacher: FaultyTeacher

    @property
    def faults(self) -> Faults:
        return self.teacher.faults

    @property
    def held(self) -> int:
        """Requests waiting behind `stall_after` whose clients are still connected."""
        return self.teacher.held

    def release(self) -> None:
        self.call_soon(self.teacher.release)


def start_faulty_teacher(
    faults: Faults | None = None,
    latency_s: float = 0.0,
    api_key: str | None = None,
    model: str = "demo-teacher",
) -> FaultyServer:
    """Serve the demo teacher with `faults` on a free loopback port from a background thread."""
    server = FaultyServer(FaultyTeacher(model, api_key, latency_s, faults or Faults()))
    server.start()
    return server
