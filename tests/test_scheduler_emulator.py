"""The dispatcher against the emulator (a real HTTP server speaking the providers' protocols).

Each test asserts what the server saw (its counters) or the order and spacing of sends,
never how fast anything ran.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from amr_async.emulator import Bank, EmulatorConfig, FaultRates, LatencyModel, serve
from amr_async.emulator import Limits as EmuLimits
from amr_async.scheduler import BreakerConfig, Dispatcher, Endpoint, Limits, RetryPolicy
from amr_async.teacher.base import open_session
from amr_async.teacher.factory import make_client
from amr_async.teacher.types import ChatRequest, Message, Outcome, OutcomeKind, Provider
from tests.conftest import StartEmulator

MODEL = "gpt-4o-mini"


def req(i: int, max_tokens: int = 512) -> ChatRequest:
    return ChatRequest(
        model=MODEL,
        messages=(Message("user", f"Write a function number {i}."),),
        max_tokens=max_tokens,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = open_session()
    yield s
    await s.close()


class Recording:
    """Wraps a client to record when each call left and what came back."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.provider: Provider = inner.provider  # type: ignore[attr-defined]
        self.base_url: str = inner.base_url  # type: ignore[attr-defined]
        self.log: list[tuple[str, float, OutcomeKind]] = []

    async def send(self, request: ChatRequest) -> Outcome:
        t = asyncio.get_running_loop().time()
        outcome: Outcome = await self.inner.send(request)  # type: ignore[attr-defined]
        self.log.append((request.messages[0].content, t, outcome.kind))
        return outcome


async def test_limits_from_config_pace_the_sends(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(limits=EmuLimits(rpm=600, tpm=1_000_000))
    client = Recording(make_client("openai", base_url=emu.openai_base_url, session=session))
    d = Dispatcher([Endpoint(client, limits={MODEL: Limits(rpm=600, tpm=1_000_000)})])
    outcomes = await asyncio.gather(*(d.submit(req(i)) for i in range(30)))
    assert all(o.kind is OutcomeKind.OK for o in outcomes)
    assert emu.emulator.counters.rate_limited == 0
    # A token bucket of rate r (600/min × 0.98 headroom) and a burst of one second of it:
    # the k-th send cannot leave before (k - burst) / r.
    rate = 600 * 0.98 / 60
    times = sorted(t for _, t, _ in client.log)
    for k, t in enumerate(times, 1):
        assert t - times[0] >= (k - rate) / rate - 1e-3
    state = d.metrics().limiters[f"openai {emu.openai_base_url} {MODEL}"]
    assert state.dimensions["requests"].source == "configured"


async def test_limits_learned_from_headers_only(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(limits=EmuLimits(rpm=3000, tpm=500_000))
    d = Dispatcher([Endpoint(make_client("openai", base_url=emu.openai_base_url, session=session))])
    before = d.metrics()
    assert before.limiters == {}
    outcomes = await asyncio.gather(*(d.submit(req(i)) for i in range(20)))
    assert all(o.kind is OutcomeKind.OK for o in outcomes)
    dims = d.metrics().limiters[f"openai {emu.openai_base_url} {MODEL}"].dimensions
    assert dims["requests"].source == "learned"
    assert dims["requests"].limit_per_min == 3000
    assert dims["tokens"].limit_per_min == 500_000
    assert emu.emulator.counters.rate_limited == 0


async def test_anthropic_limits_learned_separately(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(limits=EmuLimits(rpm=3000, itpm=400_000, otpm=80_000))
    client = make_client("anthropic", base_url=emu.anthropic_base_url, session=session)
    d = Dispatcher([Endpoint(client)])
    request = ChatRequest(
        model="claude-3-5-haiku", messages=(Message("user", "Write add(a, b)."),), max_tokens=64
    )
    assert (await d.submit(request)).kind is OutcomeKind.OK
    dims = d.metrics().limiters[f"anthropic {emu.anthropic_base_url} claude-3-5-haiku"].dimensions
    assert dims["input_tokens"].limit_per_min == 400_000
    assert dims["output_tokens"].limit_per_min == 80_000
    assert "tokens" not in dims  # Anthropic's tokens-* headers are not a combined limit


async def test_retry_after_is_honoured(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    # Injected 429s carry retry-after: 1 (seeded: the same bodies get them every run).
    emu = await start_emulator(faults=FaultRates(rate_limit=0.3), seed=1)
    client = Recording(make_client("openai", base_url=emu.openai_base_url, session=session))
    d = Dispatcher(
        [Endpoint(client, limits={"*": Limits(rpm=10**6, tpm=10**9)})],
        retry=RetryPolicy(base_s=0.001, max_backoff_s=0.001, max_attempts=10),
    )
    outcomes = await asyncio.gather(*(d.submit(req(i)) for i in range(12)))
    assert [o.kind for o in outcomes] == [OutcomeKind.OK] * 12, client.log
    by_text: dict[str, list[tuple[float, OutcomeKind]]] = {}
    for text, t, kind in client.log:
        by_text.setdefault(text, []).append((t, kind))
    retried = 0
    for attempts in by_text.values():
        attempts.sort()
        for (t0, kind), (t1, _) in itertools.pairwise(attempts):
            assert kind is OutcomeKind.RATE_LIMITED
            assert t1 - t0 >= 1.0  # the server's retry-after, not our 1 ms backoff
            retried += 1
    assert retried > 0
    assert emu.emulator.counters.rate_limited == retried


async def test_invalid_key_stops_the_run(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(api_key="sk-right")
    client = make_client(
        "openai", base_url=emu.openai_base_url, api_key="sk-wrong", session=session
    )
    d = Dispatcher([Endpoint(client, limits={"*": Limits(rpm=10**6, tpm=10**9)})])
    kinds: list[OutcomeKind] = []

    async def record(key: int, outcome: Outcome) -> None:
        kinds.append(outcome.kind)

    items = ((i, req(i)) for i in range(10_000))
    assert await d.run_all(items, record, concurrency=50) == 10_000
    assert set(kinds) == {OutcomeKind.AUTH}
    sent = sum(emu.emulator.counters.requests["/v1/chat/completions"].values())
    assert sent <= 50  # at most what was in flight when the first 401 came back
    assert d.stopped
    assert "sk-wrong" not in repr(d.metrics())


async def test_quota_exhausted_is_not_retried(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(faults=FaultRates(insufficient_quota=1.0))
    client = make_client("openai", base_url=emu.openai_base_url, session=session)
    d = Dispatcher([Endpoint(client, limits={"*": Limits(rpm=10**6, tpm=10**9, max_in_flight=1)})])
    outcomes = [await d.submit(req(i)) for i in range(20)]
    assert {o.kind for o in outcomes} == {OutcomeKind.QUOTA_EXHAUSTED}
    assert emu.emulator.counters.requests["/v1/chat/completions"] == {"429": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_circuit_breaker_opens_probes_and_closes(
    session: aiohttp.ClientSession, emulator_bank: Bank
) -> None:
    # Nothing listens on the port at first: real connection failures open the breaker;
    # then the server comes up and the half-open probe closes it.
    port = _free_port()
    client = Recording(
        make_client("openai", base_url=f"http://127.0.0.1:{port}/v1", session=session)
    )
    d = Dispatcher(
        [Endpoint(client, limits={"*": Limits(rpm=10**6, tpm=10**9)})],
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerConfig(window=5, min_calls=5, failure_ratio=1.0, open_s=2.0),
    )
    for i in range(5):
        assert (await d.submit(req(i))).kind is OutcomeKind.CONNECTION
    key = f"openai http://127.0.0.1:{port}/v1"
    assert d.metrics().breakers[key] == "open"
    waiting = [asyncio.create_task(d.submit(req(100 + i))) for i in range(3)]
    await asyncio.sleep(0.1)
    assert len(client.log) == 5  # nothing sent into the open circuit
    async with serve(EmulatorConfig(), port=port, bank=emulator_bank) as emu:
        outcomes = await asyncio.gather(*waiting)
        assert [o.kind for o in outcomes] == [OutcomeKind.OK] * 3
        assert d.metrics().breakers[key] == "closed"
        # The probe went alone: the first call after opening preceded the others' sends.
        probe_t = client.log[5][1]
        assert all(t >= probe_t for _, t, _ in client.log[6:])
        assert sum(emu.emulator.counters.requests["/v1/chat/completions"].values()) == 3


async def test_cancellation_leaves_no_call_behind(
    start_emulator: StartEmulator, session: aiohttp.ClientSession
) -> None:
    emu = await start_emulator(latency=LatencyModel(base_s=30.0))
    client = make_client("openai", base_url=emu.openai_base_url, session=session)
    d = Dispatcher([Endpoint(client, limits={"*": Limits(rpm=10**6, tpm=10**9, max_in_flight=5)})])
    calls = [asyncio.create_task(d.submit(req(i))) for i in range(8)]
    for _ in range(200):
        await asyncio.sleep(0.01)
        if sum(emu.emulator.counters.body_hashes.values()) == 5:
            break
    assert d.metrics().in_flight == 5
    assert d.metrics().waiting == 3
    for call in calls:
        call.cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    m = d.metrics()
    assert (m.in_flight, m.waiting) == (0, 0)
    assert next(iter(m.limiters.values())).in_flight == 0
    assert sum(emu.emulator.counters.body_hashes.values()) == 5  # the waiting 3 never left


def _write_requests(path: Path, n: int) -> None:
    with path.open("wb") as fh:
        for i in range(n):
            row = {
                "id": f"q{i}",
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Write a function number {i}."}],
                "max_tokens": 512,
            }
            fh.write(orjson.dumps(row) + b"\n")


async def _run_cli(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amr_async.cli",
        "dispatch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_on_signal_finishes_in_flight_and_resumes(
    start_emulator: StartEmulator, tmp_path: Path, signum: int
) -> None:
    emu = await start_emulator(latency=LatencyModel(base_s=1.0))
    requests, outcomes = tmp_path / "requests.jsonl", tmp_path / "outcomes.jsonl"
    _write_requests(requests, 40)
    common = [str(requests), str(outcomes), "--base-url", emu.openai_base_url]
    # 600/min: about 10 calls leave per second, so a signal lands mid-run.
    proc = await _run_cli(*common, "--rpm", "600", "--tpm", "1000000", "--progress-s", "0")
    counters = emu.emulator.counters
    for _ in range(3000):
        await asyncio.sleep(0.01)
        if sum(counters.body_hashes.values()) >= 5:
            break
    proc.send_signal(signum)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, stderr.decode()
    assert b"interrupted" in stderr
    sent_before = sum(counters.body_hashes.values())
    lines = outcomes.read_bytes().splitlines()
    rows = [orjson.loads(line) for line in lines]
    # Every call that went out finished within the grace period and was written.
    assert len(rows) == sent_before < 40
    assert all(r["kind"] == "ok" for r in rows)

    proc = await _run_cli(*common, "--progress-s", "0")
    _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    ids = [orjson.loads(line)["id"] for line in outcomes.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"q{i}" for i in range(40))
    # Nothing was bought twice.
    assert set(counters.body_hashes.values()) == {1}
