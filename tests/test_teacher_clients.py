"""Our wire clients against the emulator: every outcome kind, over real HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Literal

import aiohttp
import pytest

from amr_async.emulator import FaultRates, LatencyModel, Limits, RunningEmulator
from amr_async.teacher import (
    AnthropicClient,
    ChatRequest,
    ClientConfig,
    Message,
    OpenAIClient,
    OutcomeKind,
    Provider,
    TeacherClient,
    Timeouts,
    make_client,
    open_session,
)

StartEmulator = Callable[..., Awaitable[RunningEmulator]]

KEY = "sk-test-SECRETKEY-0123456789"
REQ = ChatRequest(
    model="emu-1",
    messages=(
        Message("user", "### TASK: direct\nWrite def has_close_elements(numbers, threshold)."),
    ),
    max_tokens=2000,
    system="You are a professional coder.",
)


def _client(
    provider: Provider,
    running: RunningEmulator,
    transport: Literal["lean", "aiohttp"] = "lean",
    timeouts: Timeouts | None = None,
) -> TeacherClient:
    base = running.openai_base_url if provider is Provider.OPENAI else running.anthropic_base_url
    config = ClientConfig(transport=transport, timeouts=timeouts or Timeouts())
    return make_client(provider, base_url=base, api_key=KEY, config=config)


BOTH = pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.ANTHROPIC])
# Both HTTP transports must give the same outcomes (see ClientConfig.transport).
TRANSPORTS = pytest.mark.parametrize("transport", ["lean", "aiohttp"])


@BOTH
@TRANSPORTS
async def test_ok_answer_with_usage_and_request_id(
    provider: Provider, transport: Literal["lean", "aiohttp"], emulator: RunningEmulator
) -> None:
    client = _client(provider, emulator, transport)
    async with client:  # type: ignore[attr-defined]
        out = await client.send(REQ)
    assert out.kind is OutcomeKind.OK, out.error
    assert "```python" in out.text
    assert "def has_close_elements" in out.text
    assert out.usage.input_tokens > 0
    assert out.usage.output_tokens > 0
    assert out.status == 200
    assert out.request_id is not None
    assert out.request_id.startswith("req_")
    assert out.finish_reason in ("stop", "end_turn")


@BOTH
@TRANSPORTS
async def test_rate_limit_headers_are_parsed(
    provider: Provider, transport: Literal["lean", "aiohttp"], start_emulator: StartEmulator
) -> None:
    running = await start_emulator(limits=Limits(rpm=50, tpm=1_000_000))
    async with _client(provider, running, transport) as client:  # type: ignore[attr-defined]
        await client.send(REQ)
        out = await client.send(REQ)
    rl = out.rate_limits
    assert rl.limit_requests == 50
    assert rl.remaining_requests == 48
    assert rl.reset_requests_s is not None
    assert 0 < rl.reset_requests_s <= 61
    assert rl.limit_tokens == 1_000_000
    assert rl.remaining_tokens is not None
    assert rl.remaining_tokens < 1_000_000
    if provider is Provider.ANTHROPIC:
        # Output is reserved at max_tokens, then settled to the real count.
        assert rl.limit_output_tokens == 1_000_000
        assert rl.remaining_output_tokens is not None
        assert rl.remaining_output_tokens > 1_000_000 - 2 * REQ.max_tokens


@BOTH
@TRANSPORTS
async def test_rpm_exceeded_is_rate_limited_with_retry_hint(
    provider: Provider, transport: Literal["lean", "aiohttp"], start_emulator: StartEmulator
) -> None:
    running = await start_emulator(limits=Limits(rpm=2))
    async with _client(provider, running, transport) as client:  # type: ignore[attr-defined]
        kinds = [(await client.send(REQ)).kind for _ in range(3)]
        out = await client.send(REQ)
    assert kinds == [OutcomeKind.OK, OutcomeKind.OK, OutcomeKind.RATE_LIMITED]
    assert out.kind is OutcomeKind.RATE_LIMITED
    assert out.kind.retryable
    assert out.retry_after_s is not None
    assert 0 < out.retry_after_s <= 60
    assert out.status == 429


FAULT_KINDS = [
    ("server_error", OutcomeKind.SERVER_ERROR),
    ("overloaded", OutcomeKind.OVERLOADED),
    ("rate_limit", OutcomeKind.RATE_LIMITED),
    ("insufficient_quota", OutcomeKind.QUOTA_EXHAUSTED),
    ("connection_reset", OutcomeKind.CONNECTION),
    ("malformed_json", OutcomeKind.MALFORMED_RESPONSE),
    ("truncated_body", OutcomeKind.MALFORMED_RESPONSE),
    ("finish_length", OutcomeKind.TRUNCATED),
]


@BOTH
@TRANSPORTS
@pytest.mark.parametrize(("fault", "kind"), FAULT_KINDS)
async def test_each_fault_is_classified(
    provider: Provider,
    transport: Literal["lean", "aiohttp"],
    fault: str,
    kind: OutcomeKind,
    start_emulator: StartEmulator,
) -> None:
    running = await start_emulator(faults=FaultRates(**{fault: 1.0}))
    async with _client(provider, running, transport) as client:  # type: ignore[attr-defined]
        out = await client.send(REQ)
    assert out.kind is kind, out
    assert KEY not in repr(out)
    if fault == "rate_limit":
        assert out.retry_after_s == 1.0
    if fault == "finish_length":
        assert out.text
        assert out.finish_reason in ("length", "max_tokens")
    snap = running.emulator.counters.snapshot()
    assert snap["faults"] == {fault: 1}


@BOTH
@TRANSPORTS
@pytest.mark.parametrize("limit", ["read", "total"])
async def test_hang_times_out(
    provider: Provider,
    transport: Literal["lean", "aiohttp"],
    limit: str,
    start_emulator: StartEmulator,
) -> None:
    running = await start_emulator(faults=FaultRates(hang=1.0), hang_s=30.0)
    timeouts = Timeouts(connect=5, read=0.2, total=10)
    if limit == "total":
        timeouts = Timeouts(connect=5, read=None, total=0.3)
    async with _client(provider, running, transport, timeouts) as client:  # type: ignore[attr-defined]
        out = await client.send(REQ)
    assert out.kind is OutcomeKind.TIMEOUT
    assert out.status is None


@BOTH
@TRANSPORTS
async def test_wrong_key_is_auth_and_key_never_leaks(
    provider: Provider, transport: Literal["lean", "aiohttp"], start_emulator: StartEmulator
) -> None:
    running = await start_emulator(api_key="sk-the-right-one-xyz")
    client = _client(provider, running, transport)
    assert KEY not in repr(client)
    async with client:  # type: ignore[attr-defined]
        out = await client.send(REQ)
    assert out.kind is OutcomeKind.AUTH
    assert not out.kind.retryable
    assert KEY not in repr(out)
    assert "sk-the-right-one" not in repr(out)


@BOTH
async def test_invalid_request(provider: Provider, emulator: RunningEmulator) -> None:
    bad = ChatRequest(model="emu-1", messages=(), max_tokens=10)
    async with _client(provider, emulator) as client:  # type: ignore[attr-defined]
        out = await client.send(bad)
    assert out.kind is OutcomeKind.INVALID_REQUEST
    assert out.status == 400
    assert "messages" in (out.error or "")


@BOTH
async def test_context_length_is_invalid_request(
    provider: Provider, start_emulator: StartEmulator
) -> None:
    running = await start_emulator(context_window=100)
    big = ChatRequest(model="m", messages=(Message("user", "x" * 2000),), max_tokens=10)
    async with _client(provider, running) as client:  # type: ignore[attr-defined]
        out = await client.send(big)
    assert out.kind is OutcomeKind.INVALID_REQUEST


@BOTH
@TRANSPORTS
async def test_refused_connection(
    provider: Provider, transport: Literal["lean", "aiohttp"]
) -> None:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}" + ("/v1" if provider is Provider.OPENAI else "")
    config = ClientConfig(transport=transport)
    async with make_client(provider, base_url=base, api_key=KEY, config=config) as client:  # type: ignore[attr-defined]
        out = await client.send(REQ)
    assert out.kind is OutcomeKind.CONNECTION
    assert KEY not in repr(out)


async def test_stop_sequence_and_seed_reach_the_server(emulator: RunningEmulator) -> None:
    req = ChatRequest(model="m", messages=REQ.messages, max_tokens=500, seed=7, stop=("```python",))
    async with OpenAIClient(base_url=emulator.openai_base_url, api_key=KEY) as client:
        out = await client.send(req)
    assert out.kind is OutcomeKind.OK
    assert "```python" not in out.text
    assert out.text.startswith("Here is")


async def test_shared_session_and_protocol(emulator: RunningEmulator) -> None:
    session = open_session(ClientConfig(max_connections=8))
    try:
        clients: list[TeacherClient] = [
            OpenAIClient(base_url=emulator.openai_base_url, session=session),
            AnthropicClient(base_url=emulator.anthropic_base_url, session=session),
        ]
        for client in clients:
            assert isinstance(client, TeacherClient)
            out = await client.send(REQ)
            assert out.kind is OutcomeKind.OK
            await client.aclose()
        assert not session.closed  # a shared session belongs to its creator
    finally:
        await session.close()


async def test_closed_client_refuses(emulator: RunningEmulator) -> None:
    client = OpenAIClient(base_url=emulator.openai_base_url)
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.send(REQ)


async def test_no_request_sent_twice(emulator: RunningEmulator) -> None:
    async with OpenAIClient(base_url=emulator.openai_base_url) as client:
        for i in range(5):
            req = ChatRequest(model="m", messages=(Message("user", f"q{i}"),), max_tokens=50)
            assert (await client.send(req)).kind.is_success
    async with (
        aiohttp.ClientSession() as s,
        s.get(emulator.base_url + "/_emulator/counters") as r,
    ):
        snap = await r.json()
    assert sorted(snap["body_hashes"].values()) == [1] * 5
    assert snap["requests"]["/v1/chat/completions"] == {"200": 5}


async def test_cancelled_send_leaves_the_pool_clean(start_emulator: StartEmulator) -> None:
    running = await start_emulator(faults=FaultRates(hang=1.0), hang_s=30.0)
    session = open_session(ClientConfig(max_connections=2))
    client = OpenAIClient(base_url=running.openai_base_url, session=session)
    try:
        task = asyncio.create_task(client.send(REQ))
        for _ in range(3000):  # until the server holds the request (bounded)
            if running.emulator.counters.body_hashes:
                break
            await asyncio.sleep(0.01)
        assert running.emulator.counters.body_hashes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        connector = session.connector
        assert connector is not None
        assert not connector._acquired  # no connection left checked out
    finally:
        await session.close()


async def test_timed_out_hang_frees_the_servers_slot(start_emulator: StartEmulator) -> None:
    running = await start_emulator(
        faults=FaultRates(hang=1.0), hang_s=30.0, limits=Limits(max_concurrency=1)
    )
    config = ClientConfig(timeouts=Timeouts(read=0.2))
    async with OpenAIClient(base_url=running.openai_base_url, config=config) as client:
        assert (await client.send(REQ)).kind is OutcomeKind.TIMEOUT
    limits = running.emulator.openai_limits
    for _ in range(3000):  # the server notices the hang-up and cancels its handler
        if limits.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert limits.in_flight == 0
    counts = running.emulator.counters.snapshot()["requests"]["/v1/chat/completions"]
    assert counts == {"cancelled": 1}


async def test_max_completion_tokens_goes_over_the_wire(emulator: RunningEmulator) -> None:
    req = ChatRequest(model="m", messages=REQ.messages, max_tokens=5)
    async with OpenAIClient(
        base_url=emulator.openai_base_url, token_param="max_completion_tokens"
    ) as client:
        out = await client.send(req)
    assert out.kind is OutcomeKind.TRUNCATED
    assert out.finish_reason == "length"
    assert 0 < out.usage.output_tokens <= 5
    assert not out.kind.retryable


async def test_anthropic_stop_sequence(emulator: RunningEmulator) -> None:
    req = ChatRequest(model="m", messages=REQ.messages, max_tokens=500, stop=("```",))
    async with AnthropicClient(base_url=emulator.anthropic_base_url) as client:
        out = await client.send(req)
    assert out.kind is OutcomeKind.OK
    assert out.finish_reason == "stop_sequence"
    assert "```" not in out.text


@BOTH
async def test_request_larger_than_the_token_limit_is_not_retryable(
    provider: Provider, start_emulator: StartEmulator
) -> None:
    running = await start_emulator(limits=Limits(tpm=1000))
    big = ChatRequest(model="m", messages=REQ.messages, max_tokens=5000)
    async with _client(provider, running) as client:  # type: ignore[attr-defined]
        out = await client.send(big)
    assert out.status == 429
    assert out.kind is OutcomeKind.INVALID_REQUEST
    assert not out.kind.retryable


async def test_concurrent_faults_are_all_classified_and_counted(
    start_emulator: StartEmulator,
) -> None:
    running = await start_emulator(
        faults=FaultRates.spread(0.5), seed=5, latency=LatencyModel.parse("lognormal:0.002,0.5")
    )
    session = open_session(ClientConfig(max_connections=50))
    client = OpenAIClient(base_url=running.openai_base_url, session=session)
    try:
        requests = [
            ChatRequest(model="m", messages=(Message("user", f"question {i}"),), max_tokens=400)
            for i in range(200)
        ]
        outcomes = await asyncio.gather(*(client.send(r) for r in requests))
    finally:
        await session.close()
    snap = running.emulator.counters.snapshot()
    faults = snap["faults"]
    kinds = [o.kind for o in outcomes]
    expected = {
        OutcomeKind.SERVER_ERROR: faults.get("server_error", 0),
        OutcomeKind.OVERLOADED: faults.get("overloaded", 0),
        OutcomeKind.RATE_LIMITED: faults.get("rate_limit", 0),
        OutcomeKind.CONNECTION: faults.get("connection_reset", 0),
        OutcomeKind.MALFORMED_RESPONSE: faults.get("malformed_json", 0)
        + faults.get("truncated_body", 0),
        OutcomeKind.TRUNCATED: faults.get("finish_length", 0),
    }
    for kind, count in expected.items():
        assert kinds.count(kind) == count, kind
    assert kinds.count(OutcomeKind.OK) == 200 - sum(faults.values())
    assert 60 <= sum(faults.values()) <= 140  # ~100 expected from rate 0.5
    assert sum(snap["requests"]["/v1/chat/completions"].values()) == 200
    assert sorted(snap["body_hashes"].values()) == [1] * 200
