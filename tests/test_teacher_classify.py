"""Status/body and exception classification, including that the mapping is total."""

from __future__ import annotations

import inspect

import aiohttp
import pytest

from amr_async.teacher import _lean
from amr_async.teacher.classify import (
    LEAN_TRANSPORT_ERRORS,
    aiohttp_transport_errors,
    classify_exception,
    classify_status,
    redact,
)
from amr_async.teacher.types import OutcomeKind as K


@pytest.mark.parametrize(
    ("status", "type_", "code", "message", "kind"),
    [
        (429, "requests", "rate_limit_exceeded", "Rate limit reached", K.RATE_LIMITED),
        (429, "rate_limit_error", "", "Number of requests exceeded", K.RATE_LIMITED),
        (429, "tokens", "rate_limit_exceeded", "Request too large for gpt-4o", K.INVALID_REQUEST),
        (
            429,
            "insufficient_quota",
            "insufficient_quota",
            "You exceeded your quota",
            K.QUOTA_EXHAUSTED,
        ),
        (
            400,
            "invalid_request_error",
            "",
            "Your credit balance is too low to access",
            K.QUOTA_EXHAUSTED,
        ),
        (402, "billing_error", "", "billing issue", K.QUOTA_EXHAUSTED),
        (401, "authentication_error", "", "invalid x-api-key", K.AUTH),
        (403, "permission_error", "", "not allowed", K.AUTH),
        (400, "invalid_request_error", "context_length_exceeded", "too long", K.INVALID_REQUEST),
        (404, "not_found_error", "", "model not found", K.INVALID_REQUEST),
        (413, "request_too_large", "", "too large", K.INVALID_REQUEST),
        (422, "", "", "", K.INVALID_REQUEST),
        (500, "api_error", "", "Internal server error", K.SERVER_ERROR),
        (502, "", "", "", K.SERVER_ERROR),
        (503, "server_error", "", "overloaded", K.OVERLOADED),
        (529, "overloaded_error", "", "Overloaded", K.OVERLOADED),
        (408, "", "", "", K.TIMEOUT),
        (409, "", "", "", K.SERVER_ERROR),
    ],
)
def test_status_table(status: int, type_: str, code: str, message: str, kind: K) -> None:
    assert classify_status(status, type_, code, message) is kind


def _all_aiohttp_errors() -> list[type[BaseException]]:
    found = []
    for _, obj in inspect.getmembers(aiohttp):
        if inspect.isclass(obj) and issubclass(obj, aiohttp.ClientError):
            found.append(obj)
    return found


def test_every_lean_transport_error_is_caught() -> None:
    classes = [
        obj
        for obj in vars(_lean).values()
        if inspect.isclass(obj) and issubclass(obj, _lean.HttpTransportError)
    ]
    assert len(classes) == 5
    for cls in classes:
        assert issubclass(cls, LEAN_TRANSPORT_ERRORS), cls
        # The aiohttp transport catches them too (its session's errors plus these).
        assert issubclass(cls, aiohttp_transport_errors()), cls


def test_every_aiohttp_error_is_caught_and_mapped() -> None:
    classes = _all_aiohttp_errors()
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, aiohttp_transport_errors()), cls
        exc = cls.__new__(cls)  # no constructor args needed to classify by type
        assert classify_exception(exc) in K, cls


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TimeoutError(), K.TIMEOUT),
        (aiohttp.ServerTimeoutError(), K.TIMEOUT),
        (aiohttp.ServerDisconnectedError(), K.CONNECTION),
        (aiohttp.ClientPayloadError("cut"), K.CONNECTION),
        (ConnectionResetError(), K.CONNECTION),
        (aiohttp.InvalidURL("x"), K.INVALID_REQUEST),
        (_lean.InvalidURLError("x"), K.INVALID_REQUEST),
        (_lean.ResponseParseError("x"), K.MALFORMED_RESPONSE),
        (_lean.ConnectionClosedError("x"), K.CONNECTION),
        (_lean.ConnectError("x"), K.CONNECTION),
        (_lean.HttpTransportError("x"), K.CONNECTION),
    ],
)
def test_exception_table(exc: BaseException, kind: K) -> None:
    assert classify_exception(exc) is kind


def test_redact_hides_keys() -> None:
    msg = "Incorrect API key provided: sk-abc123XYZ. Key sk-proj-***abcd also bad"
    out = redact(msg, "sk-abc123XYZ")
    assert "abc123" not in out
    assert "abcd" not in out
    assert redact("plain words", "") == "plain words"
