"""OpenAI Chat Completions client, also for OpenAI-compatible servers.

`POST {base_url}/chat/completions`, bearer auth. Works unchanged against vLLM, SGLang,
llama.cpp server and Ollama, whose base_url also ends in `/v1`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import orjson

from amr_async.teacher._wire import Answer, ErrorBody, WireClient
from amr_async.teacher.base import ClientConfig, Secret, key_from
from amr_async.teacher.headers import parse_openai_rate_limits
from amr_async.teacher.types import ChatRequest, Provider, RateLimitInfo, Usage

if TYPE_CHECKING:
    import aiohttp

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIClient(WireClient):
    """Chat Completions over the lean HTTP/1.1 transport (or aiohttp) + orjson.

    Args:
        base_url: up to and including `/v1`.
        api_key: the key; defaults to `$OPENAI_API_KEY` (empty is fine for local servers,
            which then get no Authorization header).
        session: a shared session (see `open_session`); the client makes its own if None.
        config: pool size and timeouts for an own session.
        token_param: the body field carrying `max_tokens`. OpenAI's reasoning models need
            `max_completion_tokens`; most compatible servers accept `max_tokens`.

    Safe to share between tasks of one event loop.
    """

    provider = Provider.OPENAI
    request_id_header = "x-request-id"
    answer_name = "chat completion"

    def __init__(
        self,
        *,
        base_url: str = OPENAI_BASE_URL,
        api_key: str | Secret | None = None,
        session: aiohttp.ClientSession | None = None,
        config: ClientConfig | None = None,
        token_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        super().__init__(
            base_url=base_url,
            path="/chat/completions",
            api_key=key_from(api_key, "OPENAI_API_KEY"),
            session=session,
            config=config,
        )
        self._token_param = token_param
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = "Bearer " + self._api_key.reveal()
        self._headers = headers

    def _encode(self, request: ChatRequest) -> bytes:
        messages: list[dict[str, str]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "temperature": request.temperature,
            self._token_param: request.max_tokens,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        return orjson.dumps(body)

    def _rate_limits(self, headers: Mapping[str, str]) -> RateLimitInfo:
        return parse_openai_rate_limits(headers)

    def _answer(self, data: Any) -> Answer:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("message.content is not a string")
        finish_reason = choice.get("finish_reason")
        usage_raw = data.get("usage") or {}
        details = usage_raw.get("prompt_tokens_details") or {}
        return Answer(
            text=content,
            finish_reason=finish_reason,
            truncated=finish_reason == "length",
            usage=Usage(
                input_tokens=int(usage_raw.get("prompt_tokens") or 0),
                output_tokens=int(usage_raw.get("completion_tokens") or 0),
                cached_input_tokens=int(details.get("cached_tokens") or 0),
            ),
        )

    def _error_body(self, data: Any) -> ErrorBody:
        # OpenAI and llama.cpp: {"error": {...}}; Ollama: {"error": "text"};
        # vLLM and SGLang: {"object": "error", "message": ..., "type": ..., "code": ...}.
        err = data.get("error", data) if isinstance(data, dict) else None
        if isinstance(err, dict):
            return ErrorBody(
                type=str(err.get("type") or ""),
                code=str(err.get("code") or ""),
                message=str(err.get("message") or ""),
            )
        if isinstance(err, str):
            return ErrorBody(message=err)
        return ErrorBody()
