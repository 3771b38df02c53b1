"""Anthropic Messages client.

`POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version` headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from amr_async.teacher._wire import Answer, ErrorBody, WireClient
from amr_async.teacher.base import ClientConfig, Secret, key_from
from amr_async.teacher.headers import parse_anthropic_rate_limits
from amr_async.teacher.types import ChatRequest, Provider, RateLimitInfo, Usage

if TYPE_CHECKING:
    import aiohttp

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicClient(WireClient):
    """Messages API over the lean HTTP/1.1 transport (or aiohttp) + orjson.

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
    request_id_header = "request-id"
    answer_name = "message"

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

    def _rate_limits(self, headers: Mapping[str, str]) -> RateLimitInfo:
        return parse_anthropic_rate_limits(headers)

    def _answer(self, data: Any) -> Answer:
        text = "".join(b["text"] for b in data["content"] if b.get("type") == "text")
        stop_reason = data["stop_reason"]
        usage_raw = data.get("usage") or {}
        return Answer(
            text=text,
            finish_reason=stop_reason,
            truncated=stop_reason == "max_tokens",
            usage=Usage(
                input_tokens=int(usage_raw.get("input_tokens") or 0),
                output_tokens=int(usage_raw.get("output_tokens") or 0),
                cached_input_tokens=int(usage_raw.get("cache_read_input_tokens") or 0),
                cache_creation_tokens=int(usage_raw.get("cache_creation_input_tokens") or 0),
            ),
        )

    def _error_body(self, data: Any) -> ErrorBody:
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            return ErrorBody(type=str(err.get("type") or ""), message=str(err.get("message") or ""))
        return ErrorBody()
