"""Request and outcome types shared by every teacher client and the scheduler.

Cheap value objects (slots dataclasses) so that thousands in flight cost little. A client
never raises on a bad response: it returns an `Outcome` whose `kind` is one of the closed
set in `OutcomeKind`, and the scheduler decides from `kind` alone whether to retry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Provider(enum.StrEnum):
    """Wire protocol a teacher speaks."""

    OPENAI = "openai"  # Chat Completions; also vLLM, SGLang, llama.cpp server, Ollama
    ANTHROPIC = "anthropic"  # Messages


class OutcomeKind(enum.StrEnum):
    """The closed set every call ends in."""

    OK = "ok"
    TRUNCATED = "truncated"  # finish_reason=length / stop_reason=max_tokens: paid, but cut
    RATE_LIMITED = "rate_limited"  # 429 rate-limit
    OVERLOADED = "overloaded"  # 529, 503
    SERVER_ERROR = "server_error"  # other 5xx
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    QUOTA_EXHAUSTED = "quota_exhausted"  # 429 insufficient_quota, billing: retrying cannot help
    AUTH = "auth"  # 401, 403
    INVALID_REQUEST = "invalid_request"  # 400, 404, 413, 422, context length
    MALFORMED_RESPONSE = "malformed_response"  # bad JSON, missing fields, truncated body

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE

    @property
    def is_success(self) -> bool:
        """A completed answer (possibly truncated) that was paid for."""
        return self in (OutcomeKind.OK, OutcomeKind.TRUNCATED)


_RETRYABLE = frozenset(
    {
        OutcomeKind.RATE_LIMITED,
        OutcomeKind.OVERLOADED,
        OutcomeKind.SERVER_ERROR,
        OutcomeKind.TIMEOUT,
        OutcomeKind.CONNECTION,
        OutcomeKind.MALFORMED_RESPONSE,
    }
)


@dataclass(slots=True, frozen=True)
class Message:
    role: str  # "user" | "assistant" (system prompts go in ChatRequest.system)
    content: str


@dataclass(slots=True, frozen=True)
class ChatRequest:
    """One teacher call, provider-neutral. Clients map it onto their wire format."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    system: str | None = None
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Distinguishes deliberate repeats of one prompt (several samples) in the journal key.
    sample_index: int = 0


@dataclass(slots=True, frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # OpenAI cached prompt tokens / Anthropic cache reads
    cache_creation_tokens: int = 0  # Anthropic cache writes


@dataclass(slots=True, frozen=True)
class RateLimitInfo:
    """What the server said about its limits on one response; None where it said nothing.

    Reset values are seconds from the moment the response was received. For Anthropic,
    `*_tokens` are the combined token limit; input/output ones are separate fields.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    reset_input_tokens_s: float | None = None
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens_s: float | None = None


@dataclass(slots=True, frozen=True)
class Outcome:
    """The final word on one attempt of one request."""

    kind: OutcomeKind
    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    rate_limits: RateLimitInfo = field(default_factory=RateLimitInfo)
    retry_after_s: float | None = None  # the server's hint (retry-after / retry-after-ms)
    status: int | None = None  # HTTP status, None when no response arrived
    request_id: str | None = None
    error: str | None = None  # short, secret-free description for logs and journals
    latency_s: float = 0.0
