"""A server on loopback that answers every request (any method, path or proxy form) with 404 and keeps its
headers: it stands for a host a credential must never reach, to check that none did."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from pipelines.loopback import ServerThread


class Capture:
    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.url = ""

    async def record(self, request: web.Request) -> web.Response:
        self.requests.append({"target": str(request.url), **request.headers})
        return web.json_response({"error": {"message": "captured"}}, status=404)

    def received(self, secret: str) -> bool:
        """True when any header of any request carried `secret`."""
        return any(secret in value for request in self.requests for value in request.values())


@contextmanager
def capture_server() -> Iterator[Capture]:
    capture = Capture()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", capture.record)
    with ServerThread(app) as server:
        capture.url = server.url
        yield capture
