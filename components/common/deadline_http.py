"""HTTP POSTs to one URL over kept-alive connections, each call within a total deadline: connecting,
sending and reading the whole reply together.

    endpoint = Endpoint("http://teacher:8000/v1/completions")
    endpoint.post(body, headers, timeout_s)  -> the reply's bytes; StatusError for a status other than
                                                2xx, DeadlineExceeded after timeout_s

A socket timeout bounds each read, not the call: a server that drips its reply a byte at a time, each
byte within the timeout, would hold a plain client for as long as it likes. Here every send and receive
waits only for what is left of the call's deadline.

Threads share the endpoint: each call takes an idle connection (or opens one) and gives it back once
the whole reply is read, so there are never more connections than calls in flight at once. A server
may close an idle connection at any time (its keep-alive timeout): a call whose request meets such a
closed connection before any reply arrives is sent once more on a new one. Proxies come from the
environment (http_proxy, https_proxy, no_proxy), as for urllib.
"""

from __future__ import annotations

import base64
import http.client
import io
import math
import socket
import threading
import time
import urllib.parse
import urllib.request
from email.message import Message


class DeadlineExceeded(TimeoutError):
    """The whole call did not finish within its deadline."""


class StatusError(Exception):
    """The server answered with a status other than 2xx; `headers` are the reply's (Retry-After)."""

    def __init__(self, code: int, reason: str, headers: Message, reply: bytes):
        said = " ".join(reply[:200].decode("utf-8", errors="replace").split())
        super().__init__(f"HTTP Error {code}: {reason}" + (f": {said}" if said else ""))
        self.code, self.headers = code, headers


class Endpoint:
    """POSTs to `url` over a pool of kept-alive connections (see the module doc)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.url = url
        self.proxy_headers: dict[str, str] = {}  # sent to a plain HTTP proxy with each request
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        https = parts.scheme == "https"
        self.connection_class = _DeadlineHttps if https else _DeadlineHttp
        self.host, self.port = parts.hostname, parts.port or (443 if https else 80)
        self.tunnel: tuple[str, int, dict[str, str]] | None = None  # through an HTTPS proxy's CONNECT
        proxy = _proxy_for(parts.scheme, parts.hostname)
        if proxy is not None:
            login = {}
            if proxy.username is not None:
                user, password = (
                    urllib.parse.unquote(proxy.username),
                    urllib.parse.unquote(proxy.password or ""),
                )
                login["Proxy-Authorization"] = (
                    "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                )
            if https:  # the proxy's login goes in the CONNECT only, never through the tunnel
                self.tunnel = (self.host, self.port, login)
            else:
                self.target, self.proxy_headers = url, login
            self.host, self.port = proxy.hostname, proxy.port or 80
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, body: bytes, headers: dict[str, str], timeout_s: float) -> bytes:
        """POST `body` and read the whole reply within `timeout_s` seconds in total."""
        deadline = time.monotonic() + timeout_s
        try:
            with self._lock:
                kept = self._idle.pop() if self._idle else None
            if kept is not None:
                try:
                    return self._exchange(kept, body, headers, deadline, reused=True)
                except _Dropped:
                    pass  # the server closed the idle connection: a new one below
            return self._exchange(self._connect(deadline), body, headers, deadline, reused=False)
        except (OSError, http.client.HTTPException) as error:
            if time.monotonic() >= deadline and not isinstance(error, DeadlineExceeded):
                raise DeadlineExceeded(f"no whole reply within {timeout_s:g} s") from error
            raise

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        connection = self.connection_class(self.host, self.port)
        if self.tunnel is not None:
            host, port, login = self.tunnel
            connection.set_tunnel(host, port, headers=login)
        connection.until(deadline)
        connection.connect()
        return connection

    def _exchange(
        self, connection, body: bytes, headers: dict[str, str], deadline: float, reused: bool
    ) -> bytes:
        """One request and its whole reply on `connection`, which goes back to the pool when it stays open."""
        connection.until(deadline)
        try:
            try:
                connection.request("POST", self.target, body, {**headers, **self.proxy_headers})
                response = connection.getresponse()
            except ConnectionError as error:
                if reused:
                    raise _Dropped from error
                raise
            reply = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.append(connection)
        if not 200 <= response.status < 300:
            raise StatusError(response.status, response.reason, response.headers, reply)
        return reply


class _Dropped(Exception):
    """A reused connection was closed by the server before any reply to this request arrived."""


def _proxy_for(scheme: str, host: str) -> urllib.parse.SplitResult | None:
    """The environment's proxy for `scheme` unless no_proxy exempts `host`."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


class _DeadlineSocket:
    """A connected socket whose sends and receives each wait only until `deadline` (monotonic)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline = math.inf

    def wait_left(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the call's deadline passed")
        self.sock.settimeout(left)

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            self.wait_left()
            view = view[self.sock.send(view) :]

    def makefile(self, mode: str) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"mode {mode!r}: http.client reads replies in 'rb'")
        return io.BufferedReader(_DeadlineReader(self, self.sock.makefile("rb", buffering=0)))

    def close(self) -> None:
        # The socket's own count of open readers defers the real close until the reply is read.
        self.sock.close()


class _DeadlineReader(io.RawIOBase):
    """The reply stream http.client reads: the socket's own reader, each read within the deadline."""

    def __init__(self, sock: _DeadlineSocket, raw: io.RawIOBase):
        super().__init__()
        self.sock, self.raw = sock, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self.sock.wait_left()
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _DeadlineConnecting:
    """An http.client connection that connects within `deadline` and then reads and writes through a
    _DeadlineSocket; `until` moves the deadline for the next request on it."""

    deadline: float

    def connect(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the call's deadline passed before connecting")
        self.timeout = left
        super().connect()
        self.sock = _DeadlineSocket(self.sock)
        self.sock.deadline = self.deadline

    def until(self, deadline: float) -> None:
        self.deadline = deadline
        if self.sock is not None:
            self.sock.deadline = deadline


class _DeadlineHttp(_DeadlineConnecting, http.client.HTTPConnection):
    pass


class _DeadlineHttps(_DeadlineConnecting, http.client.HTTPSConnection):
    pass
