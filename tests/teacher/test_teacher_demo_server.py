"""The loopback demo teacher speaks the chat completions API as real providers do (pipelines/demo_teacher.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines.demo_teacher import start_teacher_server, write_demo_dataset

REPO = Path(__file__).resolve().parents[2]


def post(base_url: str, body: dict, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{base_url}/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def ask(content: str, **params) -> dict:
    return {"model": "demo-teacher", "messages": [{"role": "user", "content": content}], **params}


@pytest.fixture(scope="module")
def server():
    with start_teacher_server(api_key="sk-demo") as running:
        yield running


def test_a_completion_has_the_openai_shape_with_reasoning(server):
    status, body = post(server.base_url, ask("Reverse the letters of: abc"), "sk-demo")
    assert status == 200
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "demo-teacher" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": "cba",
        "reasoning_content": "The letters are a, b, c. Read backwards they are c, b, a.",
    }
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_other_prompts_get_a_deterministic_answer_and_n_choices(server):
    _, first = post(server.base_url, ask("What is distillation?", n=3), "sk-demo")
    _, second = post(server.base_url, ask("What is distillation?"), "sk-demo")
    assert len(first["choices"]) == 3
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert first["choices"][0]["message"]["content"].startswith("Answer ")


def test_max_tokens_cuts_the_answer_with_finish_reason_length(server):
    _, body = post(
        server.base_url, ask("Write about the sea and the sky and the stars", max_tokens=12), "sk-demo"
    )
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 12


def test_logprobs_with_top_alternatives(server):
    _, body = post(
        server.base_url, ask("Reverse the letters of: dog", logprobs=True, top_logprobs=2), "sk-demo"
    )
    entries = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == ["god"]
    assert len(entries[0]["top_logprobs"]) == 2 and entries[0]["top_logprobs"][0]["token"] == "god"


def test_a_wrong_key_gets_401_with_an_openai_error_body(server):
    status, body = post(server.base_url, ask("hi"), "sk-wrong")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = post(server.base_url, {**ask("hi"), "model": "gpt-9"}, "sk-demo")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_requests_are_counted_per_prompt(server):
    for _ in range(3):
        post(server.base_url, ask("Reverse the letters of: count"), "sk-demo")
    assert server.requests_by_prompt["Reverse the letters of: count"] == 3


def test_demo_dataset_has_distinct_short_words(tmp_path):
    path = write_demo_dataset(tmp_path / "p.jsonl", 300, seed=4)
    words = [
        json.loads(line)["prompt"].removeprefix("Reverse the letters of: ")
        for line in path.read_text().splitlines()
    ]
    assert len(set(words)) == 300 and all(3 <= len(w) <= 6 and w.isalpha() and w.islower() for w in words)
    assert path.read_text() == write_demo_dataset(tmp_path / "q.jsonl", 300, seed=4).read_text()


def test_the_command_line_serves_until_killed(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.demo_teacher",
            "--port",
            str(port),
            "--api-key",
            "k1",
            "--write-dataset",
            str(tmp_path / "d.jsonl"),
            "--count",
            "5",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = post(f"http://127.0.0.1:{port}/v1", ask("Reverse the letters of: cli"), "k1")
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert status == 200 and body["choices"][0]["message"]["content"] == "ilc"
        assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 5
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_streaming_sends_reasoning_content_finish_usage_then_done(server):
    body = {**ask("Reverse the letters of: stream", stream=True), "stream_options": {"include_usage": True}}
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": "Bearer sk-demo"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in response.read().decode().splitlines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["reasoning_content"].startswith("The letters are s, t")
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "maerts"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
