"""The lean HTTP/1.1 transport (`amr_async.teacher._lean`) against scripted raw servers.

Each server is a real TCP (or TLS) listener on loopback that reads whole requests and
answers with the exact bytes a test scripts, so framing, keep-alive and failure paths are
exercised byte for byte; the emulator tests in test_teacher_clients.py cover the protocols.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import uvloop
from yarl import URL

from amr_async.teacher import ChatRequest, ClientConfig, Message, OpenAIClient, OutcomeKind
from amr_async.teacher._lean import (
    ConnectError,
    ConnectionClosedError,
    InvalidURLError,
    LeanPool,
    ResponseParseError,
    Target,
)
from amr_async.teacher.base import Timeouts

REQ = ChatRequest(model="m", messages=(Message("user", "hi"),), max_tokens=10)
CHAT = orjson.dumps(
    {
        "choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
)
# Answers by request number on one server: bytes, or a callable given the request's bytes.
Script = Callable[[int, bytes], bytes | None]


class Server:
    """Counts connections and requests; answers each request with `script(n, request)`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.script(len(self.requests) - 1, head + body)
                if answer is None:  # hang up without answering
                    return
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower():
                    return
                if answer.endswith(b"#CLOSE"):
                    return
        finally:
            self.open_now -= 1
            writer.close()


@asynccontextmanager
async def serving(
    script: Script, ssl_ctx: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Server, str]]:
    server = Server(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=ssl_ctx)
    port = listener.sockets[0].getsockname()[1]
    scheme = "https" if ssl_ctx else "http"
    try:
        yield (
            server,
            f"{scheme}://localhost:{port}/v1" if ssl_ctx else f"http://127.0.0.1:{port}/v1",
        )
    finally:
        listener.close()
        await listener.wait_closed()


def ok(body: bytes = CHAT, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_1\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def client(base: str, **config: object) -> OpenAIClient:
    return OpenAIClient(
        base_url=base,
        api_key="sk-test-SECRETKEY-0123456789",
        config=ClientConfig(**config),  # type: ignore[arg-type]
    )


async def test_keep_alive_reuses_one_connection_and_sends_a_well_formed_request() -> None:
    async with serving(lambda n, req: ok()) as (server, base), client(base) as c:
        outcomes = [await c.send(REQ) for _ in range(3)]
    assert [o.kind for o in outcomes] == [OutcomeKind.OK] * 3
    assert outcomes[0].text == "hello"
    assert outcomes[0].request_id == "req_1"
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"Host: 127.0.0.1:" in head
    assert b"Authorization: Bearer sk-test-SECRETKEY-0123456789" in head
    assert orjson.loads(body)["messages"] == [{"role": "user", "content": "hi"}]


async def test_chunked_gzip_body_and_repeated_headers() -> None:
    packed = gzip.compress(CHAT)
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(packed[i : i + 7]), packed[i : i + 7])
        for i in range(0, len(packed), 7)
    )
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"
        b"X-Request-Id: a\r\nx-request-id: b\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    async with serving(lambda n, req: answer) as (server, base):
        pool = LeanPool(ClientConfig())
        target = pool.target(URL(base + "/chat/completions"), {})
        status, headers, body = await pool.request(target, b"{}")
        await pool.request(target, b"{}")  # the chunked answer ended cleanly: reused
        await pool.aclose()
    assert status == 200
    assert body == CHAT
    assert headers["x-request-id"] == "a, b"
    assert server.connections == 1


async def test_body_until_close_is_complete_and_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + CHAT
    async with serving(lambda n, req: answer) as (server, base), client(base) as c:
        outs = [await c.send(REQ) for _ in range(2)]
    assert [o.kind for o in outs] == [OutcomeKind.OK] * 2
    assert server.connections == 2


async def test_interim_100_continue_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + ok()
    async with serving(lambda n, req: answer) as (_, base), client(base) as c:
        out = await c.send(REQ)
    assert out.kind is OutcomeKind.OK
    assert out.status == 200


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", OutcomeKind.MALFORMED_RESPONSE),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n{"cho#CLOSE', OutcomeKind.CONNECTION),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
            OutcomeKind.MALFORMED_RESPONSE,
        ),
        (ok(b'{"choices": []}'), OutcomeKind.MALFORMED_RESPONSE),
    ],
    ids=["garbage", "cut-body", "unknown-encoding", "unreadable-json"],
)
async def test_broken_answers_are_classified(answer: bytes, kind: OutcomeKind) -> None:
    async with serving(lambda n, req: answer) as (_, base), client(base) as c:
        out = await c.send(REQ)
    assert out.kind is kind, out
    assert "SECRETKEY" not in repr(out)


async def test_hang_up_without_answer_is_connection_and_next_call_reconnects() -> None:
    script: Script = lambda n, req: None if n == 0 else ok()  # noqa: E731
    async with serving(script) as (server, base), client(base) as c:
        first = await c.send(REQ)
        second = await c.send(REQ)
    assert first.kind is OutcomeKind.CONNECTION
    assert second.kind is OutcomeKind.OK
    assert server.connections == 2


async def test_pool_never_opens_more_than_max_connections() -> None:
    async with serving(lambda n, req: ok()) as (server, base):
        pool = LeanPool(ClientConfig(max_connections=2))
        target = pool.target(URL(base + "/chat/completions"), {})
        results = await asyncio.gather(*(pool.request(target, b"{}") for _ in range(10)))
        assert pool.in_use == 0
        assert pool.open_connections <= 2
        await pool.aclose()
    assert [r[0] for r in results] == [200] * 10
    assert server.most_open <= 2


async def test_cancelled_request_leaves_the_pool_clean() -> None:
    got = asyncio.Event()

    def never(n: int, req: bytes) -> bytes:
        got.set()
        return b""  # answers nothing, keeps the connection open

    async with serving(never) as (_, base):
        pool = LeanPool(ClientConfig(max_connections=1))
        target = pool.target(URL(base + "/chat/completions"), {})
        task = asyncio.create_task(pool.request(target, b"{}"))
        await asyncio.wait_for(got.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.in_use == 0
        assert pool.open_connections == 0  # aborted: its state was unknown
        await pool.aclose()


async def test_waiting_for_a_slot_counts_against_the_total_limit() -> None:
    async with serving(lambda n, req: b"") as (_, base):  # never answers
        pool = LeanPool(ClientConfig(max_connections=1, timeouts=Timeouts(total=0.2)))
        target = pool.target(URL(base + "/chat/completions"), {})
        results = await asyncio.gather(
            pool.request(target, b"{}"), pool.request(target, b"{}"), return_exceptions=True
        )
        await pool.aclose()
    assert all(isinstance(r, TimeoutError) for r in results)


def test_invalid_urls_are_refused_and_targets_hide_the_key() -> None:
    with pytest.raises(InvalidURLError):
        Target(URL("ftp://example.com/x"), {}, "ua")
    target = Target(URL("https://api.example.com/v1/x"), {"Authorization": "Bearer sk-X"}, "ua")
    assert "sk-X" not in repr(target)
    assert b"Host: api.example.com\r\n" in target.prefix  # default port left out


def test_targets_carry_their_method_and_url_credentials_as_basic_auth() -> None:
    get = Target(URL("http://u:p%40ss@127.0.0.1:8000/v1/models"), {}, "ua", "GET")
    assert get.prefix.startswith(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Authorization: Basic dTpwQHNz\r\n" in get.prefix  # base64("u:p@ss")
    assert "p@ss" not in repr(get)
    keyed = Target(URL("http://u:p@h/x"), {"Authorization": "Bearer k"}, "ua")
    assert keyed.prefix.count(b"Authorization") == 1


async def test_invalid_url_is_an_invalid_request_outcome() -> None:
    async with client("ftp://127.0.0.1:1/v1") as c:
        out = await c.send(REQ)
    assert out.kind is OutcomeKind.INVALID_REQUEST


def test_errors_keep_their_classes() -> None:
    assert issubclass(ConnectionClosedError, ConnectionError)
    assert not issubclass(ResponseParseError, OSError)


def test_works_on_uvloop() -> None:
    async def main() -> list[OutcomeKind]:
        async with serving(lambda n, req: ok()) as (_, base), client(base) as c:
            return [(await c.send(REQ)).kind for _ in range(2)]

    assert uvloop.run(main()) == [OutcomeKind.OK] * 2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_with_verification(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with serving(lambda n, req: ok(), server_ctx) as (server, base):
        pool = LeanPool(ClientConfig(), ssl_context=trusting)
        target = pool.target(URL(base + "/chat/completions"), {})
        assert [(await pool.request(target, b"{}"))[0] for _ in range(2)] == [200, 200]
        await pool.aclose()
        # The system's CAs do not know this certificate: refused, naming the place.
        strict = LeanPool(ClientConfig())
        with pytest.raises(ConnectError, match="cannot connect to localhost:") as caught:
            await strict.request(strict.target(URL(base + "/chat/completions"), {}), b"{}")
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        await strict.aclose()
    assert server.connections >= 1


def test_transport_is_validated() -> None:
    with pytest.raises(ValueError, match="transport"):
        ClientConfig(transport="curl")  # type: ignore[arg-type]
    assert ClientConfig().transport == "lean"


async def test_aclose_fails_requests_in_flight_and_refuses_new_ones() -> None:
    got = asyncio.Event()

    def never(n: int, req: bytes) -> bytes:
        got.set()
        return b""

    async with serving(never) as (_, base):
        pool = LeanPool(ClientConfig())
        target = pool.target(URL(base + "/chat/completions"), {})
        task = asyncio.create_task(pool.request(target, b"{}"))
        await asyncio.wait_for(got.wait(), 10)
        await pool.aclose()
        with pytest.raises(ConnectionClosedError):
            await task
        with pytest.raises(RuntimeError, match="closed"):
            await pool.request(target, b"{}")
