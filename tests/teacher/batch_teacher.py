"""A loopback provider with the OpenAI Batch API: the demo teacher plus /v1/files and /v1/batches.

    with start_batch_teacher(BatchFaults(fail_every=5)) as server:
        ... server.created (batches created, in order), server.lines_by_prompt (items over all batches)

A batch is validated, then answered in the background a line at a time by the demo teacher's answers
(`complete_after_s` after it is created, or once `release()` is called when `hold` is set). Faults:
`fail_every`: every n-th line of a batch goes to the error file with a 500; `expire_after`: the first
batch expires after answering that many lines (the rest go to the error file as batch_expired, as OpenAI
does); `lines_by_prompt` counts the lines answered;
`stall_create`: the create is registered and its answer never sent (the client dies waiting);
`usage`: the usage every answer reports, made from the real one (None: none at all); `output`: the
output file's lines as the provider writes them, made from the good ones (malformed, repeated or
swapped lines).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from pipelines.demo_teacher import DemoTeacher, TeacherServer, error_response


@dataclass
class BatchFaults:
    hold: bool = False
    complete_after_s: float = 0.05
    fail_every: int = 0
    expire_after: int | None = None
    stall_create: bool = False
    usage: Callable[[dict], dict | None] | None = None
    output: Callable[[list[str]], list[str]] | None = None


class BatchTeacher(DemoTeacher):
    def __init__(self, faults: BatchFaults, logprobs_of: Callable[[str, int], list[dict]] | None = None):
        super().__init__("demo-teacher", None, logprobs_of=logprobs_of)
        self.faults = faults
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.created: list[dict] = []  # every batch created, in order
        self.lines_by_prompt: collections.Counter[str] = collections.Counter()
        self.released: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}/content", self.content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list)
        app.router.add_get("/v1/batches/{id}", self.retrieve)
        return app

    def _file(self, data: bytes, purpose: str, name: str) -> dict:
        file_id = f"file-{uuid.uuid4().hex}"
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = {"meta": meta, "data": data}
        return meta

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not hasattr(upload, "file"):
            return error_response(400, "need purpose=batch and a file", "invalid_request")
        return web.json_response(self._file(upload.file.read(), "batch", upload.filename))

    async def content(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["id"])
        if found is None:
            return error_response(404, "no such file", "not_found")
        return web.Response(body=found["data"], content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("input_file_id") not in self.files or body.get("endpoint") != "/v1/chat/completions":
            return error_response(400, "unknown input_file_id or endpoint", "invalid_request")
        batch = {
            "id": f"batch_{uuid.uuid4().hex}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        self.batches[batch["id"]] = batch
        self.created.append(batch)
        asyncio.get_running_loop().create_task(self.work(batch))
        if self.faults.stall_create:
            await asyncio.Event().wait()  # the client gives up or dies; the batch goes on
        return web.json_response(batch)

    async def list(self, request: web.Request) -> web.Response:
        data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return error_response(404, "no such batch", "not_found")
        return web.json_response(batch)

    async def work(self, batch: dict) -> None:
        """Answer the batch's lines (after the hold or delay), writing its output and error files."""
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]]["data"].splitlines() if x.strip()]
        batch["request_counts"]["total"] = len(lines)
        batch["status"] = "in_progress"
        if self.faults.hold:
            if self.released is None:
                self.released = asyncio.Event()
            await self.released.wait()
        await asyncio.sleep(self.faults.complete_after_s)
        output, errors = [], []
        expire = self.faults.expire_after if batch is self.created[0] else None
        for number, line in enumerate(lines, 1):
            prompt = next(m["content"] for m in reversed(line["body"]["messages"]) if m["role"] == "user")
            reply = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line["custom_id"]}
            if expire is not None and number > expire:
                error = {"code": "batch_expired", "message": "not answered within the window"}
                errors.append({**reply, "response": None, "error": error})
            elif self.faults.fail_every and number % self.faults.fail_every == 0:
                failed = {"status_code": 500, "body": {"error": {"message": "server error"}}}
                errors.append({**reply, "response": failed, "error": None})
            else:
                self.lines_by_prompt[prompt] += 1
                completion = self.completion(line["body"], *self.answer(line["body"], prompt))
                if self.faults.usage is not None:
                    completion["usage"] = self.faults.usage(completion["usage"])
                output.append({**reply, "response": {"status_code": 200, "body": completion}, "error": None})
        texts = {
            "output_file_id": [json.dumps(r) for r in output],
            "error_file_id": [json.dumps(r) for r in errors],
        }
        if self.faults.output is not None:
            texts["output_file_id"] = self.faults.output(texts["output_file_id"])
        for name, rows in texts.items():
            if rows:
                data = "".join(r + "\n" for r in rows).encode()
                batch[name] = self._file(data, "batch_output", f"{batch['id']}_{name}.jsonl")["id"]
        batch["request_counts"].update(completed=len(output), failed=len(errors))
        batch["status"] = "expired" if expire is not None else "completed"


class BatchTeacherServer(TeacherServer):
    @property
    def created(self) -> list[dict]:
        return self.teacher.created

    @property
    def lines_by_prompt(self) -> collections.Counter[str]:
        return self.teacher.lines_by_prompt

    def release(self) -> None:
        """Let held batches be answered."""

        def set_released() -> None:
            if self.teacher.released is None:
                self.teacher.released = asyncio.Event()
            self.teacher.released.set()

        self.call_soon(set_released)


def start_batch_teacher(
    faults: BatchFaults | None = None,
    port: int = 0,
    logprobs_of: Callable[[str, int], list[dict]] | None = None,
) -> BatchTeacherServer:
    return BatchTeacherServer(BatchTeacher(faults or BatchFaults(), logprobs_of), port=port).start()
