"""Anthropic Messages client.

`POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version` headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from amr_async.teacher._wire import WireClient
from amr_async.teacher.base import ClientConfig, Secret, key_from
from amr_async.teacher.classify import classify_status, redact
from amr_async.teacher.headers import parse_anthropic_rate_limits, parse_retry_after
from amr_async.teacher.types import (
    ChatRequest,
    Outcome,
    OutcomeKind,
    Provider,
    RateLimitInfo,
    Usage,
)

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicClient(WireClient):
    """Messages API over aiohttp + orjson.

    Args:
        base_url: the host root, without `/v1`.
        api_key: the key; defaults to `$ANTHROPIC_API_KEY`.
        session: a shared session (see `open_session`); the client makes its own if None.
        config: pool size and timeouts for an own session.
        version: the `anthropic-version` header.

    `ChatRequest.seed` is not part of this protocol and is not sent. Safe to share between
    tasks of one event loop.
    """

    provider = Provider.ANTHROPIC

    def __init__(
        self,
        *,
        base_url: str = ANTHROPIC_BASE_URL,
        api_key: str | Secret | None = None,
        session: aiohttp.ClientSession | None = None,
        config: ClientConfig | None = None,
        version: str = ANTHROPIC_VERSION,
    ) -> None:
        super().__init__(
            base_url=base_url,
            path="/v1/messages",
            api_key=key_from(api_key, "ANTHROPIC_API_KEY"),
            session=session,
            config=config,
        )
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": version,
            "x-api-key": self._api_key.reveal(),
        }

    def _encode(self, request: ChatRequest) -> bytes:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
        }
        if request.system is not None:
            body["system"] = request.system
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        return orjson.dumps(body)

    def _decode(
        self, status: int, headers: Mapping[str, str], raw: bytes, latency_s: float
    ) -> Outcome:
        rate_limits = parse_anthropic_rate_limits(headers)
        request_id = headers.get("request-id")
        if status >= 400:
            return self._error_outcome(status, headers, raw, latency_s, rate_limits, request_id)
        try:
            data = orjson.loads(raw)
            blocks = data["content"]
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
            stop_reason = data["stop_reason"]
            usage_raw = data.get("usage") or {}
            usage = Usage(
                input_tokens=int(usage_raw.get("input_tokens") or 0),
                output_tokens=int(usage_raw.get("output_tokens") or 0),
                cached_input_tokens=int(usage_raw.get("cache_read_input_tokens") or 0),
                cache_creation_tokens=int(usage_raw.get("cache_creation_input_tokens") or 0),
            )
        except (
            orjson.JSONDecodeError,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            AttributeError,
        ) as exc:
            return Outcome(
                kind=OutcomeKind.MALFORMED_RESPONSE,
                status=status,
                rate_limits=rate_limits,
                request_id=request_id,
                error=f"unreadable message: {type(exc).__name__}",
                latency_s=latency_s,
            )
        kind = OutcomeKind.TRUNCATED if stop_reason == "max_tokens" else OutcomeKind.OK
        return Outcome(
            kind=kind,
            text=text,
            finish_reason=stop_reason,
            usage=usage,
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
        error_type = message = ""
        try:
            err = orjson.loads(raw)["error"]
            if isinstance(err, dict):
                error_type = str(err.get("type") or "")
                message = str(err.get("message") or "")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            pass
        kind = classify_status(status, error_type, "", message)
        message = redact(message, self._api_key.reveal())
        detail = error_type or "no error body"
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
