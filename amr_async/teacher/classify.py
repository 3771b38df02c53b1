"""Mapping of HTTP statuses, error bodies and transport exceptions onto `OutcomeKind`.

The exception trees of both transports (aiohttp's and the lean one's, `_lean.py`), and what
each branch becomes (most specific first)::

    TimeoutError (incl. aiohttp.ServerTimeoutError, ConnectionTimeoutError)  -> TIMEOUT
    aiohttp.InvalidURL, lean InvalidURLError                                 -> INVALID_REQUEST
    aiohttp.ClientPayloadError (body cut by a dropped connection)            -> CONNECTION
    aiohttp.ClientResponseError, lean ResponseParseError (unparseable
        status line, headers or body framing)                                -> MALFORMED_RESPONSE
    aiohttp.ClientConnectionError, lean ConnectionClosedError, OSError
        (refused, reset, disconnected, DNS, TLS)                             -> CONNECTION
    aiohttp.ClientError, lean HttpTransportError (anything else)             -> CONNECTION

This is the only place that knows the transports' exception classes; nothing outside
teacher/ sees them.
"""

from __future__ import annotations

import re
import sys

from amr_async.teacher._lean import HttpTransportError, InvalidURLError, ResponseParseError
from amr_async.teacher.types import OutcomeKind

# What `send` catches on the lean transport: everything a network call can raise that is
# not a bug of ours.
LEAN_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    HttpTransportError,
    OSError,
    TimeoutError,
)


def aiohttp_transport_errors() -> tuple[type[BaseException], ...]:
    """What `send` catches on the aiohttp transport: aiohttp's errors and the lean ones.

    A function, not a constant, so that importing this module does not import aiohttp
    (~0.4 s of start-up the default lean transport does without).
    """
    import aiohttp

    return (aiohttp.ClientError, *LEAN_TRANSPORT_ERRORS)


def classify_exception(exc: BaseException) -> OutcomeKind:
    """The outcome kind for an exception raised while sending or reading.

    Args:
        exc: one of `LEAN_TRANSPORT_ERRORS` or `aiohttp_transport_errors()`.

    Returns:
        The matching kind (see the module docstring).
    """
    if isinstance(exc, TimeoutError):
        return OutcomeKind.TIMEOUT
    if isinstance(exc, InvalidURLError):
        return OutcomeKind.INVALID_REQUEST
    if isinstance(exc, ResponseParseError):
        return OutcomeKind.MALFORMED_RESPONSE
    # An aiohttp exception exists only if aiohttp was imported: look it up, never import it.
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        if isinstance(exc, aiohttp.InvalidURL):
            return OutcomeKind.INVALID_REQUEST
        if isinstance(exc, aiohttp.ClientPayloadError):
            return OutcomeKind.CONNECTION
        if isinstance(exc, aiohttp.ClientResponseError):
            return OutcomeKind.MALFORMED_RESPONSE
    return OutcomeKind.CONNECTION


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free description: the class name and the transport's message.

    Both transports' messages name host and port at most, never request headers.
    """
    text = str(exc).strip()
    name = type(exc).__name__
    if len(text) > 200:
        text = text[:200] + "…"
    return f"{name}: {text}" if text else name


_QUOTA_MARKERS = ("insufficient_quota", "billing", "credit balance", "quota")


def classify_status(status: int, error_type: str, error_code: str, message: str) -> OutcomeKind:
    """The outcome kind for an error response (status >= 400).

    Args:
        status: HTTP status.
        error_type: the body's `error.type` ("" if absent).
        error_code: the body's `error.code` ("" if absent; OpenAI only).
        message: the body's `error.message` ("" if absent).

    Returns:
        The matching kind. Quota and billing errors are told apart from rate limits by the
        body, since OpenAI sends both as 429 and Anthropic sends billing as 400 or 402; so is
        a 429 "Request too large" (larger than the whole per-minute limit: not retryable).
    """
    lowered = message.lower()
    is_quota = (
        error_code == "insufficient_quota"
        or error_type in ("insufficient_quota", "billing_error")
        or (status in (400, 402, 403, 429) and any(m in lowered for m in _QUOTA_MARKERS[2:]))
    )
    if status == 429:
        if is_quota:
            return OutcomeKind.QUOTA_EXHAUSTED
        # A request larger than the whole per-minute limit: no wait makes it fit.
        if "request too large" in lowered:
            return OutcomeKind.INVALID_REQUEST
        return OutcomeKind.RATE_LIMITED
    if is_quota or status == 402:
        return OutcomeKind.QUOTA_EXHAUSTED
    if status in (401, 403):
        return OutcomeKind.AUTH
    if status in (503, 529) or error_type == "overloaded_error":
        return OutcomeKind.OVERLOADED
    if status == 408:
        return OutcomeKind.TIMEOUT
    if status == 409:  # conflict on the provider's side; its SDKs retry it
        return OutcomeKind.SERVER_ERROR
    if status >= 500:
        return OutcomeKind.SERVER_ERROR
    return OutcomeKind.INVALID_REQUEST


# Key-like tokens some error messages echo back (OpenAI shows a masked key on 401).
_KEYLIKE = re.compile(r"\b(?:sk|key|anthropic)[-_][A-Za-z0-9*_\-.]{4,}")


def redact(message: str, secret: str) -> str:
    """`message` with the secret and anything shaped like an API key replaced by `***`."""
    # Real keys are long; a short test key would blank out ordinary words.
    if len(secret) >= 8 and secret in message:
        message = message.replace(secret, "***")
    return _KEYLIKE.sub("***", message)
