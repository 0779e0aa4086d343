"""A local Hugging Face model served on loopback as an OpenAI-compatible chat completions endpoint, the
way `vllm serve` serves one: `temperature`, `top_p`, `max_tokens`, `n`, `seed`, and `logprobs` with
`top_logprobs` (each token and alternative with its exact `bytes`).

    with start_model_teacher("/models/teacher", model="teacher") as server:
        ...  # the teacher stage with provider.base_url = server.base_url

It answers through the local teacher's own generation (components/teacher/local.py), so its replies are
what that teacher would store. Requests that arrive together are generated in one batch, as a serving
engine batches them. The quality bench (bench/distill_quality.py) serves its trained teacher with it,
so that every method's records come out of the teacher stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from components.common.openai_api import Answer
from components.common.provider_config import ProviderConfig
from components.teacher.local import LocalTeacher
from pipelines.demo_teacher import TeacherServer, error_response

BATCH = 64  # requests generated together at most


@dataclass
class Waiting:
    messages: list[dict[str, str]]
    done: asyncio.Future


class ModelTeacher:
    """The aiohttp application over one loaded model; `requests` counts what it answered."""

    def __init__(self, model_dir: str | Path, model: str = "teacher"):
        self.model = model
        self.api_key = None
        self.local = LocalTeacher(ProviderConfig(name="local", model=str(model_dir)))
        self.base = self.local.provider
        # Waiting requests by their sampling settings (as a tuple: the config is not hashable).
        self.queues: dict[str, tuple[ProviderConfig, list[Waiting]]] = {}
        self.wake: asyncio.Event | None = None
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.on_startup.append(self._start_worker)
        app.on_cleanup.append(self._stop_worker)
        return app

    async def _start_worker(self, app: web.Application) -> None:
        self.wake = asyncio.Event()
        app["worker"] = asyncio.get_running_loop().create_task(self._work())

    async def _stop_worker(self, app: web.Application) -> None:
        app["worker"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app["worker"]

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "local"}
        return web.json_response({"object": "list", "data": [model]})

    def settings(self, body: dict) -> ProviderConfig:
        """The local teacher's settings for one request's sampling parameters."""
        return replace(
            self.base,
            temperature=float(body.get("temperature") or 0.0),
            top_p=body.get("top_p"),
            max_tokens=int(body.get("max_tokens") or 512),
            n=int(body.get("n") or 1),
            seed=body.get("seed"),
            logprobs=bool(body.get("logprobs")),
            top_logprobs=int(body.get("top_logprobs") or 0),
        )

    async def chat_completions(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            messages = body["messages"]
            settings = self.settings(body)
        except (ValueError, KeyError, TypeError):
            return error_response(400, "Body must hold messages and numeric sampling parameters.", "invalid")
        if body.get("model") != self.model:
            return error_response(404, f"The model {body.get('model')!r} does not exist.", "model_not_found")
        if body.get("stream"):
            return error_response(400, "This server does not stream; send stream: false.", "invalid_request")
        waiting = Waiting(messages, asyncio.get_running_loop().create_future())
        key = tuple(sorted(vars(settings).items(), key=lambda item: item[0]))
        self.queues.setdefault(repr(key), (settings, []))[1].append(waiting)
        self.wake.set()
        answer = await waiting.done
        self.requests += 1
        return web.json_response(completion(answer, self.model))

    async def _work(self) -> None:
        """Generate for the waiting requests, those with the same settings in one batch."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queues:
                key = next(iter(self.queues))
                settings, waiting_here = self.queues[key]
                batch, rest = waiting_here[:BATCH], waiting_here[BATCH:]
                if rest:
                    self.queues[key] = (settings, rest)
                else:
                    del self.queues[key]
                try:
                    answers = await asyncio.to_thread(self._generate, settings, [w.messages for w in batch])
                except Exception as error:  # the requests fail, the server goes on
                    for waiting in batch:
                        waiting.done.set_exception(error)
                    continue
                for waiting, answer in zip(batch, answers, strict=True):
                    waiting.done.set_result(answer)

    def _generate(self, settings: ProviderConfig, conversations: list[list[dict[str, str]]]) -> list[Answer]:
        self.local.provider = settings
        return self.local.generate(conversations)


def completion(answer: Answer, model: str) -> dict:
    """The chat.completion object of one Answer."""
    choices = [
        {
            "index": index,
            "finish_reason": choice.finish_reason,
            "message": {
                "role": "assistant",
                "content": choice.content,
                "reasoning_content": choice.reasoning,
            },
            "logprobs": None if choice.logprobs is None else {"content": choice.logprobs},
        }
        for index, choice in enumerate(answer.choices)
    ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
    }


def start_model_teacher(model_dir: str | Path, model: str = "teacher", port: int = 0) -> TeacherServer:
    """Serve the model in `model_dir` on 127.0.0.1:`port` (0: a free port) from a background thread."""
    return TeacherServer(ModelTeacher(model_dir, model), port=port).start()
