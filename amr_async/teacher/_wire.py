"""The HTTP round trip both clients share: session lifecycle, timing, transport errors."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from amr_async.teacher.base import ClientConfig, Secret, open_session
from amr_async.teacher.classify import TRANSPORT_ERRORS, classify_exception, describe_exception
from amr_async.teacher.types import ChatRequest, Outcome, Provider


class WireClient:
    """Posts one JSON body per request and turns the reply into an `Outcome`.

    Subclasses provide `_encode` (request to body bytes) and `_decode` (status, headers,
    body to outcome). Safe to share between tasks of one event loop; not between loops.
    """

    provider: Provider
    base_url: str

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
        self._url = self.base_url + path
        self._api_key = api_key
        self._config = config or ClientConfig()
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._headers: Mapping[str, str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        session = self._session
        if session is None:
            # Created on first use so that it binds to the loop that uses it.
            session = self._session = open_session(self._config)
        return session

    def _encode(self, request: ChatRequest) -> bytes:
        raise NotImplementedError

    def _decode(
        self, status: int, headers: Mapping[str, str], raw: bytes, latency_s: float
    ) -> Outcome:
        raise NotImplementedError

    async def send(self, request: ChatRequest) -> Outcome:
        """Send one request and classify whatever happens (never raises on a bad reply).

        Args:
            request: the provider-neutral request.

        Returns:
            The classified outcome of this one attempt.

        Raises:
            RuntimeError: the client was closed.
        """
        session = self._ensure_session()
        body = self._encode(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with session.post(self._url, data=body, headers=self._headers) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except TRANSPORT_ERRORS as exc:
            kind = classify_exception(exc)
            return Outcome(kind=kind, error=describe_exception(exc), latency_s=loop.time() - start)
        return self._decode(status, headers, raw, loop.time() - start)

    async def aclose(self) -> None:
        """Close the session if this client created it; idempotent."""
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> WireClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
