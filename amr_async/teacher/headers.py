"""Parsing of the providers' rate-limit and retry headers.

OpenAI sends `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` where reset values are
Go-style durations (`6m0s`, `1.5s`, `9ms`), plus `retry-after` (seconds) and `retry-after-ms`.
Anthropic sends `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
{limit,remaining,reset}` where reset values are RFC 3339 instants, plus `retry-after`.
Every parser returns None for a missing or unreadable value rather than raising: a header
is a hint, never a reason to lose a paid answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from amr_async.teacher.types import RateLimitInfo

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # micro sign
    "μs": 1e-6,  # Greek mu, as Go writes it
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration such as `6m0s`, `1.5s`, `9ms` or `1h2m3.5s`.

    A bare number is taken as seconds.

    Args:
        value: the header value.

    Returns:
        Seconds, or None if the value is missing or not a duration.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return total


def parse_rfc3339_delay(value: str | None, now: float | None = None) -> float | None:
    """Seconds from `now` until the RFC 3339 instant `value` (0 if it has passed).

    Args:
        value: the header value, e.g. `2024-10-04T18:41:03Z`.
        now: POSIX time to measure from; defaults to the wall clock.

    Returns:
        Seconds, or None if the value is missing, unreadable, or has no time zone.
    """
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    if instant.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, instant.timestamp() - now)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The server's retry hint in seconds: `retry-after-ms`, else `retry-after`.

    `retry-after` may be delta-seconds or an HTTP-date (RFC 9110).

    Args:
        headers: response headers (case-insensitive mapping).
        now: POSIX time to measure an HTTP-date from; defaults to the wall clock.

    Returns:
        Seconds, or None when the server gave no readable hint.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        instant = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if instant.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, instant.timestamp() - now)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return int(float(value))
        except ValueError:
            return None


def parse_openai_rate_limits(headers: Mapping[str, str]) -> RateLimitInfo:
    """Read OpenAI's `x-ratelimit-*` headers.

    Args:
        headers: response headers (case-insensitive mapping).

    Returns:
        What the server said; fields it did not send are None.
    """
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return _EMPTY
    get = headers.get
    return RateLimitInfo(
        limit_requests=_int(get("x-ratelimit-limit-requests")),
        remaining_requests=_int(get("x-ratelimit-remaining-requests")),
        reset_requests_s=parse_duration(get("x-ratelimit-reset-requests")),
        limit_tokens=_int(get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=parse_duration(get("x-ratelimit-reset-tokens")),
    )


def parse_anthropic_rate_limits(
    headers: Mapping[str, str], now: float | None = None
) -> RateLimitInfo:
    """Read Anthropic's `anthropic-ratelimit-*` headers.

    Args:
        headers: response headers (case-insensitive mapping).
        now: POSIX time that reset instants are measured from; defaults to the wall clock.

    Returns:
        What the server said; fields it did not send are None.
    """
    p = "anthropic-ratelimit-"
    if p + "requests-limit" not in headers and p + "tokens-limit" not in headers:
        return _EMPTY
    if now is None:
        now = time.time()
    get = headers.get
    return RateLimitInfo(
        limit_requests=_int(get(p + "requests-limit")),
        remaining_requests=_int(get(p + "requests-remaining")),
        reset_requests_s=parse_rfc3339_delay(get(p + "requests-reset"), now),
        limit_tokens=_int(get(p + "tokens-limit")),
        remaining_tokens=_int(get(p + "tokens-remaining")),
        reset_tokens_s=parse_rfc3339_delay(get(p + "tokens-reset"), now),
        limit_input_tokens=_int(get(p + "input-tokens-limit")),
        remaining_input_tokens=_int(get(p + "input-tokens-remaining")),
        reset_input_tokens_s=parse_rfc3339_delay(get(p + "input-tokens-reset"), now),
        limit_output_tokens=_int(get(p + "output-tokens-limit")),
        remaining_output_tokens=_int(get(p + "output-tokens-remaining")),
        reset_output_tokens_s=parse_rfc3339_delay(get(p + "output-tokens-reset"), now),
    )


_EMPTY = RateLimitInfo()
