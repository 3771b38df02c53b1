"""The emulator's HTTP/1.1 server: `asyncio.Protocol` + httptools (llhttp).

Why not aiohttp.web: a zero-latency emulator request is one small JSON POST answered at
once, and aiohttp's request/response objects, router, middleware and one task per request
were ~75% of the emulator's CPU. Here a request is parsed by llhttp (the parser the lean
client uses, see `teacher/_lean.py`), handed to a plain function, and its answer written in
the same callback: no task, no timer, unless the answer is due later (`Later`: a latency or
a hang), which takes one `call_later` timer.

What it does: keep-alive (HTTP/1.1 default; `Connection: close` and HTTP/1.0 honoured),
pipelined requests answered in order, Content-Length and chunked request bodies,
`Expect: 100-continue`, a body limit (413), 400 for unparseable requests, idle keep-alive
connections closed after `KEEPALIVE_S`. A client that hangs up while its answer is pending
cancels it (`Later.cancel`), as aiohttp's handler cancellation did. What it leaves out:
TLS, HTTP/2, upgrades (answered 400), streaming responses.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, cast
from urllib.parse import unquote

import httptools
import orjson

MAX_BODY_BYTES: Final = 32 * 1024 * 1024  # what the aiohttp server accepted
KEEPALIVE_S: Final = 75.0  # idle keep-alive connections are closed after this (aiohttp's)
_SWEEP_S: Final = 15.0  # how often idle connections are looked for

_PHRASES = {s.value: s.phrase for s in HTTPStatus} | {529: "Site Overloaded"}


class Request:
    """One parsed request.

    Attributes:
        method: e.g. "POST".
        path: the percent-decoded path, without the query string.
        headers: names lower-cased; a repeated header keeps its values joined by ", ".
        body: the raw body.
    """

    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body


class Response:
    """One answer. Content-Length, Date, Server and Connection are added when it is sent.

    Attributes:
        status: the HTTP status.
        body: the raw body.
        headers: any others, written as given.
        cut_after: when set, only this many body bytes are sent before the connection is
            dropped (fault injection: a connection reset mid-answer).
    """

    __slots__ = ("body", "cut_after", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        cut_after: int | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = {} if headers is None else headers
        self.cut_after = cut_after


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (`Content-Type: application/json`)."""
    all_headers = {"Content-Type": "application/json"}
    if headers:
        all_headers.update(headers)
    return Response(status, orjson.dumps(body), all_headers)


class Later:
    """An answer due after `delay_s` seconds (latency, hang).

    Args:
        delay_s: seconds to wait.
        complete: builds the answer when the delay is over.
        cancel: called instead when the client hangs up (or the server closes) first.
    """

    __slots__ = ("cancel", "complete", "delay_s")

    def __init__(
        self, delay_s: float, complete: Callable[[], Response], cancel: Callable[[], None]
    ) -> None:
        self.delay_s = delay_s
        self.complete = complete
        self.cancel = cancel


Handler = Callable[[Request], "Response | Later"]


class _DateHeader:
    """`Date: ...\\r\\n`, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
        return self._line


def _error_response(status: int, message: str, type_: str = "invalid_request_error") -> Response:
    """An error in OpenAI's shape, for requests that never reached a route."""
    error = {"message": message, "type": type_, "param": None, "code": None}
    return json_response(status, {"error": error})


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # The request being parsed.
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        # Requests parsed while an earlier one is still pending (pipelining), in order.
        self._queue: deque[tuple[Request, bool]] = deque()
        self._pending: Later | None = None
        self._pending_keep_alive = True
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.last_active = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.last_active = self._loop.time()
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._queue.clear()
        self._cancel_pending()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # An exception raised in a callback comes back as the parser's, with it as context.
            if isinstance(exc.__context__, _TooLarge):
                self._fail(413, f"request body larger than {MAX_BODY_BYTES} bytes")
            else:
                self._fail(400, f"Bad Request: {exc}")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _TooLarge
        if self._headers.get("expect", "").lower() == "100-continue":
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY_BYTES:
            raise _TooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        url = self._url
        if not url.startswith(b"/"):  # absolute form (a proxy's request line)
            url = httptools.parse_url(url).path or b"/"
        path = url.split(b"?", 1)[0].decode("latin-1")
        if "%" in path:
            path = unquote(path)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(parser.get_method().decode("latin-1"), path, self._headers, body)
        keep_alive = parser.should_keep_alive()
        if self._pending is not None or self._queue:
            self._queue.append((request, keep_alive))
        else:
            self._serve(request, keep_alive)

    # answering

    def _serve(self, request: Request, keep_alive: bool) -> None:
        try:
            answer = self._server.handler(request)
        except Exception as exc:  # a bug of the emulator: answer it, do not kill the server
            answer = _error_response(500, f"emulator error: {type(exc).__name__}", "server_error")
            keep_alive = False
        if isinstance(answer, Later):
            self._pending = answer
            self._pending_keep_alive = keep_alive
            self._timer = self._loop.call_later(answer.delay_s, self._due)
            return
        self._write(answer, keep_alive)

    def _due(self) -> None:
        later, self._pending, self._timer = self._pending, None, None
        if later is None or self._closing:
            return
        try:
            answer = later.complete()
        except Exception as exc:
            answer = _error_response(500, f"emulator error: {type(exc).__name__}", "server_error")
            self._pending_keep_alive = False
        self._write(answer, self._pending_keep_alive)
        while self._queue and self._pending is None and not self._closing:
            request, keep_alive = self._queue.popleft()
            self._serve(request, keep_alive)

    def _write(self, response: Response, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        status = response.status
        lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in response.headers.items()]
        lines.append(f"Content-Length: {len(response.body)}\r\n")
        head = "".join(lines).encode("latin-1") + self._server.date.line()
        if response.cut_after is not None:
            transport.write(head + b"Server: amr-async-emulator\r\n\r\n")
            transport.write(response.body[: response.cut_after])
            self._closing = True
            transport.abort()
            return
        if keep_alive:
            transport.write(head + b"Server: amr-async-emulator\r\n\r\n" + response.body)
        else:
            transport.write(
                head + b"Server: amr-async-emulator\r\nConnection: close\r\n\r\n" + response.body
            )
            self._closing = True
            transport.close()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that could not be parsed, then close (the stream is lost)."""
        self._queue.clear()
        self._cancel_pending()
        self._write(_error_response(status, message), keep_alive=False)

    def _cancel_pending(self) -> None:
        later, self._pending = self._pending, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if later is not None:
            later.cancel()

    def idle_since(self) -> float | None:
        """When the connection became idle, None while a request is pending."""
        if self._pending is not None or self._queue:
            return None
        return self.last_active

    def close(self) -> None:
        """Drop the connection (server shutdown, idle expiry); a pending answer is cancelled."""
        self._closing = True
        self._cancel_pending()
        if self._transport is not None:
            self._transport.abort()


class _TooLarge(Exception):
    """The request body is over `MAX_BODY_BYTES`."""


class HttpServer:
    """Serves `handler` on one listening socket.

    Args:
        handler: turns a request into a response, or a `Later` one. Called on the loop; it
            must not block.

    Not shared between loops; `start` binds it to the running one.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[_Connection] = set()
        self.date = _DateHeader()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on `host`:`port` (0 picks a free one); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, loop), host, port, backlog=1024, reuse_address=True
        )
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep, loop)
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.close_idle(loop.time())
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep, loop)

    def close_idle(self, now: float) -> int:
        """Close keep-alive connections idle for longer than `KEEPALIVE_S` as of `now`
        (the loop's clock); returns how many were closed."""
        closed = 0
        for conn in list(self.connections):
            since = conn.idle_since()
            if since is not None and since < now - KEEPALIVE_S:
                conn.close()
                closed += 1
        return closed

    async def aclose(self) -> None:
        """Stop listening and drop every connection (pending answers are cancelled)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.close()
            await self._server.wait_closed()
            self._server = None
