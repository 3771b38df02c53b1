"""Header parsing: Go-style durations, RFC 3339 instants, retry hints (table-driven)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from amr_async.emulator.openai_protocol import go_duration
from amr_async.teacher.headers import (
    parse_anthropic_rate_limits,
    parse_duration,
    parse_openai_rate_limits,
    parse_retry_after,
    parse_rfc3339_delay,
)

NOW = datetime(2024, 10, 4, 18, 40, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("9ms", 0.009),
        ("1h2m3.5s", 3723.5),
        ("20us", 20e-6),
        ("20µs", 20e-6),
        ("120ns", 120e-9),
        ("0s", 0.0),
        ("17", 17.0),
        ("2.25", 2.25),
        (" 3s ", 3.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "5x", "s", "1s2", "m5s", "-"])
def test_bad_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2024-10-04T18:41:03Z", 63.0),
        ("2024-10-04T18:41:03.500Z", 63.5),
        ("2024-10-04T20:41:03+02:00", 63.0),
        ("2024-10-04T18:39:00Z", 0.0),  # already passed
    ],
)
def test_rfc3339(text: str, seconds: float) -> None:
    assert parse_rfc3339_delay(text, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "tomorrow", "2024-10-04T18:41:03"])
def test_bad_rfc3339_is_none(text: str | None) -> None:
    assert parse_rfc3339_delay(text, NOW) is None


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after-ms": "junk", "retry-after": "2"}, 2.0),
        ({"Retry-After": "Fri, 04 Oct 2024 18:40:30 GMT"}, 30.0),
        ({"retry-after": "whenever"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    got = parse_retry_after(CIMultiDict(headers), NOW)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_openai_rate_limit_headers() -> None:
    headers = CIMultiDict(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        }
    )
    rl = parse_openai_rate_limits(headers)
    assert (rl.limit_requests, rl.remaining_requests) == (500, 499)
    assert rl.reset_requests_s == pytest.approx(0.12)
    assert (rl.limit_tokens, rl.remaining_tokens, rl.reset_tokens_s) == (30000, 29000, 2.0)
    assert rl.limit_input_tokens is None


def test_openai_partial_and_garbled_headers() -> None:
    rl = parse_openai_rate_limits(
        CIMultiDict({"x-ratelimit-limit-requests": "many", "x-ratelimit-reset-requests": "?"})
    )
    assert rl.limit_requests is None
    assert rl.reset_requests_s is None
    assert parse_openai_rate_limits(CIMultiDict()).limit_requests is None


def test_anthropic_rate_limit_headers() -> None:
    p = "anthropic-ratelimit-"
    headers = CIMultiDict(
        {
            p + "requests-limit": "50",
            p + "requests-remaining": "49",
            p + "requests-reset": "2024-10-04T18:40:01Z",
            p + "tokens-limit": "40000",
            p + "tokens-remaining": "39000",
            p + "tokens-reset": "2024-10-04T18:40:02Z",
            p + "input-tokens-limit": "40000",
            p + "input-tokens-remaining": "39500",
            p + "input-tokens-reset": "2024-10-04T18:40:03Z",
            p + "output-tokens-limit": "8000",
            p + "output-tokens-remaining": "7000",
            p + "output-tokens-reset": "2024-10-04T18:40:04Z",
        }
    )
    rl = parse_anthropic_rate_limits(headers, NOW)
    assert (rl.limit_requests, rl.remaining_requests, rl.reset_requests_s) == (50, 49, 1.0)
    assert (rl.limit_tokens, rl.remaining_tokens, rl.reset_tokens_s) == (40000, 39000, 2.0)
    assert (rl.limit_input_tokens, rl.remaining_input_tokens) == (40000, 39500)
    assert rl.reset_input_tokens_s == 3.0
    assert (rl.limit_output_tokens, rl.remaining_output_tokens) == (8000, 7000)
    assert rl.reset_output_tokens_s == 4.0


@given(st.floats(min_value=0, max_value=7200, allow_nan=False))
def test_client_reads_the_emulators_durations(seconds: float) -> None:
    # Two independent readings of one format: the emulator writes, the client parses.
    text = go_duration(seconds)
    parsed = parse_duration(text)
    assert parsed is not None, text
    assert parsed == pytest.approx(seconds, abs=1e-3), text


@pytest.mark.parametrize(("seconds", "text"), [(360, "6m0s"), (1.5, "1.5s"), (0.009, "9ms")])
def test_emulator_writes_openai_style_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
