"""The emulator's HTTP/1.1 layer (`emulator/_http.py`) over raw sockets: framing,
keep-alive, pipelining, delayed answers, hang-ups, bad requests, idle expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from amr_async.emulator import _http
from amr_async.emulator._http import HttpServer, Later, Request, Response, json_response


class Recorder:
    """A handler: echoes what it got; `/later/N` answers after N ms of loop time."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.cancelled: list[str] = []

    def __call__(self, request: Request) -> Response | Later:
        self.seen.append(request)
        echo = {
            "method": request.method,
            "path": request.path,
            "headers": request.headers,
            "body": request.body.decode(),
        }
        if request.path.startswith("/later/"):
            ms = int(request.path.rsplit("/", 1)[1])
            return Later(
                ms / 1000,
                lambda: json_response(200, echo, {"x-delayed": str(ms)}),
                lambda: self.cancelled.append(request.path),
            )
        if request.path == "/cut":
            return Response(200, b"0123456789", {"x-cut": "1"}, cut_after=4)
        if request.path == "/boom":
            raise RuntimeError("a bug")
        return json_response(200, echo)


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, Recorder, int]]:
    recorder = Recorder()
    srv = HttpServer(recorder)
    port = await srv.start("127.0.0.1", 0)
    try:
        yield srv, recorder, port
    finally:
        await srv.aclose()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def test_keep_alive_and_pipelined_requests_answer_in_order(
    server: tuple[HttpServer, Recorder, int],
) -> None:
    _, recorder, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Two requests in one write; the first waits 30 ms, the second is immediate: the answers
    # still come in request order.
    writer.write(_post("/later/30", b"one") + _post("/now?q=1", b"two", "X-Twice: a\r\n"))
    first = await _read_response(reader)
    second = await _read_response(reader)
    assert first[0] == 200
    assert first[1]["x-delayed"] == "30"
    assert orjson.loads(first[2])["body"] == "one"
    echo = orjson.loads(second[2])
    assert echo["path"] == "/now"  # the query string is not part of the path
    assert echo["headers"]["x-twice"] == "a"
    assert "connection" not in second[1]
    assert second[1]["server"] == "amr-async-emulator"
    assert "date" in second[1]
    # The same connection still serves.
    writer.write(_post("/again", b"three"))
    assert orjson.loads((await _read_response(reader))[2])["body"] == "three"
    assert [r.path for r in recorder.seen] == ["/later/30", "/now", "/again"]
    writer.close()


async def test_connection_close_and_http10_close_after_the_answer(
    server: tuple[HttpServer, Recorder, int],
) -> None:
    _, _, port = server
    for request in (
        _post("/a", b"x", "Connection: close\r\n"),
        b"POST /b HTTP/1.0\r\nContent-Length: 1\r\n\r\ny",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        status, headers, _ = await _read_response(reader)
        assert status == 200
        assert headers["connection"] == "close"
        assert await reader.read() == b""  # the server closed its side
        writer.close()


async def test_chunked_body_repeated_headers_and_expect_continue(
    server: tuple[HttpServer, Recorder, int],
) -> None:
    _, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
        b"Accept: a\r\nAccept: b\r\n\r\n"
    )
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    status, _, body = await _read_response(reader)
    echo = orjson.loads(body)
    assert status == 200
    assert echo["body"] == "abcde"
    assert echo["headers"]["accept"] == "a, b"
    writer.close()


async def test_percent_encoded_path_is_decoded(server: tuple[HttpServer, Recorder, int]) -> None:
    _, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/v1/a%20b", b""))
    assert orjson.loads((await _read_response(reader))[2])["path"] == "/v1/a b"
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: zz\r\n\r\n", 400),
        (f"POST / HTTP/1.1\r\nContent-Length: {_http.MAX_BODY_BYTES + 1}\r\n\r\n".encode(), 413),
    ],
)
async def test_bad_requests_are_answered_then_closed(
    raw: bytes, status: int, server: tuple[HttpServer, Recorder, int]
) -> None:
    _, recorder, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    got, headers, body = await _read_response(reader)
    assert got == status
    assert headers["connection"] == "close"
    assert "error" in orjson.loads(body)
    assert await reader.read() == b""
    assert recorder.seen == []
    writer.close()


async def test_a_handler_bug_is_a_500_and_the_server_goes_on(
    server: tuple[HttpServer, Recorder, int],
) -> None:
    _, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/boom", b""))
    status, _, body = await _read_response(reader)
    assert status == 500
    assert "RuntimeError" in orjson.loads(body)["error"]["message"]
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/fine", b""))
    assert (await _read_response(reader))[0] == 200
    writer.close()


async def test_cut_answer_sends_part_of_the_body_then_drops(
    server: tuple[HttpServer, Recorder, int],
) -> None:
    _, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/cut", b""))
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 10" in head
    assert await reader.read() == b"0123"  # 4 of 10 bytes, then the connection is gone
    writer.close()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_hang_up_cancels_a_pending_answer(server: tuple[HttpServer, Recorder, int]) -> None:
    srv, recorder, port = server
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/later/60000", b""))
    await writer.drain()
    await _until(lambda: len(recorder.seen) == 1)
    writer.close()
    await _until(lambda: recorder.cancelled == ["/later/60000"])
    await _until(lambda: not srv.connections)


async def test_shutdown_cancels_pending_answers() -> None:
    recorder = Recorder()
    srv = HttpServer(recorder)
    port = await srv.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/later/60000", b""))
    await _until(lambda: len(recorder.seen) == 1)
    await srv.aclose()
    assert recorder.cancelled == ["/later/60000"]
    assert await reader.read() == b""
    writer.close()


async def test_idle_keep_alive_connections_expire(server: tuple[HttpServer, Recorder, int]) -> None:
    srv, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("/a", b""))
    await _read_response(reader)
    now = asyncio.get_running_loop().time()
    assert srv.close_idle(now) == 0  # idle, but not for long
    # A busy connection is never expired, however old.
    _busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(_post("/later/60000", b""))
    await _until(
        lambda: len(srv.connections) == 2 and any(c.idle_since() is None for c in srv.connections)
    )
    assert srv.close_idle(now + _http.KEEPALIVE_S + 1) == 1
    assert await reader.read() == b""
    assert len(srv.connections) == 1
    writer.close()
    busy_writer.close()
