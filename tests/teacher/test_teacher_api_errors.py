"""A failed request names its real cause; a server's Retry-After is honoured only up to a cap; preflight
gives up on a silent server after its own short timeout, naming what it waited for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from components.common.backoff import backoff
from components.common.errors import InputError
from components.common.openai_api import ApiTeacher, Retry
from components.common.provider_config import ProviderConfig
from tests.conftest import free_port

PING = [{"role": "user", "content": "hi"}]


def teacher(base_url: str, **settings) -> ApiTeacher:
    return ApiTeacher(ProviderConfig(base_url=base_url, model="m", api_key_required=False, **settings))


def ask(base_url: str, **settings):
    async def once():
        async with teacher(base_url, **settings) as client:
            return await client.ask(PING)

    return asyncio.run(once())


@contextlib.contextmanager
def raw_server(handle):
    """A TCP server on loopback that runs `handle(connection)` for each connection, in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(connection, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join()
        listener.close()


def never_answers(connection, stop):
    with connection:
        connection.recv(65536)
        stop.wait()


def resets(connection, stop):
    connection.recv(16)  # unread request bytes left behind make close() send a reset
    connection.close()


@contextlib.contextmanager
def http_server(status: int, headers: dict[str, str]):
    """A real HTTP server answering every request with `status`, `headers` and an OpenAI error body."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"error": {"message": "slow down", "type": "rate_limit_exceeded"}}).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", server.server_port
    finally:
        server.shutdown()
        server.server_close()


# --- the real cause of a failed connection -------------------------------------------------------


def test_a_refused_connection_is_named_refused_not_a_timeout():
    outcome = ask(f"http://127.0.0.1:{free_port()}/v1", timeout_s=30)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith("connection refused (ConnectionRefusedError")
    assert "timeout" not in outcome.reason
    assert outcome.cause == "refused"


def test_a_reset_connection_is_named_reset():
    with raw_server(resets) as base_url:
        outcome = ask(base_url, timeout_s=30)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith("connection reset (ConnectionResetError")
    assert outcome.cause == "reset"


def test_a_tls_failure_is_named_tls():
    with http_server(200, {}) as (_, port):  # plain HTTP where https:// expects a TLS handshake
        outcome = ask(f"https://127.0.0.1:{port}/v1", timeout_s=30)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith("TLS handshake failed (")
    assert outcome.cause == "tls"


def test_an_unknown_host_is_named_a_dns_failure():
    outcome = ask("https://no-such-host.invalid/v1", timeout_s=30)  # .invalid never resolves (RFC 6761)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith("DNS lookup of the host failed (gaierror")
    assert outcome.cause == "dns"


def test_a_server_that_never_answers_is_a_timeout():
    with raw_server(never_answers) as base_url:
        outcome = ask(base_url, timeout_s=0.3)
    assert isinstance(outcome, Retry)
    assert outcome.reason == "no answer within timeout_s=0.3"
    assert outcome.cause == "timeout"


# --- Retry-After beyond max_retry_after_s ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "inf"}, {"Retry-After": "1e12"}, {"Retry-After": "nan"}, {"retry-after-ms": "9e15"}],
    ids=["inf", "huge", "nan", "huge-ms"],
)
def test_a_retry_after_beyond_the_cap_is_a_failed_attempt_retried_after_the_backoff(headers):
    with http_server(429, headers) as (base_url, _):
        outcome = ask(base_url)  # max_retry_after_s: 300 by default
    assert isinstance(outcome, Retry) and outcome.after_s is None
    assert "beyond max_retry_after_s=300" in outcome.reason
    assert outcome.cause == "429"
    assert backoff(1, base_s=1.0, cap_s=60.0, retry_after_s=outcome.after_s) <= 1.0


def test_a_retry_after_within_the_cap_is_honoured():
    with http_server(503, {"Retry-After": "120"}) as (base_url, _):
        outcome = ask(base_url)
    assert isinstance(outcome, Retry) and outcome.after_s == 120.0 and outcome.reason == "503 server error"


# --- preflight has its own short timeout --------------------------------------------------------------


def test_preflight_gives_up_on_a_silent_server_after_its_own_timeout_naming_the_request():
    async def check(base_url):
        async with teacher(base_url, timeout_s=120, preflight_timeout_s=0.5) as client:
            began = time.monotonic()
            with pytest.raises(InputError) as raised:
                await asyncio.wait_for(client.preflight(), timeout=30)
            return time.monotonic() - began, str(raised.value)

    with raw_server(never_answers) as base_url:
        waited, message = asyncio.run(check(base_url))
    assert waited < 10  # the request timeout_s (120) does not apply
    assert message == (
        f"teacher at {base_url} did not answer GET /models: no answer within preflight_timeout_s=0.5; "
        "check provider.base_url and that the server runs and is not overloaded"
    )


def test_preflight_names_a_refused_connection():
    base_url = f"http://127.0.0.1:{free_port()}/v1"

    async def check():
        async with teacher(base_url) as client:
            await client.preflight()

    with pytest.raises(InputError, match=r"is unreachable: connection refused \(ConnectionRefusedError"):
        asyncio.run(check())


def test_preflight_without_a_models_list_names_the_one_token_request_it_waited_for():
    release = threading.Event()

    class NoModelsSilentChat(BaseHTTPRequestHandler):
        def do_GET(self):  # no /models, as on some compatible servers
            self.send_error(404)

        def do_POST(self):
            release.wait(30)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NoModelsSilentChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_port}/v1"

    async def check():
        async with teacher(base_url, timeout_s=120, preflight_timeout_s=0.5) as client:
            await asyncio.wait_for(client.preflight(), timeout=30)

    try:
        with pytest.raises(InputError) as raised:
            asyncio.run(check())
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert str(raised.value) == (
        f"teacher at {base_url} did not answer a one-token chat completion within preflight_timeout_s=0.5; "
        "check that the server runs and is not overloaded"
    )
