"""OpenAI Chat Completions as the emulator speaks it: bodies, errors, `x-ratelimit-*` headers."""

from __future__ import annotations

import math
from typing import Any

from amr_async.emulator._http import Request, Response
from amr_async.emulator.limits import Refusal
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

OPENAI_ROUTE = "/v1/chat/completions"
DEFAULT_MAX_TOKENS = 4096  # what the emulator assumes when the body names no limit


_ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))


def go_duration(seconds: float) -> str:
    """Format like OpenAI's reset headers: `9ms`, `1.5s`, `6m0s`."""
    if seconds < 1.0:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    rest_s = f"{round(rest, 3):g}s"
    return f"{int(minutes)}m{rest_s}" if minutes else rest_s


class OpenAIProtocol(Protocol):
    """The `/v1/chat/completions` route."""

    route = OPENAI_ROUTE
    request_id_header = "x-request-id"

    def check_auth(self, request: Request, key: str | None) -> Response | None:
        if key is None:
            return None
        given = request.headers.get("authorization", "")
        if given == f"Bearer {key}":
            return None
        message = (
            "You didn't provide an API key."
            if not given
            else "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return json_response(
            401, self._error(message, "invalid_request_error", None, "invalid_api_key")
        )

    @staticmethod
    def _error(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def bad_json(self) -> Response:
        return json_response(
            400,
            self._error(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
                "invalid_request_error",
                None,
                None,
            ),
        )

    def bad_request(self, exc: BadRequest) -> Response:
        return json_response(
            400, self._error(exc.message, "invalid_request_error", exc.param, exc.code)
        )

    def context_error(self, tokens: int, window: int) -> BadRequest:
        return BadRequest(
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {tokens} tokens. Please reduce the length of the messages.",
            "messages",
            "context_length_exceeded",
        )

    def parse(self, data: Any) -> Parsed:
        if not isinstance(data, dict):
            raise BadRequest("Invalid request body: expected a JSON object.")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        messages = data.get("messages")
        if messages is None:
            raise BadRequest(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        if not isinstance(messages, list):
            raise BadRequest("Invalid type for 'messages': expected an array.", "messages")
        if not messages:
            raise BadRequest(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                "messages",
                "empty_array",
            )
        texts: list[str] = []
        question = ""
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                where = f"messages[{i}]"
                raise BadRequest(f"Invalid type for '{where}': expected an object.", where)
            role = msg.get("role")
            if role not in _ROLES:
                raise BadRequest(
                    f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                    "'user', 'tool', and 'developer'.",
                    f"messages[{i}].role",
                    "invalid_value",
                )
            content = msg.get("content")
            # A plain string needs no checking (and no place name built for an error).
            text = (
                content if type(content) is str else content_text(content, f"messages[{i}].content")
            )
            texts.append(text)
            if role == "user":
                question = text
        token_value = data.get("max_completion_tokens", data.get("max_tokens"))
        name = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
        max_tokens = max_tokens_field(token_value, name, DEFAULT_MAX_TOKENS)
        if data.get("stream"):
            raise BadRequest("stream=true is not supported by the amr-async emulator", "stream")
        prompt_text = "\n".join(texts)
        input_tokens = estimate_tokens(prompt_text) + 4 * len(messages)
        return Parsed(
            model,
            prompt_text,
            question,
            max_tokens,
            stop_list(data.get("stop"), "stop"),
            input_tokens,
        )

    def charges(self, parsed: Parsed) -> dict[str, int]:
        # OpenAI charges the prompt estimate plus max_tokens on admission.
        return {"requests": 1, "tokens": parsed.input_tokens + parsed.max_tokens}

    def rate_limited(self, refusal: Refusal, parsed: Parsed, headers: dict[str, str]) -> Response:
        wait = max(refusal.retry_after_s, 0.001)
        if refusal.limit_name == "concurrency":
            message = f"Too many concurrent requests: limit {refusal.limit}. Please retry shortly."
            type_ = "requests"
        elif refusal.too_large:
            type_ = "tokens"
            message = (
                f"Request too large for {parsed.model} in organization org-emulator on tokens "
                f"per min (TPM): Limit {refusal.limit}, Requested {refusal.requested}. The input "
                "or output tokens must be reduced in order to run successfully."
            )
        else:
            unit = (
                "requests per min (RPM)"
                if refusal.limit_name == "requests"
                else "tokens per min (TPM)"
            )
            type_ = "requests" if refusal.limit_name == "requests" else "tokens"
            message = (
                f"Rate limit reached for {parsed.model} in organization org-emulator on {unit}: "
                f"Limit {refusal.limit}. Please try again in {go_duration(wait)}. "
                "Visit https://platform.openai.com/account/rate-limits to learn more."
            )
        headers["retry-after"] = str(math.ceil(wait))
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        return json_response(429, self._error(message, type_, None, "rate_limit_exceeded"), headers)

    def fault_error(self, fault: str, headers: dict[str, str]) -> Response:
        if fault == "server_error":
            return json_response(
                500,
                self._error(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                    None,
                ),
                headers,
            )
        if fault == "overloaded":
            return json_response(
                503,
                self._error(
                    "The engine is currently overloaded, please try again later.",
                    "server_error",
                    None,
                    None,
                ),
                headers,
            )
        if fault == "rate_limit":
            headers["retry-after"] = "1"
            headers["retry-after-ms"] = "1000"
            return json_response(
                429,
                self._error(
                    "Rate limit reached for requests. Please try again in 1s.",
                    "requests",
                    None,
                    "rate_limit_exceeded",
                ),
                headers,
            )
        return json_response(
            429,
            self._error(
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                None,
                "insufficient_quota",
            ),
            headers,
        )

    def success(
        self, parsed: Parsed, text: str, finish: str, out: int, rid: str, wall: float
    ) -> dict[str, Any]:
        return {
            "id": "chatcmpl-" + rid.removeprefix("req_"),
            "object": "chat.completion",
            "created": int(wall),
            "model": parsed.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop" if finish == "stop_sequence" else finish,
                }
            ],
            "usage": {
                "prompt_tokens": parsed.input_tokens,
                "completion_tokens": out,
                "total_tokens": parsed.input_tokens + out,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "system_fingerprint": "fp_amr_async_emulator",
        }

    def limit_headers(self, wall: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name in ("requests", "tokens"):
            state = self.limits.state(name)
            if state is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(state.limit)
                headers[f"x-ratelimit-remaining-{name}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{name}"] = go_duration(state.reset_s)
        return headers
