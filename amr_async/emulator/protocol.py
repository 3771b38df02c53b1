"""What both protocol modules share: the parsed request, 400 errors, the route interface.

Token counts are an estimate (see `estimate_tokens`): consistent within the emulator, not
equal to any real tokenizer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amr_async.emulator._http import Request, Response
from amr_async.emulator._http import json_response as json_response
from amr_async.emulator.limits import Refusal, RouteLimits

CHARS_PER_TOKEN = 4  # token estimate: ceil(chars / 4), plus 4 per message


def estimate_tokens(text: str) -> int:
    """The emulator's token estimate: ceil(len(text) / 4). Not a real tokenizer."""
    return -(-len(text) // CHARS_PER_TOKEN)


class BadRequest(Exception):
    """A request the real API would refuse with 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(slots=True)
class Parsed:
    """A validated chat request, protocol-neutral."""

    model: str
    prompt_text: str  # everything, for the scripted teacher to read markers from
    question: str  # the last user message
    max_tokens: int
    stop: list[str]
    input_tokens: int


def content_text(content: Any, where: str) -> str:
    """The text of a message content: a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("text", ""), str):
                raise BadRequest(f"{where}[{j}]: expected a content block object", where)
            if block.get("type") == "text":
                parts.append(block["text"])
        return "\n".join(parts)
    if content is None:
        return ""
    raise BadRequest(f"{where}: expected a string or a list of content blocks", where)


class Protocol:
    """One route's wire shapes. Subclasses know their protocol's bodies and headers only;
    the flow (counting, limits, faults, latency) lives in the server.
    """

    route: str
    request_id_header: str

    def __init__(self, limits: RouteLimits) -> None:
        self.limits = limits

    def check_auth(self, request: Request, key: str | None) -> Response | None:
        """The 401/400 response for missing or wrong credentials, None when fine."""
        raise NotImplementedError

    def bad_json(self) -> Response:
        """The 400 for a body that is not JSON."""
        raise NotImplementedError

    def parse(self, data: Any) -> Parsed:
        """Validate a decoded body; raises `BadRequest` as the real API would."""
        raise NotImplementedError

    def context_error(self, tokens: int, window: int) -> BadRequest:
        """The error for a prompt longer than the context window."""
        raise NotImplementedError

    def bad_request(self, exc: BadRequest) -> Response:
        """The 400 response for `exc`."""
        raise NotImplementedError

    def charges(self, parsed: Parsed) -> dict[str, int]:
        """What admitting this request charges to each limit window."""
        raise NotImplementedError

    def rate_limited(self, refusal: Refusal, parsed: Parsed, headers: dict[str, str]) -> Response:
        """The 429 for a refused request, with retry-after."""
        raise NotImplementedError

    def fault_error(self, fault: str, headers: dict[str, str]) -> Response:
        """The error response of an injected fault (server_error, overloaded, ...)."""
        raise NotImplementedError

    def success(
        self, parsed: Parsed, text: str, finish: str, out: int, rid: str, wall: float
    ) -> dict[str, Any]:
        """The success body; `finish` is "stop", "length" or "stop_sequence"."""
        raise NotImplementedError

    def limit_headers(self, wall: float) -> dict[str, str]:
        """The rate-limit headers of the limits configured, as of now."""
        raise NotImplementedError


def max_tokens_field(value: Any, name: str, default: int | None) -> int:
    if value is None:
        if default is None:
            raise BadRequest(f"{name}: Field required", name)
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"Invalid type for '{name}': expected an integer", name, "invalid_type")
    if value < 1:
        raise BadRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
            f"but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    return value


def stop_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise BadRequest(f"Invalid type for '{name}': expected a string or an array of strings", name)
