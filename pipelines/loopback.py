"""Serve an aiohttp application from a background thread: the demo teacher, and the tests' fake APIs.

with ServerThread(app) as server:        # 127.0.0.1 on a free port unless told otherwise
    requests.get(f"{server.url}/v1/models")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web


class ServerThread:
    """Runs `app` on host:port (0: a free port) in a daemon thread with its own event loop.

    A client that disconnects cancels its handler, as on a real server (aiohttp's handler_cancellation).
    """

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="loopback-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        """Start serving; returns once the port is bound (raising what binding raised)."""
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError(f"the server on {self.host}:{self.port} did not start within 30 s")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port, backlog=1024)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
        except BaseException as error:  # reported to the starting thread, which raises it
            self._startup_error = error
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the server's event loop (where the handlers' asyncio objects live)."""
        self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self if self._thread.is_alive() else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
