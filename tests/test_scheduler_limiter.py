"""Limiter: configured limits, learning from headers, settlement, AIMD; property tests."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amr_async.scheduler import Cost, Limiter, LimiterTuning, Limits
from amr_async.teacher.types import Outcome, OutcomeKind, Provider, RateLimitInfo, Usage

TUNING = LimiterTuning(headroom=1.0, burst_s=1.0)


def ok(info: RateLimitInfo | None = None, usage: Usage | None = None) -> Outcome:
    return Outcome(
        OutcomeKind.OK, status=200, rate_limits=info or RateLimitInfo(), usage=usage or Usage()
    )


def test_configured_rpm_paces_requests() -> None:
    limiter = Limiter(Limits(rpm=600, tpm=10**9), Provider.OPENAI, TUNING, now=0.0)
    cost = Cost(10, 10)
    sent = 0
    t = 0.0
    while t < 60.0:  # greedy sender on a 1 ms fake clock
        while limiter.wait_s(cost, t) == 0.0:
            limiter.acquire(cost, t)
            limiter.release(cost, None, t)
            sent += 1
        t += 0.001
    # 10 per second for 60 s, plus the initial burst of one second.
    assert 600 <= sent <= 611


def test_in_flight_cap_is_infinite_wait_until_release() -> None:
    limiter = Limiter(Limits(max_in_flight=2, rpm=10**6, tpm=10**9), Provider.OPENAI, TUNING, 0.0)
    cost = Cost(1, 1)
    limiter.acquire(cost, 0.0)
    limiter.acquire(cost, 0.0)
    assert limiter.wait_s(cost, 0.0) == math.inf
    limiter.release(cost, None, 0.0)
    assert limiter.wait_s(cost, 0.0) == 0.0


def test_limits_learned_from_headers_only() -> None:
    limiter = Limiter(Limits(), Provider.OPENAI, TUNING, now=0.0)
    before = limiter.state(0.0).dimensions
    assert before["requests"].source == "default"
    assert before["requests"].limit_per_min == 60
    info = RateLimitInfo(
        limit_requests=6000, remaining_requests=5990, limit_tokens=10**6, remaining_tokens=10**6
    )
    limiter.observe(ok(info), 1.0)
    after = limiter.state(1.0).dimensions
    assert after["requests"].source == "learned"
    assert after["requests"].limit_per_min == 6000
    assert after["tokens"].limit_per_min == 10**6


def test_learned_limit_never_exceeds_configured_one() -> None:
    limiter = Limiter(Limits(rpm=100), Provider.OPENAI, TUNING, now=0.0)
    limiter.observe(ok(RateLimitInfo(limit_requests=6000, remaining_requests=6000)), 0.0)
    assert limiter.state(0.0).dimensions["requests"].limit_per_min == 100


def test_remaining_header_shrinks_the_level() -> None:
    limiter = Limiter(Limits(rpm=6000, tpm=10**9), Provider.OPENAI, TUNING, now=0.0)
    assert limiter.state(0.0).dimensions["requests"].level == pytest.approx(100)
    limiter.observe(ok(RateLimitInfo(limit_requests=6000, remaining_requests=3)), 0.0)
    assert limiter.state(0.0).dimensions["requests"].level == 3


def test_unadvertised_dimension_is_dropped_after_a_success() -> None:
    # An OpenAI-compatible server with no rate-limit headers: keep no default RPM forever.
    limiter = Limiter(Limits(), Provider.OPENAI, TUNING, now=0.0)
    limiter.observe(ok(), 0.0)
    assert limiter.state(0.0).dimensions == {}
    # ...but a configured one stays.
    limiter = Limiter(Limits(rpm=60), Provider.OPENAI, TUNING, now=0.0)
    limiter.observe(ok(), 0.0)
    assert set(limiter.state(0.0).dimensions) == {"requests"}


def test_anthropic_output_reserved_at_max_tokens_and_refunded() -> None:
    limiter = Limiter(
        Limits(rpm=10**6, itpm=60_000, otpm=60_000), Provider.ANTHROPIC, TUNING, now=0.0
    )
    assert set(limiter.state(0.0).dimensions) == {"requests", "input_tokens", "output_tokens"}
    cost = Cost(input_tokens=100, output_tokens=800)
    limiter.acquire(cost, 0.0)
    assert limiter.state(0.0).dimensions["output_tokens"].level == pytest.approx(200)
    limiter.release(cost, Usage(input_tokens=120, output_tokens=50), 0.0)
    dims = limiter.state(0.0).dimensions
    assert dims["output_tokens"].level == pytest.approx(950)  # 750 refunded
    assert dims["input_tokens"].level == pytest.approx(880)  # 20 more charged


def test_openai_output_is_not_refunded() -> None:
    # OpenAI charges prompt + max_tokens on admission; only the input is corrected.
    limiter = Limiter(Limits(rpm=10**6, tpm=60_000), Provider.OPENAI, TUNING, now=0.0)
    cost = Cost(input_tokens=100, output_tokens=800)
    limiter.acquire(cost, 0.0)
    limiter.release(cost, Usage(input_tokens=100, output_tokens=5), 0.0)
    assert limiter.state(0.0).dimensions["tokens"].level == pytest.approx(100)


def test_unsent_request_is_fully_refunded() -> None:
    limiter = Limiter(Limits(rpm=60, tpm=60_000), Provider.OPENAI, TUNING, now=0.0)
    cost = Cost(input_tokens=100, output_tokens=800)
    limiter.acquire(cost, 0.0)
    limiter.release(cost, None, 0.0, sent=False)
    dims = limiter.state(0.0).dimensions
    assert dims["requests"].level == 1
    assert dims["tokens"].level == 1000
    assert limiter.in_flight == 0


def test_aimd_on_429_burst_scales_only_this_limiter() -> None:
    a = Limiter(Limits(rpm=6000, tpm=10**9, max_in_flight=100), Provider.OPENAI, TUNING, 0.0)
    b = Limiter(Limits(rpm=6000, tpm=10**9, max_in_flight=100), Provider.OPENAI, TUNING, 0.0)
    limited = Outcome(OutcomeKind.RATE_LIMITED, status=429)
    for t in (1.0, 1.1, 1.2):  # one burst
        a.observe(limited, t)
    state = a.state(1.2)
    assert state.aimd_factor == pytest.approx(0.7)
    assert state.dimensions["requests"].current_per_min == pytest.approx(4200)
    assert a.max_in_flight == 70
    assert b.state(1.2).aimd_factor == 1.0  # no global freeze
    for t in range(2, 40):
        a.observe(ok(), float(t))
    assert a.state(40.0).aimd_factor == 1.0  # grown back to the advertised limit


def _max_in_window(times: list[float], amounts: list[float], window: float) -> float:
    best = 0.0
    total = 0.0
    q: deque[tuple[float, float]] = deque()
    for t, amount in zip(times, amounts, strict=True):
        q.append((t, amount))
        total += amount
        while q and q[0][0] <= t - window:
            total -= q.popleft()[1]
        best = max(best, total)
    return best


@settings(max_examples=150, deadline=None)
@given(
    rpm=st.integers(min_value=1, max_value=20_000),
    tpm=st.integers(min_value=2_000, max_value=2_000_000),
    max_in_flight=st.integers(min_value=1, max_value=500),
    headroom=st.floats(min_value=0.5, max_value=1.0),
    arrivals=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.5),  # gap to next arrival
            st.integers(min_value=1, max_value=1_000),  # prompt tokens
            st.floats(min_value=0.0, max_value=3.0),  # latency
            st.integers(min_value=0, max_value=10),  # header says remaining (rarely)
        ),
        min_size=1,
        max_size=300,
    ),
)
def test_no_schedule_exceeds_the_limits(
    rpm: int,
    tpm: int,
    max_in_flight: int,
    headroom: float,
    arrivals: list[tuple[float, int, float, int]],
) -> None:
    """Whatever arrives when, a greedy sender never exceeds RPM/TPM over any sliding
    minute, nor the in-flight cap, and its rate never exceeds capacity + rate × time."""
    tuning = LimiterTuning(headroom=headroom, burst_s=1.0)
    limiter = Limiter(
        Limits(rpm=rpm, tpm=tpm, max_in_flight=max_in_flight), Provider.OPENAI, tuning, now=0.0
    )
    pending: deque[tuple[int, int, float, int]] = deque()
    done: list[tuple[float, Cost, int]] = []  # completion time, cost, remaining header
    sent_at: list[float] = []
    tokens: list[float] = []
    t = 0.0
    max_cost = max(1, int(tpm * headroom / 60.0))  # costs within one burst
    for gap, prompt, latency, remaining in arrivals:
        pending.append((min(prompt, max_cost), 0, latency, remaining))
        t_next = t + gap
        while True:
            # Completions up to now free in-flight slots; some report a low remaining.
            done.sort(key=lambda d: d[0])
            while done and done[0][0] <= t:
                _, cost, rem = done.pop(0)
                limiter.release(cost, None, t)
                if rem <= 2:
                    limiter.observe(ok(RateLimitInfo(remaining_requests=rem)), t)
            while pending:
                prompt_tokens, _, lat, rem = pending[0]
                cost = Cost(prompt_tokens, 0)
                if limiter.wait_s(cost, t) > 0:
                    break
                pending.popleft()
                limiter.acquire(cost, t)
                assert limiter.in_flight <= max_in_flight
                sent_at.append(t)
                tokens.append(cost.tokens)
                done.append((t + lat, cost, rem))
            if t >= t_next:
                break
            t = min(t + 0.05, t_next)
    ones = [1.0] * len(sent_at)
    assert _max_in_window(sent_at, ones, 60.0) <= rpm + 1e-6
    assert _max_in_window(sent_at, tokens, 60.0) <= tpm + 1e-6
    r = rpm * headroom / 60.0
    cap = max(r * 1.0, 1.0)
    for window in (1.0, 5.0):
        assert _max_in_window(sent_at, ones, window) <= cap + r * window + 1e-6
