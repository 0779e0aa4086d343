"""An HTTP POST with a total deadline: connecting, sending and reading the whole reply together.

    post(url, body, headers, timeout_s)  -> the reply's bytes, or DeadlineExceeded after timeout_s

A socket timeout bounds each read, not the call: a server that drips its reply a byte at a time, each
byte within the timeout, holds urllib's urlopen(timeout=...) for as long as it likes. Here a watchdog
shuts the call's sockets down once the deadline passes, which ends whatever read waits on them. The
request goes through urllib's usual handlers (proxies from the environment, redirects, https).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.request


class DeadlineExceeded(TimeoutError):
    """The whole call did not finish within its deadline."""


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> bytes:
    """POST `body` to `url` and read the whole reply within `timeout_s` seconds in total."""
    kept: list[socket.socket] = []
    finished = threading.Event()
    deadline = time.monotonic() + timeout_s

    def cut_at_the_deadline() -> None:
        if finished.wait(timeout_s):
            return
        # Again until the call returns: a connection made just as the deadline passed is cut too.
        while not finished.is_set():
            for sock in kept:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # closed already
            finished.wait(0.05)

    watchdog = threading.Thread(target=cut_at_the_deadline, name="http-deadline", daemon=True)
    watchdog.start()
    opener = urllib.request.build_opener(_WatchedHttp(kept), _WatchedHttps(kept))
    request = urllib.request.Request(url, body, headers)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            reply = response.read()
    except (OSError, http.client.HTTPException) as error:
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"no whole reply within {timeout_s:g} s") from error
        raise
    finally:
        finished.set()
    if time.monotonic() >= deadline:
        raise DeadlineExceeded(f"no whole reply within {timeout_s:g} s")
    return reply


class _Kept:
    """A connection that keeps its socket in `kept` once connected: urllib drops the connection's own
    reference after the headers, while the reply is still read from that socket."""

    kept: list[socket.socket]

    def connect(self) -> None:
        super().connect()
        self.kept.append(self.sock)


class _KeptHttp(_Kept, http.client.HTTPConnection):
    pass


class _KeptHttps(_Kept, http.client.HTTPSConnection):
    pass


def _keeping(connection_class: type, kept: list[socket.socket]):
    """A factory of `connection_class` connections that put their sockets in `kept`."""

    def make(host: str, **kwargs):
        connection = connection_class(host, **kwargs)
        connection.kept = kept
        return connection

    return make


class _WatchedHttp(urllib.request.HTTPHandler):
    def __init__(self, kept: list[socket.socket]):
        super().__init__()
        self.kept = kept

    def http_open(self, req):
        return self.do_open(_keeping(_KeptHttp, self.kept), req)


class _WatchedHttps(urllib.request.HTTPSHandler):
    def __init__(self, kept: list[socket.socket]):
        super().__init__()
        self.kept = kept

    def https_open(self, req):
        return self.do_open(_keeping(_KeptHttps, self.kept), req, context=self._context)
