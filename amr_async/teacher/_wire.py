"""What both clients share: the HTTP round trip (session lifecycle, timing, transport
errors) and the reading of a reply into an `Outcome` (success, unreadable body, error body).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from yarl import URL

from amr_async.teacher._lean import LeanPool, Target
from amr_async.teacher.base import ClientConfig, Secret, open_session
from amr_async.teacher.classify import (
    LEAN_TRANSPORT_ERRORS,
    aiohttp_transport_errors,
    classify_exception,
    classify_status,
    describe_exception,
    redact,
)
from amr_async.teacher.headers import parse_retry_after
from amr_async.teacher.types import (
    ChatRequest,
    Outcome,
    OutcomeKind,
    Provider,
    RateLimitInfo,
    Usage,
)

if TYPE_CHECKING:
    import aiohttp  # imported at run time only by the aiohttp transport (see base.py)

# What reading a success body may raise when a field is missing or of the wrong type.
_UNREADABLE = (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError)


@dataclass(slots=True, frozen=True)
class Answer:
    """The protocol-specific fields of a success body.

    Attributes:
        text: the answer's text.
        finish_reason: as the provider wrote it.
        truncated: cut at max_tokens (`finish_reason` says "length" or "max_tokens").
        usage: reported tokens.
    """

    text: str
    finish_reason: str | None
    truncated: bool
    usage: Usage


@dataclass(slots=True, frozen=True)
class ErrorBody:
    """The fields of an error body ("" where absent)."""

    type: str = ""
    code: str = ""
    message: str = ""


class WireClient:
    """Posts one JSON body per request and turns the reply into an `Outcome`.

    Subclasses provide the protocol: `_encode` (request to body bytes), `_rate_limits`
    (headers), `_answer` (decoded success body) and `_error_body` (decoded error body);
    `_decode` here turns any reply into an `Outcome`. Safe to share between tasks of one
    event loop; not between loops.
    """

    provider: Provider
    base_url: str
    request_id_header: str  # the response header carrying the provider's request id
    answer_name: str  # what a success body is called, for the malformed-response error

    def __init__(
        self,
        *,
        base_url: str,
        path: str,
        api_key: Secret,
        session: aiohttp.ClientSession | None,
        config: ClientConfig | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Parsed once: aiohttp would otherwise parse a str URL on every request.
        self._url = URL(self.base_url + path)
        self._api_key = api_key
        self._config = config or ClientConfig()
        self._session = session
        self._owns_session = session is None
        # Without a given session, the configured transport; the lean pool and its prepared
        # target are made on first use, when the subclass has set its headers.
        self._lean = session is None and self._config.transport == "lean"
        self._pool: LeanPool | None = None
        self._target: Target | None = None
        self._closed = False
        self._headers: dict[str, str] = {}
        # What the aiohttp transport catches; looked up with its session (importing aiohttp).
        self._aiohttp_errors: tuple[type[BaseException], ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        session = self._session
        if session is None:
            # Created on first use so that it binds to the loop that uses it.
            session = self._session = open_session(self._config)
        if not self._aiohttp_errors:
            self._aiohttp_errors = aiohttp_transport_errors()
        return session

    def _ensure_pool(self) -> tuple[LeanPool, Target]:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._pool is None:
            self._pool = LeanPool(self._config)
        if self._target is None:
            self._target = self._pool.target(self._url, self._headers)
        return self._pool, self._target

    def _encode(self, request: ChatRequest) -> bytes:
        raise NotImplementedError

    def _rate_limits(self, headers: Mapping[str, str]) -> RateLimitInfo:
        raise NotImplementedError

    def _answer(self, data: Any) -> Answer:
        """Read a decoded success body; raises one of `_UNREADABLE` when it does not fit."""
        raise NotImplementedError

    def _error_body(self, data: Any) -> ErrorBody:
        """Read a decoded error body (any JSON value); never raises."""
        raise NotImplementedError

    def _decode(
        self, status: int, headers: Mapping[str, str], raw: bytes, latency_s: float
    ) -> Outcome:
        """Turn one reply into an `Outcome`: success, truncated, malformed, or classified error."""
        rate_limits = self._rate_limits(headers)
        request_id = headers.get(self.request_id_header)
        if status >= 400:
            return self._error_outcome(status, headers, raw, latency_s, rate_limits, request_id)
        try:
            answer = self._answer(orjson.loads(raw))
        except _UNREADABLE as exc:
            return Outcome(
                kind=OutcomeKind.MALFORMED_RESPONSE,
                status=status,
                rate_limits=rate_limits,
                request_id=request_id,
                error=f"unreadable {self.answer_name}: {type(exc).__name__}",
                latency_s=latency_s,
            )
        return Outcome(
            kind=OutcomeKind.TRUNCATED if answer.truncated else OutcomeKind.OK,
            text=answer.text,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            rate_limits=rate_limits,
            status=status,
            request_id=request_id,
            latency_s=latency_s,
        )

    def _error_outcome(
        self,
        status: int,
        headers: Mapping[str, str],
        raw: bytes,
        latency_s: float,
        rate_limits: RateLimitInfo,
        request_id: str | None,
    ) -> Outcome:
        try:
            err = self._error_body(orjson.loads(raw))
        except orjson.JSONDecodeError:
            err = ErrorBody()
        kind = classify_status(status, err.type, err.code, err.message)
        message = redact(err.message, self._api_key.reveal())
        # llama.cpp and vLLM put the HTTP status in `code`; the type says more.
        code = "" if err.code.isdigit() else err.code
        detail = code or err.type or "no error body"
        return Outcome(
            kind=kind,
            status=status,
            rate_limits=rate_limits,
            retry_after_s=parse_retry_after(headers),
            request_id=request_id,
            error=f"HTTP {status} {detail}: {message[:200]}"
            if message
            else f"HTTP {status} {detail}",
            latency_s=latency_s,
        )

    async def send(self, request: ChatRequest) -> Outcome:
        """Send one request and classify whatever happens (never raises on a bad reply).

        Args:
            request: the provider-neutral request.

        Returns:
            The classified outcome of this one attempt.

        Raises:
            RuntimeError: the client was closed.
        """
        loop = asyncio.get_running_loop()
        headers: Mapping[str, str]
        if self._lean:
            body = self._encode(request)
            start = loop.time()
            try:
                pool, target = self._ensure_pool()
                status, headers, raw = await pool.request(target, body)
            except LEAN_TRANSPORT_ERRORS as exc:
                kind = classify_exception(exc)
                return Outcome(
                    kind=kind, error=describe_exception(exc), latency_s=loop.time() - start
                )
            return self._decode(status, headers, raw, loop.time() - start)
        session = self._ensure_session()
        body = self._encode(request)
        start = loop.time()
        try:
            async with session.post(self._url, data=body, headers=self._headers) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except self._aiohttp_errors as exc:
            kind = classify_exception(exc)
            return Outcome(kind=kind, error=describe_exception(exc), latency_s=loop.time() - start)
        return self._decode(status, headers, raw, loop.time() - start)

    async def aclose(self) -> None:
        """Close the session if this client created it; idempotent."""
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.aclose()
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> WireClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
