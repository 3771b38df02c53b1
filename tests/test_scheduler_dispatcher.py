"""Dispatcher behaviour against a scripted client double (the seam below the wire).

The emulator-backed integration tests live in test_scheduler_emulator.py; these pin the
decisions (retry or not, who goes first, what a cancellation leaves behind) exactly.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

import pytest

from amr_async.core import count_tokens
from amr_async.scheduler import (
    Abandoned,
    BreakerConfig,
    Dispatcher,
    DispatcherClosed,
    Endpoint,
    Limits,
    RetryPolicy,
    UnknownEndpoint,
)
from amr_async.teacher.types import ChatRequest, Message, Outcome, OutcomeKind, Provider, Usage

FAST = RetryPolicy(base_s=0.001, max_backoff_s=0.002, deadline_s=30.0)
OPEN = Limits(rpm=10**7, tpm=10**10, max_in_flight=1000)


def req(text: str = "hi", model: str = "gpt-4o-mini", max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message("user", text),), max_tokens=max_tokens)


def ok_outcome() -> Outcome:
    return Outcome(OutcomeKind.OK, text="fine", status=200, usage=Usage(10, 5))


class ScriptedClient:
    """Answers each call with `script(request, n)`, n counting calls from 0.

    `gate`, when set, holds every call until it is set (to keep calls in flight).
    """

    def __init__(
        self,
        script: Callable[[ChatRequest, int], Outcome] | None = None,
        provider: Provider = Provider.OPENAI,
    ) -> None:
        self.provider = provider
        self.base_url = "http://fake"
        self.script = script or (lambda r, n: ok_outcome())
        self.sent: list[ChatRequest] = []
        self.times: list[float] = []
        self.gate: asyncio.Event | None = None
        self.in_send = 0

    async def send(self, request: ChatRequest) -> Outcome:
        n = len(self.sent)
        self.sent.append(request)
        self.times.append(asyncio.get_running_loop().time())
        self.in_send += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            return self.script(request, n)
        finally:
            self.in_send -= 1


def dispatcher(client: ScriptedClient, limits: Limits = OPEN, **kw: object) -> Dispatcher:
    kw.setdefault("retry", FAST)
    return Dispatcher(
        [Endpoint(client, limits={"*": limits})],
        rng=random.Random(0),
        **kw,  # type: ignore[arg-type]
    )


async def test_submit_returns_ok_and_counts() -> None:
    client = ScriptedClient()
    d = dispatcher(client)
    outcome = await d.submit(req())
    assert outcome.kind is OutcomeKind.OK
    m = d.metrics()
    assert (m.submitted, m.finished, m.sent, m.ok) == (1, 1, 1, 1)
    assert (m.tokens_in, m.tokens_out) == (10, 5)
    assert m.cost_usd == pytest.approx((10 * 0.15 + 5 * 0.60) / 1e6)
    assert m.in_flight == 0


async def test_retryable_failures_are_retried_until_success() -> None:
    kinds = [OutcomeKind.SERVER_ERROR, OutcomeKind.CONNECTION, OutcomeKind.MALFORMED_RESPONSE]

    def script(r: ChatRequest, n: int) -> Outcome:
        return Outcome(kinds[n], status=500) if n < len(kinds) else ok_outcome()

    client = ScriptedClient(script)
    d = dispatcher(client)
    assert (await d.submit(req())).kind is OutcomeKind.OK
    assert len(client.sent) == 4
    m = d.metrics()
    assert m.retries_by_kind == {"server_error": 1, "connection": 1, "malformed_response": 1}
    assert m.sent == 4


async def test_max_attempts_bounds_retries() -> None:
    client = ScriptedClient(lambda r, n: Outcome(OutcomeKind.OVERLOADED, status=529))
    d = dispatcher(client, retry=RetryPolicy(max_attempts=3, base_s=0.001))
    outcome = await d.submit(req())
    assert outcome.kind is OutcomeKind.OVERLOADED  # a classified verdict, not an exception
    assert len(client.sent) == 3


async def test_retry_after_is_honoured() -> None:
    def script(r: ChatRequest, n: int) -> Outcome:
        if n == 0:
            return Outcome(OutcomeKind.RATE_LIMITED, status=429, retry_after_s=0.3)
        return ok_outcome()

    client = ScriptedClient(script)
    d = dispatcher(client)
    assert (await d.submit(req())).kind is OutcomeKind.OK
    assert client.times[1] - client.times[0] >= 0.3


async def test_retry_after_past_the_deadline_ends_the_item_now() -> None:
    client = ScriptedClient(
        lambda r, n: Outcome(OutcomeKind.RATE_LIMITED, status=429, retry_after_s=3600.0)
    )
    d = dispatcher(client, retry=RetryPolicy(deadline_s=60.0))
    outcome = await asyncio.wait_for(d.submit(req()), 5.0)
    assert outcome.kind is OutcomeKind.RATE_LIMITED
    assert outcome.retry_after_s == 3600.0
    assert len(client.sent) == 1


async def test_invalid_key_stops_the_endpoint_after_one_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = ScriptedClient(
        lambda r, n: Outcome(OutcomeKind.AUTH, status=401, error="invalid api key")
    )
    d = dispatcher(client, limits=Limits(rpm=10**7, tpm=10**10, max_in_flight=1))
    with caplog.at_level(logging.ERROR, logger="amr_async.scheduler"):
        outcomes = await asyncio.gather(*(d.submit(req(str(i))) for i in range(2000)))
    assert all(o.kind is OutcomeKind.AUTH for o in outcomes)
    assert len(client.sent) == 1  # one call reached the server; the rest never left
    assert sum(o.status is None for o in outcomes) == 1999
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "auth" in errors[0].getMessage()
    assert "invalid api key" in errors[0].getMessage()
    assert d.stopped
    assert "auth" in d.metrics().stopped[f"openai {client.base_url}"]


async def test_quota_exhausted_and_invalid_request_are_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = ScriptedClient(
        lambda r, n: Outcome(OutcomeKind.INVALID_REQUEST, status=400, error="context length")
    )
    d = dispatcher(client)
    with caplog.at_level(logging.ERROR, logger="amr_async.scheduler"):
        for i in range(5):
            assert (await d.submit(req(str(i)))).kind is OutcomeKind.INVALID_REQUEST
    assert len(client.sent) == 5  # each sent once: a bad request does not stop the run
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    quota = ScriptedClient(lambda r, n: Outcome(OutcomeKind.QUOTA_EXHAUSTED, status=429))
    d = dispatcher(quota)
    for i in range(5):
        assert (await d.submit(req(str(i)))).kind is OutcomeKind.QUOTA_EXHAUSTED
    assert len(quota.sent) == 1


async def test_truncated_is_kept_not_rebought() -> None:
    client = ScriptedClient(
        lambda r, n: Outcome(OutcomeKind.TRUNCATED, status=200, finish_reason="length")
    )
    d = dispatcher(client)
    assert (await d.submit(req())).kind is OutcomeKind.TRUNCATED
    assert len(client.sent) == 1
    assert d.metrics().truncated == 1


async def test_global_retry_budget_caps_retries() -> None:
    client = ScriptedClient(lambda r, n: Outcome(OutcomeKind.SERVER_ERROR, status=500))
    d = dispatcher(
        client,
        retry=RetryPolicy(max_attempts=10, base_s=0.001, budget_ratio=0.0, budget_min=3),
        breaker=BreakerConfig(window=100, min_calls=100),
    )
    outcomes = await asyncio.gather(*(d.submit(req(str(i))) for i in range(10)))
    assert all(o.kind is OutcomeKind.SERVER_ERROR for o in outcomes)
    assert len(client.sent) == 10 + 3
    assert d.metrics().retry_budget_denied >= 7


async def test_later_stages_go_first() -> None:
    client = ScriptedClient()
    client.gate = asyncio.Event()
    d = dispatcher(client, limits=Limits(rpm=10**7, tpm=10**10, max_in_flight=1))
    blocker = asyncio.create_task(d.submit(req("first")))
    await asyncio.sleep(0.01)
    tasks = [
        asyncio.create_task(d.submit(req(f"p{p}-{i}"), priority=p))
        for i, p in enumerate([0, 2, 1, 2, 0, 1])
    ]
    await asyncio.sleep(0.01)
    assert d.metrics().waiting == 6
    client.gate.set()
    await asyncio.gather(blocker, *tasks)
    order = [r.messages[0].content.split("-")[0] for r in client.sent[1:]]
    assert order == ["p2", "p2", "p1", "p1", "p0", "p0"]


async def test_cancelling_a_waiting_call_sends_nothing_and_frees_its_place() -> None:
    client = ScriptedClient()
    client.gate = asyncio.Event()
    d = dispatcher(client, limits=Limits(rpm=10**7, tpm=10**10, max_in_flight=1))
    first = asyncio.create_task(d.submit(req("a")))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(d.submit(req("b")))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    client.gate.set()
    await first
    assert [r.messages[0].content for r in client.sent] == ["a"]
    assert (await d.submit(req("c"))).kind is OutcomeKind.OK
    state = next(iter(d.metrics().limiters.values()))
    assert state.in_flight == 0
    assert d.metrics().waiting == 0


async def test_cancelling_an_in_flight_call_leaves_state_whole() -> None:
    client = ScriptedClient()
    client.gate = asyncio.Event()
    d = dispatcher(client, limits=Limits(rpm=10**7, tpm=10**10, max_in_flight=2))
    calls = [asyncio.create_task(d.submit(req(str(i)))) for i in range(2)]
    await asyncio.sleep(0.01)
    assert client.in_send == 2
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    m = d.metrics()
    assert m.in_flight == 0
    assert next(iter(m.limiters.values())).in_flight == 0
    client.gate.set()
    assert (await d.submit(req("after"))).kind is OutcomeKind.OK


async def test_per_request_timeout_is_a_retryable_timeout() -> None:
    client = ScriptedClient()
    client.gate = asyncio.Event()  # never set: every call hangs
    d = dispatcher(client, retry=RetryPolicy(max_attempts=2, base_s=0.001), request_timeout_s=0.05)
    outcome = await d.submit(req())
    assert outcome.kind is OutcomeKind.TIMEOUT
    assert len(client.sent) == 2
    assert d.metrics().in_flight == 0


async def test_one_shared_timer_times_out_every_hung_call() -> None:
    client = ScriptedClient()
    client.gate = asyncio.Event()  # hangs until set
    d = dispatcher(client, retry=RetryPolicy(max_attempts=1), request_timeout_s=0.05)
    first = [asyncio.create_task(d.submit(req(str(i)))) for i in range(5)]
    await asyncio.sleep(0.02)
    later = [asyncio.create_task(d.submit(req(f"later {i}"))) for i in range(3)]
    outcomes = await asyncio.gather(*first, *later)
    assert [o.kind for o in outcomes] == [OutcomeKind.TIMEOUT] * 8
    assert d.metrics().in_flight == 0
    client.gate.set()  # answers come back again: nothing left cancelled or armed wrongly
    assert (await d.submit(req("after"))).kind is OutcomeKind.OK
    assert client.in_send == 0


async def test_shutdown_finishes_in_flight_and_releases_waiters() -> None:
    client = ScriptedClient()
    client.gate = asyncio.Event()
    d = dispatcher(client, limits=Limits(rpm=10**7, tpm=10**10, max_in_flight=2))
    calls = [asyncio.create_task(d.submit(req(str(i)))) for i in range(5)]
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(d.aclose(grace_s=30.0))
    await asyncio.sleep(0.01)
    client.gate.set()  # in-flight calls finish within the grace period
    await closing
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["Outcome"] * 2 + ["DispatcherClosed"] * 3
    assert len(client.sent) == 2
    with pytest.raises(DispatcherClosed):
        await d.submit(req())


async def test_shutdown_abandons_in_flight_after_the_grace_period() -> None:
    client = ScriptedClient()
    client.gate = asyncio.Event()
    d = dispatcher(client)
    call = asyncio.create_task(d.submit(req()))
    await asyncio.sleep(0.01)
    await d.aclose(grace_s=0.01)
    with pytest.raises(Abandoned):
        await call
    assert d.metrics().in_flight == 0


async def test_breaker_opens_on_sustained_failures_then_probes_and_closes() -> None:
    healthy = asyncio.Event()

    def script(r: ChatRequest, n: int) -> Outcome:
        return ok_outcome() if healthy.is_set() else Outcome(OutcomeKind.SERVER_ERROR, status=500)

    client = ScriptedClient(script)
    d = dispatcher(
        client,
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerConfig(window=4, min_calls=4, failure_ratio=1.0, open_s=0.2),
    )
    for i in range(4):
        await d.submit(req(str(i)))
    assert d.metrics().breakers == {"openai http://fake": "open"}
    waiting = asyncio.create_task(d.submit(req("while open")))
    await asyncio.sleep(0.05)
    assert len(client.sent) == 4  # nothing goes into an open circuit
    healthy.set()
    assert (await waiting).kind is OutcomeKind.OK  # the half-open probe
    assert d.metrics().breakers == {"openai http://fake": "closed"}


async def test_default_counter_reserves_exact_prompt_tokens() -> None:
    # Emoji: about 4 characters per token would say 250; o200k_base counts otherwise.
    text = "\U0001f600" * 1000
    exact = count_tokens([text], "o200k_base")[0]
    assert abs(exact - 250) > 20
    client = ScriptedClient()
    client.gate = asyncio.Event()
    # 6,000 tokens/min refills 98 per second: the reservation shows in the bucket's level.
    d = dispatcher(client, Limits(rpm=10**6, tpm=6000, max_in_flight=10))
    call = asyncio.create_task(d.submit(req(text, max_tokens=1)))
    for _ in range(100):  # a few loop turns until the call is on the wire
        if client.sent:
            break
        await asyncio.sleep(0)
    assert client.sent
    (limiter,) = d.metrics().limiters.values()
    capacity = 6000 * 0.98 / 60
    level = limiter.dimensions["tokens"].level
    assert level == pytest.approx(capacity - (exact + 4 + 1), abs=10.0)
    client.gate.set()
    assert (await call).kind is OutcomeKind.OK


class CountingCounter:
    """A token counter that records what it was asked to count."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def count(self, texts: Sequence[str]) -> list[int]:
        self.asked.extend(texts)
        return [len(t) for t in texts]


async def test_prompt_tokens_are_counted_only_while_a_token_limit_is_live() -> None:
    # Nobody configured a token limit and the answers advertise none (vLLM, llama.cpp):
    # the first answer drops the dimension, and later prompts are not counted at all.
    counter = CountingCounter()
    d = dispatcher(ScriptedClient(), Limits(rpm=10**6), counter=counter)
    await d.submit(req("first"))
    await d.submit(req("second"))
    assert counter.asked == ["first"]
    # A configured token limit is never dropped: every prompt is counted.
    counter = CountingCounter()
    d = dispatcher(ScriptedClient(), Limits(rpm=10**6, tpm=10**9), counter=counter)
    await d.submit(req("first"))
    await d.submit(req("second"))
    assert counter.asked == ["first", "second"]


async def test_final_outcomes_counted_by_attempts() -> None:
    def script(r: ChatRequest, n: int) -> Outcome:
        # "flaky" fails twice, then answers; "auth" is refused without a retry.
        if r.messages[0].content == "flaky" and n < 2:
            return Outcome(OutcomeKind.SERVER_ERROR, status=500)
        if r.messages[0].content == "bad":
            return Outcome(OutcomeKind.INVALID_REQUEST, status=400)
        return ok_outcome()

    client = ScriptedClient(script)
    d = dispatcher(client)
    assert (await d.submit(req("flaky"))).kind is OutcomeKind.OK
    assert (await d.submit(req("fine"))).kind is OutcomeKind.OK
    assert (await d.submit(req("bad"))).kind is OutcomeKind.INVALID_REQUEST
    m = d.metrics()
    assert m.final_by_attempts == {1: 2, 3: 1}
    assert m.sent == sum(n * k for n, k in m.final_by_attempts.items())


async def test_run_all_pulls_inputs_only_as_workers_free() -> None:
    client = ScriptedClient()
    d = dispatcher(client)
    pulled = 0
    finished = 0
    max_open = 0

    def rows():  # type: ignore[no-untyped-def]
        nonlocal pulled, max_open
        for i in range(200):
            pulled += 1
            max_open = max(max_open, pulled - finished)
            yield i, req(str(i))

    async def on_outcome(key: int, outcome: Outcome) -> None:
        nonlocal finished
        finished += 1

    assert await d.run_all(rows(), on_outcome, concurrency=7) == 200
    assert finished == 200
    assert max_open <= 7


async def test_endpoint_selection() -> None:
    a, b = ScriptedClient(), ScriptedClient(provider=Provider.ANTHROPIC)
    d = Dispatcher([Endpoint(a, name="a"), Endpoint(b, name="b")])
    with pytest.raises(UnknownEndpoint):
        await d.submit(req())
    with pytest.raises(UnknownEndpoint):
        await d.submit(req(), endpoint="c")
    await d.submit(req(model="claude-3-5-haiku"), endpoint="b")
    assert (len(a.sent), len(b.sent)) == (0, 1)
