"""Sliding-window limits (fake clock) and the limits as seen over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from amr_async.emulator import EmulatorConfig, Limits, RunningEmulator
from amr_async.emulator.limits import Admission, Refusal, RouteLimits, SlidingWindow

StartEmulator = Callable[..., Awaitable[RunningEmulator]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_slides() -> None:
    clock = FakeClock()
    w = SlidingWindow(3, clock)
    for _ in range(3):
        assert w.wait_for(1) == 0.0
        w.charge(1)
        clock.now += 10
    assert w.remaining() == 0
    # The first charge (at t=1000) leaves the window at t=1060; now is 1030.
    assert w.wait_for(1) == pytest.approx(30.0)
    assert w.reset_s() == pytest.approx(50.0)  # the newest (t=1020) expires at 1080
    clock.now = 1060.0
    assert w.remaining() == 1
    assert w.wait_for(1) == 0.0
    clock.now = 1081.0
    assert w.remaining() == 3
    assert w.reset_s() == 0.0


def test_window_refuses_what_can_never_fit() -> None:
    w = SlidingWindow(10, FakeClock())
    assert w.wait_for(11) is None


def test_settle_corrects_a_reservation() -> None:
    clock = FakeClock()
    w = SlidingWindow(1000, clock)
    entry = w.charge(800)
    assert w.remaining() == 200
    w.settle(entry, 100)
    assert w.remaining() == 900
    clock.now += 61
    w.settle(entry, 500)  # gone from the window: no effect
    assert w.remaining() == 1000


def _route(clock: FakeClock, **kw: int | None) -> RouteLimits:
    args: dict[str, int | None] = dict(
        rpm=None, tpm=None, itpm=None, otpm=None, max_concurrency=None
    )
    args.update(kw)
    return RouteLimits(clock=clock, **args)  # type: ignore[arg-type]


def test_anthropic_output_reserved_at_max_tokens() -> None:
    clock = FakeClock()
    route = _route(clock, otpm=1000)
    first = route.admit({"requests": 1, "output_tokens": 600})
    assert isinstance(first, Admission)
    refused = route.admit({"requests": 1, "output_tokens": 600})
    assert isinstance(refused, Refusal)
    assert refused.limit_name == "output_tokens"
    route.finish(first, output_tokens=50)  # the answer used far less than max_tokens
    assert isinstance(route.admit({"requests": 1, "output_tokens": 600}), Admission)


def test_refusal_charges_nothing() -> None:
    clock = FakeClock()
    route = _route(clock, rpm=5, tpm=100)
    assert isinstance(route.admit({"requests": 1, "tokens": 200}), Refusal)
    assert route.requests is not None
    assert route.requests.used() == 0


def test_concurrency_gate() -> None:
    route = _route(FakeClock(), max_concurrency=2)
    a = route.admit({})
    b = route.admit({})
    assert isinstance(a, Admission)
    assert isinstance(b, Admission)
    c = route.admit({})
    assert isinstance(c, Refusal)
    assert c.limit_name == "concurrency"
    route.finish(a, None)
    assert isinstance(route.admit({}), Admission)


async def _post(session: aiohttp.ClientSession, url: str, n: int) -> list[aiohttp.ClientResponse]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    out = []
    for _ in range(n):
        async with session.post(url, json=body) as resp:
            await resp.read()
            out.append(resp)
    return out


async def test_burst_over_rpm_gets_429s_with_retry_after(start_emulator: StartEmulator) -> None:
    running = await start_emulator(limits=Limits(rpm=5))
    async with aiohttp.ClientSession() as s:
        responses = await _post(s, running.openai_base_url + "/chat/completions", 8)
    statuses = [r.status for r in responses]
    assert statuses == [200] * 5 + [429] * 3
    for r in responses[5:]:
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses[:5]] == [
        "4",
        "3",
        "2",
        "1",
        "0",
    ]
    snap = running.emulator.counters.snapshot()
    assert snap["rate_limited"] == 3
    assert snap["requests"]["/v1/chat/completions"] == {"200": 5, "429": 3}


async def test_under_the_limit_no_429(start_emulator: StartEmulator) -> None:
    running = await start_emulator(limits=Limits(rpm=100, tpm=100_000))
    async with aiohttp.ClientSession() as s:
        responses = await _post(s, running.openai_base_url + "/chat/completions", 20)
    assert {r.status for r in responses} == {200}
    assert running.emulator.counters.rate_limited == 0


async def test_tpm_counts_prompt_plus_max_tokens(start_emulator: StartEmulator) -> None:
    running = await start_emulator(limits=Limits(tpm=100))
    url = running.openai_base_url + "/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as first:
            assert first.status == 200
            # prompt "hi" = 1 token + 4 per message, plus 60 reserved
            assert first.headers["x-ratelimit-remaining-tokens"] == str(100 - 65)
        async with s.post(url, json=body) as second:
            assert second.status == 429
            err = await second.json()
    assert err["error"]["type"] == "tokens"
    assert err["error"]["code"] == "rate_limit_exceeded"


async def test_concurrency_limit_over_http(start_emulator: StartEmulator) -> None:
    from amr_async.emulator import LatencyModel

    running = await start_emulator(
        EmulatorConfig(limits=Limits(max_concurrency=2), latency=LatencyModel(base_s=2.0))
    )
    url = running.anthropic_base_url + "/v1/messages"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "k"}

    async def one() -> int:
        async with s.post(url, json=body, headers=headers) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(one() for _ in range(5)))
    assert sorted(statuses) == [200, 200, 429, 429, 429]
