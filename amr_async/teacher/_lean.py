"""A lean HTTP/1.1 client for teacher calls: `asyncio.Protocol` + httptools (llhttp).

Why it exists: a teacher call is one small JSON POST and one JSON answer, yet aiohttp's
general client (request/response objects, header multidicts, cookie, redirect and timer
machinery) spends most of the engine's per-call CPU on it. This client does only what the
calls need, on llhttp, the C parser uvicorn uses:

- POST with a byte body (or GET with none, for checks such as the run's preflight); the
  request head (with the static headers) is built once per target;
- a keep-alive pool shared by every origin, bounded by `max_connections` open connections
  (in use or idle); idle ones are reused most-recent-first and dropped after
  `KEEPALIVE_EXPIRY_S` so a connection the server is about to close is not picked;
- TLS through the event loop's ssl (`ssl.create_default_context()`, the system's CAs, SNI);
- Content-Length, chunked and read-until-close bodies; gzip/deflate bodies if a server sends
  them anyway (it is not asked to: no Accept-Encoding is sent);
- connect, read (silence) and total time limits, with one timer per request.

What it leaves out: proxies (aiohttp did not honour them for us either: `trust_env` is off),
redirects (the APIs send none for POST; a 3xx is returned as it is), HTTP/2, streaming.
Choose aiohttp with `ClientConfig(transport="aiohttp")` when one of those is needed.

Errors it raises (mapped onto outcome kinds in `classify.py`)::

    TimeoutError                                    connect, read or total limit hit
    InvalidURLError (ValueError)                    not http(s), or no host
    ResponseParseError                              unparseable status line, headers, chunks
    ConnectionClosedError (ConnectionError)         closed before the whole answer arrived
    ConnectError (ConnectionError)                  refused, DNS, TLS (the cause chained)
    OSError                                         reset while writing
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import zlib
from typing import Final, cast

import httptools
from yarl import URL

from amr_async.teacher.base import ClientConfig

# Idle connections older than this are closed rather than reused: servers drop idle
# keep-alive connections (aiohttp's server after 75 s, common proxies after 60 s), and a
# request written onto one being dropped fails. aiohttp's client uses the same 15 s.
KEEPALIVE_EXPIRY_S: Final = 15.0


class HttpTransportError(Exception):
    """Root of the errors the lean transport raises itself."""


class InvalidURLError(HttpTransportError, ValueError):
    """The URL cannot be requested (scheme other than http/https, or no host)."""


class ResponseParseError(HttpTransportError):
    """The server's bytes are not a valid HTTP/1.1 response."""


class ConnectionClosedError(HttpTransportError, ConnectionError):
    """The connection closed before the whole response arrived."""


class ConnectError(HttpTransportError, ConnectionError):
    """No connection could be opened (refused, DNS, TLS); the message names host and port."""


Response = tuple[int, dict[str, str], bytes]


class Target:
    """One endpoint with its request head prepared: method line, Host and static headers.

    The head holds the API key, so it never appears in a repr.
    """

    __slots__ = ("host", "key", "port", "prefix", "tls")

    def __init__(
        self, url: URL, headers: dict[str, str], user_agent: str, method: str = "POST"
    ) -> None:
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise InvalidURLError(f"cannot request {url.scheme}://{url.raw_host or ''}")
        self.tls = url.scheme == "https"
        self.host: str = url.raw_host
        self.port: int = url.port or (443 if self.tls else 80)
        self.key = (self.tls, self.host, self.port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        if url.explicit_port is not None and url.port != (443 if self.tls else 80):
            host = f"{host}:{self.port}"
        lines = [f"{method} {url.raw_path_qs} HTTP/1.1", f"Host: {host}"]
        lines.append(f"User-Agent: {user_agent}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if url.raw_user is not None and not any(n.lower() == "authorization" for n in headers):
            # Credentials in the URL (a server behind a password) become Basic auth, as
            # aiohttp makes them; a key's Authorization header wins.
            pair = f"{url.user or ''}:{url.password or ''}".encode()
            lines.append("Authorization: Basic " + base64.b64encode(pair).decode("ascii"))
        self.prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

    def __repr__(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"Target({scheme}://{self.host}:{self.port})"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[bool, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reusable = False
        self.idle_since = 0.0
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._framed = False  # Content-Length or chunked: the end is known without a close
        self._headers_done = False
        self._read_timeout: float | None = None
        self._read_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP and TLS transports are not subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for: the connection's state is unknown, never reuse it.
            self.reusable = False
            self.abort()
            return
        if self._read_timeout is not None:
            self._arm_read_timer()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ResponseParseError(f"unparseable HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed:
            waiter.set_result(None)  # a body delimited by the close is complete now
            return
        detail = f": {exc}" if exc else ""
        self._fail(ConnectionClosedError(f"the server closed the connection mid-response{detail}"))

    # httptools callbacks (they must not raise: the parser would wrap the error)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        for name, _ in self._headers:
            if name.lower() in (b"content-length", b"transfer-encoding"):
                self._framed = True
                break
        else:
            # No body at all for these, whatever the headers say.
            self._framed = self._status in (204, 304) or self._status < 200

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._headers.clear()
            self._headers_done = False
            return
        self.reusable = self._parser.should_keep_alive()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # the request

    async def exchange(
        self, data: bytes, deadline: float | None, read_timeout: float | None
    ) -> Response:
        """Write one request and wait for its whole response.

        Raises:
            TimeoutError: the total deadline or the read limit passed.
            ResponseParseError, ConnectionClosedError: see the module docstring.
        """
        transport = self.transport
        if transport is None or self.lost:
            raise ConnectionClosedError("the connection is closed")
        self._status = 0
        self._headers = []
        self._body = []
        self._framed = self._headers_done = self.reusable = False
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        transport.write(data)
        timer = None if deadline is None else loop.call_at(deadline, self._time_out, "total")
        self._read_timeout = read_timeout
        if read_timeout is not None:
            self._arm_read_timer()
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None
        headers = self._header_map()
        return self._status, headers, self._body_bytes(headers)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()
        self.lost = True

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()
        self.lost = True

    def _header_map(self) -> dict[str, str]:
        raw = self._headers
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in raw}
        if len(headers) < len(raw):
            # A repeated header is one comma-joined value (RFC 9110 §5.3).
            headers = {}
            for raw_name, raw_value in raw:
                name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def _body_bytes(self, headers: dict[str, str]) -> bytes:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        encoding = headers.get("content-encoding")
        if encoding is None:
            return body
        return _decompress(encoding.strip().lower(), body)

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _time_out(self, which: str) -> None:
        self._fail(TimeoutError(f"the {which} time limit passed before the whole response"))

    def _arm_read_timer(self) -> None:
        assert self._read_timeout is not None
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = self._loop.call_later(self._read_timeout, self._time_out, "read")


def _decompress(encoding: str, body: bytes) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ResponseParseError(f"unsupported Content-Encoding {encoding!r}")
    try:
        # 32 + 15: gzip or zlib framing, detected from the header.
        return zlib.decompress(body, 47)
    except zlib.error:
        if encoding == "deflate":  # some servers send raw deflate
            try:
                return zlib.decompress(body, -15)
            except zlib.error:
                pass
        raise ResponseParseError(f"body does not decode as {encoding}") from None


class LeanPool:
    """Keep-alive connections to any number of origins, at most `max_connections` open.

    Safe to share between tasks of one event loop; binds to the loop of its first request.

    Args:
        config: pool size and time limits.
        ssl_context: for https origins; `ssl.create_default_context()` (the system's CAs)
            when None.
    """

    def __init__(self, config: ClientConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._config = config
        self._slots = asyncio.Semaphore(config.max_connections)
        self._in_use = 0
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._ssl = ssl_context
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, in use or idle."""
        self._open = {c for c in self._open if not c.lost}
        return len(self._open)

    @property
    def in_use(self) -> int:
        """Requests holding a connection slot now."""
        return self._in_use

    def target(self, url: URL, headers: dict[str, str], method: str = "POST") -> Target:
        """Prepare a `method` request to `url` with its static headers (see `Target`)."""
        return Target(url, headers, self._config.user_agent, method)

    async def request(self, target: Target, body: bytes = b"") -> Response:
        """Send `target`'s request with `body`; return (status, lower-cased headers, body).

        Raises:
            RuntimeError: the pool is closed.
            TimeoutError, OSError, HttpTransportError: see the module docstring.
        """
        if self._closed:
            raise RuntimeError("the HTTP pool is closed")
        loop = asyncio.get_running_loop()
        timeouts = self._config.timeouts
        deadline = None if timeouts.total is None else loop.time() + timeouts.total
        if self._slots.locked():
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()  # free: returns without suspending
        self._in_use += 1
        conn: _Connection | None = None
        try:
            conn = self._reuse(target.key, loop.time())
            if conn is None:
                conn = await self._connect(target, loop, deadline)
            data = b"%b%d\r\n\r\n%b" % (target.prefix, len(body), body)
            response = await conn.exchange(data, deadline, timeouts.read)
        except BaseException:
            # Cancelled, timed out or broken mid-request: the connection's state is unknown.
            if conn is not None:
                conn.abort()
            raise
        finally:
            self._in_use -= 1
            self._slots.release()
        if conn.reusable and not self._closed:
            conn.idle_since = loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()
        return response

    def _reuse(self, key: tuple[bool, str, int], now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # most recently used first
            if not conn.lost and now - conn.idle_since < KEEPALIVE_EXPIRY_S:
                return conn
            conn.close()
        return None

    async def _connect(
        self, target: Target, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> _Connection:
        if self.open_connections >= self._config.max_connections:
            self._evict_one_idle()
        limit = self._config.timeouts.connect
        connect_by = None if limit is None else loop.time() + limit
        if deadline is not None:
            connect_by = deadline if connect_by is None else min(connect_by, deadline)
        tls = self._ssl_context() if target.tls else None
        try:
            async with asyncio.timeout_at(connect_by):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, target.key),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls is not None else None,
                )
        except TimeoutError:
            raise TimeoutError(f"connecting to {target.host}:{target.port} timed out") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {target.host}:{target.port}: {exc}") from exc
        self._open.add(conn)
        return conn

    def _evict_one_idle(self) -> None:
        # Only idle connections count beyond the slots in use: close the oldest one.
        oldest: list[_Connection] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest[0].idle_since):
                oldest = idle
        if oldest:
            oldest.pop(0).close()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def aclose(self) -> None:
        """Close every connection; idempotent. Requests in flight fail with a closed error."""
        self._closed = True
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
