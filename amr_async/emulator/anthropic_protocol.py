"""Anthropic Messages as the emulator speaks it: bodies, errors, `anthropic-ratelimit-*` headers."""

from __future__ import annotations

import math
import time
from typing import Any

from amr_async.emulator._http import Request, Response
from amr_async.emulator.limits import Refusal, WindowState
from amr_async.emulator.protocol import (
    BadRequest,
    Parsed,
    Protocol,
    content_text,
    estimate_tokens,
    json_response,
    max_tokens_field,
    stop_list,
)

ANTHROPIC_ROUTE = "/v1/messages"


def rfc3339(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(wall)))


class AnthropicProtocol(Protocol):
    """The `/v1/messages` route."""

    route = ANTHROPIC_ROUTE
    request_id_header = "request-id"

    @staticmethod
    def _error(type_: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": type_, "message": message}}

    def check_auth(self, request: Request, key: str | None) -> Response | None:
        if key is not None:
            given = request.headers.get("x-api-key")
            if given is None:
                return json_response(
                    401, self._error("authentication_error", "x-api-key header is required")
                )
            if given != key:
                return json_response(401, self._error("authentication_error", "invalid x-api-key"))
        if "anthropic-version" not in request.headers:
            return json_response(
                400, self._error("invalid_request_error", "anthropic-version: header is required")
            )
        return None

    def bad_json(self) -> Response:
        return json_response(
            400,
            self._error(
                "invalid_request_error",
                "There was an error parsing the body of your request: it is not valid JSON.",
            ),
        )

    def bad_request(self, exc: BadRequest) -> Response:
        return json_response(400, self._error("invalid_request_error", exc.message))

    def context_error(self, tokens: int, window: int) -> BadRequest:
        return BadRequest(f"prompt is too long: {tokens} tokens > {window} maximum", "messages")

    def parse(self, data: Any) -> Parsed:
        if not isinstance(data, dict):
            raise BadRequest("Input should be a valid dictionary")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required", "model")
        max_tokens = max_tokens_field(data.get("max_tokens"), "max_tokens", None)
        messages = data.get("messages")
        if messages is None:
            raise BadRequest("messages: Field required", "messages")
        if not isinstance(messages, list):
            raise BadRequest("messages: Input should be a valid list", "messages")
        if not messages:
            raise BadRequest("messages: at least one message is required", "messages")
        texts = [content_text(data.get("system"), "system")]
        question = ""
        for i, msg in enumerate(messages):
            where = f"messages.{i}"
            if not isinstance(msg, dict):
                raise BadRequest(f"{where}: Input should be a valid dictionary", where)
            role = msg.get("role")
            if role not in ("user", "assistant"):
                raise BadRequest(
                    f"{where}.role: Input should be 'user' or 'assistant'", f"{where}.role"
                )
            text = content_text(msg.get("content"), f"{where}.content")
            texts.append(text)
            if role == "user":
                question = text
        if data.get("stream"):
            raise BadRequest("stream: streaming is not supported by the amr-async emulator")
        prompt_text = "\n".join(texts)
        input_tokens = estimate_tokens(prompt_text) + 4 * len(messages)
        stop = stop_list(data.get("stop_sequences"), "stop_sequences")
        return Parsed(model, prompt_text, question, max_tokens, stop, input_tokens)

    def charges(self, parsed: Parsed) -> dict[str, int]:
        # Output is reserved at max_tokens on admission and settled when the answer is done.
        return {
            "requests": 1,
            "input_tokens": parsed.input_tokens,
            "output_tokens": parsed.max_tokens,
        }

    def rate_limited(self, refusal: Refusal, parsed: Parsed, headers: dict[str, str]) -> Response:
        wait = max(refusal.retry_after_s, 0.001)
        if refusal.limit_name == "concurrency":
            message = (
                "Number of concurrent connections has exceeded your rate limit "
                f"({refusal.limit}). Please try again later."
            )
        else:
            what = {
                "requests": "requests per minute",
                "input_tokens": "input tokens per minute",
                "output_tokens": "output tokens per minute",
            }[refusal.limit_name]
            message = (
                "This request would exceed the rate limit for your organization of "
                f"{refusal.limit} {what}. Please reduce the prompt length or the maximum "
                "tokens requested, or try again later."
            )
            if refusal.too_large:
                message = (
                    f"Request too large: it needs {refusal.requested} {what} but the rate "
                    f"limit for your organization is {refusal.limit} {what}. Please reduce the "
                    "prompt length or the maximum tokens requested."
                )
        headers["retry-after"] = str(math.ceil(wait))
        return json_response(429, self._error("rate_limit_error", message), headers)

    def fault_error(self, fault: str, headers: dict[str, str]) -> Response:
        if fault == "server_error":
            return json_response(500, self._error("api_error", "Internal server error"), headers)
        if fault == "overloaded":
            return json_response(529, self._error("overloaded_error", "Overloaded"), headers)
        if fault == "rate_limit":
            headers["retry-after"] = "1"
            return json_response(
                429,
                self._error("rate_limit_error", "Number of requests has exceeded your rate limit."),
                headers,
            )
        return json_response(
            400,
            self._error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to "
                "Plans & Billing to upgrade or purchase credits.",
            ),
            headers,
        )

    def success(
        self, parsed: Parsed, text: str, finish: str, out: int, rid: str, wall: float
    ) -> dict[str, Any]:
        stop_reason = {"stop": "end_turn", "length": "max_tokens"}.get(finish, finish)
        stop_sequence = None
        if finish == "stop_sequence":
            stop_sequence = next((s for s in parsed.stop if s), None)
        return {
            "id": "msg_" + rid.removeprefix("req_"),
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": parsed.input_tokens,
                "output_tokens": out,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def limit_headers(self, wall: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        p = "anthropic-ratelimit-"
        states: dict[str, WindowState] = {}
        for name, header in (
            ("requests", "requests"),
            ("input_tokens", "input-tokens"),
            ("output_tokens", "output-tokens"),
        ):
            state = self.limits.state(name)
            if state is None:
                continue
            states[name] = state
            headers[f"{p}{header}-limit"] = str(state.limit)
            headers[f"{p}{header}-remaining"] = str(state.remaining)
            headers[f"{p}{header}-reset"] = rfc3339(wall + state.reset_s)
        token_states = [s for n, s in states.items() if n != "requests"]
        if token_states:
            # The combined token headers report the most restrictive limit in effect.
            tight = min(token_states, key=lambda s: s.remaining)
            headers[f"{p}tokens-limit"] = str(tight.limit)
            headers[f"{p}tokens-remaining"] = str(tight.remaining)
            headers[f"{p}tokens-reset"] = rfc3339(wall + tight.reset_s)
        return headers
