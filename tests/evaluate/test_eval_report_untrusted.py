"""What a reply puts in report.html is capped and cannot reorder the page: an eval run whose teacher
answer and judge reply carry a right-to-left override (U+202E) and run long."""

from __future__ import annotations

import re

from aiohttp import web

from components.common.records import write_records
from components.evaluate.stage import run
from pipelines.loopback import ServerThread
from tests.evaluate.conftest import eval_config, reversal_records

OVERRIDE = "\u202e"


def judge_app() -> web.Application:
    """A judge that refuses its first request with a long error message holding an override, then
    answers TIE."""
    requests = []

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "judge-1", "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        requests.append(await request.json())
        if len(requests) == 1:
            message = f"{OVERRIDE}refused " + "x" * 5000
            return web.json_response({"error": {"message": message}}, status=400)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "VERDICT: TIE"},
            "finish_reason": "stop",
        }
        return web.json_response(
            {"id": "c", "object": "chat.completion", "created": 0, "model": "judge-1", "choices": [choice]}
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def test_a_reply_cannot_reorder_the_report_nor_run_past_its_cell(tiny_model_dir, tmp_path):
    records = reversal_records(2)
    records[0].messages[-1]["content"] = f"cba{OVERRIDE} and the rest of the page reads backwards"
    write_records(tmp_path / "data" / "test.jsonl", records)
    with ServerThread(judge_app()) as server:
        judge = {
            "name": "judge",
            "base_url": f"{server.url}/v1",
            "model": "judge-1",
            "api_key_required": False,
        }
        config = eval_config(
            tiny_model_dir,
            tiny_model_dir,
            tmp_path / "data",
            tmp_path / "eval",
            judge={"provider": judge},
            tensorboard_dir=str(tmp_path / "no-logs"),
        )
        run(config)
    report = (tmp_path / "eval" / "report.html").read_text()
    assert OVERRIDE not in report and report.count("[U+202E]") == 2
    assert "cba[U+202E] and the rest" in report
    judge_cell = re.search(r"<td><bdi>error: 400 \[U\+202E\]refused x+</bdi>(.*?)</td>", report)
    assert judge_cell and "more characters" in judge_cell.group(1)
